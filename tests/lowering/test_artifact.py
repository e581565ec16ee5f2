"""lowering/artifact.py: a source graph's set is read and verified once per process while its files stay as they
were (a `hrmc lower` checks its source where it starts and where it lowers: 110 MB read and hashed four times for
sudoku), and again as soon as one changes."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx

from hrmc.lowering import artifact
from hrmc.lowering.artifact import source_parts


def test_a_source_is_read_once_while_its_files_stay_and_again_when_one_changes(tiny_export: Path, tmp_path: Path,
                                                                                monkeypatch) -> None:
    for name in ("tiny.onnx", "tiny.step.onnx"):
        shutil.copy(tiny_export.parent / name, tmp_path / name)
    source, load = tmp_path / "tiny.onnx", artifact.load_proto
    reads: list[str] = []
    monkeypatch.setattr(artifact, "load_proto", lambda path: reads.append(Path(path).name) or load(path))
    first = source_parts(source, "act", fallback={})
    assert first == ({"act": source, "step": tmp_path / "tiny.step.onnx"}, False) and reads
    read_first = len(reads)
    assert source_parts(source, "act", fallback={}) == first and len(reads) == read_first
    edited = load(source)
    edited.doc_string = "rewritten by a graph tool, its record kept"
    onnx.save(edited, str(source))
    assert source_parts(source, "act", fallback={}) == (first[0], True) and len(reads) > read_first
