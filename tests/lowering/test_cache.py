"""The export cache (lowering/cache.py): one trace per model, a damaged entry made again, the cache off."""

from __future__ import annotations

import concurrent.futures
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from hrmc import hrm_ref
from hrmc.lowering import cache
from hrmc.lowering import step_path_for
from hrmc.lowering.artifact import bound_parts
from hrmc.lowering.artifact import content_sha256, load_proto
from hrmc.lowering.export import read_record
from hrmc.names import PARTS, meta_key
from tests.conftest import write_upstream_checkpoint
from tests.helpers import hrmc


@pytest.fixture
def exports(monkeypatch, tmp_path: Path, tiny_export: Path) -> list[Path]:
    """A fresh cache in tmp_path/cache, and every export it asks for, by its folder. Each is tiny's q-halt pair,
    copied (a pair renamed together is the same pair): what is tested is when the cache traces, not the tracing."""
    monkeypatch.setenv("HRMC_CACHE", str(tmp_path / "cache"))
    traced: list[Path] = []

    def copying(model, out, *args, **kwargs):
        out = Path(out)
        traced.append(out.parent)
        for role, part in bound_parts(tiny_export).items():
            shutil.copyfile(part, out if role == "act" else step_path_for(out))
        return SimpleNamespace(act_path=out)
    monkeypatch.setattr(cache, "trace_onnx", copying)
    return traced


def test_a_model_is_traced_once_and_a_damaged_entry_is_made_again(tiny, exports: list[Path], tmp_path: Path) -> None:
    batch = hrm_ref.random_batch(tiny.config, 2, seed=0)
    first = cache.cached_export(tiny, "q-halt", 8, batch, tmp_path)
    assert cache.cached_export(tiny, "q-halt", 8, batch, tmp_path) == first and len(exports) == 1
    assert cache.cached_export(tiny, "max-steps", 8, batch, tmp_path) != first and len(exports) == 2
    step = bound_parts(first)["step"]
    step.write_bytes(step.read_bytes()[:1000])  # a damaged entry: never used, made again
    again = cache.cached_export(tiny, "q-halt", 8, batch, tmp_path)
    assert again == first and len(exports) == 3 and bound_parts(again)["step"].stat().st_size > 1000
    assert not [p for p in first.parent.parent.iterdir() if p.is_dir() and p.name.startswith(".")]  # no staging


def test_runs_asking_for_one_entry_at_once_make_it_once(monkeypatch, tmp_path: Path) -> None:
    """Two test workers, or a gate and a bench, asking for the same export together: one traces, the other
    waits on the entry's lock and reads what it made."""
    monkeypatch.setenv("HRMC_CACHE", str(tmp_path / "cache"))
    made: list[Path] = []

    def make(folder: Path) -> Path:
        made.append(folder)
        time.sleep(0.5)  # a trace: long enough for the other thread to ask meanwhile
        (folder / "made.txt").write_text("once")
        return folder / "made.txt"

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        paths = list(pool.map(lambda _: cache.cached("things", {"a": 1}, (), make, Path.read_text, tmp_path), range(2)))
    assert len(made) == 1 and paths[0] == paths[1] and paths[0].read_text() == "once"


def test_the_cache_can_be_turned_off(tiny, exports: list[Path], monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HRMC_CACHE", cache.OFF)
    batch = hrm_ref.random_batch(tiny.config, 2, seed=0)
    assert cache.cached_export(tiny, "q-halt", 8, batch, tmp_path).parent == tmp_path
    assert cache.cached_export(tiny, "q-halt", 8, batch, tmp_path).parent == tmp_path and len(exports) == 2


def test_a_second_gate_of_the_same_model_exports_nothing(capsys, exports: list[Path]) -> None:
    for _ in range(2):
        code, out, _ = hrmc(capsys, "parity", "torch", "static", "--policy", "q-halt", "--batch", "2")
        assert code == 0 and out.rstrip().endswith("PASS")
    assert len(exports) == 1


def test_hrmc_export_traces_a_model_once_and_each_copy_records_its_own_checkpoint(capsys, tiny, exports: list[Path],
                                                                                  tmp_path: Path) -> None:
    checkpoint = write_upstream_checkpoint(tiny, tmp_path / "run")
    outs = [tmp_path / "a" / "m.onnx", tmp_path / "b" / "c" / "model.onnx"]
    for out in outs:
        out.parent.mkdir(parents=True)
        code, printed, err = hrmc(capsys, "export", "--checkpoint", str(checkpoint), "--seq-len", "16",
                                  "-o", str(out))
        assert code == 0, err
    assert len(exports) == 1 and "from the export cache" in printed
    assert [read_record(out).checkpoint.path for out in outs] == ["../run/step_52080", "../../run/step_52080"]
    traced = bound_parts(next((tmp_path / "cache").rglob("model.onnx")))
    for out in outs:
        for role, part in bound_parts(out).items():  # verified, and the traced graphs but for the two records
            mine, cached = load_proto(part), load_proto(traced[role])
            for proto in (mine, cached):
                kept = [p for p in proto.metadata_props if p.key not in (PARTS, meta_key("checkpoint"))]
                del proto.metadata_props[:]
                proto.metadata_props.extend(kept)
            assert content_sha256(mine) == content_sha256(cached)
