"""Exports rewritten by graph tools (onnxsim): Loop labels recovered, the step graph still bound."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest

from hrmc.lowering import step_path_for
from tests.helpers import assert_one_line_error, hrmc


def _loop_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    found = []
    for node in graph.node:
        found += [node] if node.op_type == "Loop" else []
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                found += _loop_nodes(attribute.g)
    return found


def rewritten(export: Path, folder: Path, rename: bool) -> Path:
    """What graph tools do to an export: node metadata dropped (onnxsim), nodes renamed (others),
    saved under a new name beside the untouched step graph."""
    folder.mkdir()
    shutil.copy(step_path_for(export), folder / step_path_for(export).name)
    proto = onnx.load(str(export))
    for index, node in enumerate(_loop_nodes(proto.graph)):
        del node.metadata_props[:]
        node.name = f"renamed_loop_{index}" if rename else node.name
    path = folder / f"{export.stem}.sim.onnx"
    onnx.save(proto, str(path))
    return path


@pytest.mark.parametrize("rename", [False, True], ids=["labels-dropped", "loops-renamed"])
def test_a_rewritten_export_lowers_and_passes_parity(capsys, tiny_export: Path, tmp_path: Path, rename: bool) -> None:
    source = rewritten(tiny_export, tmp_path / "sim", rename)
    code, _, err = hrmc(capsys, "lower", "--policy", "q-halt", "--onnx-model", str(source), "-o", str(tmp_path / "s.onnx"))
    assert code == 0 and "differs from the graph hrmc export wrote" in err, err
    code, out, _ = hrmc(capsys, "parity", "torch", "static", "--policy", "q-halt", "--onnx-model", str(source))
    assert code == 0 and out.rstrip().endswith("PASS"), out


def test_onnxsim_output_lowers_and_passes_parity(capsys, tiny_export: Path, tmp_path: Path) -> None:
    onnxsim = pytest.importorskip("onnxsim")
    (tmp_path / "sim").mkdir()
    shutil.copy(step_path_for(tiny_export), tmp_path / "sim" / step_path_for(tiny_export).name)
    simplified, ok = onnxsim.simplify(onnx.load(str(tiny_export)))
    assert ok
    source = tmp_path / "sim" / "tiny.sim.onnx"
    onnx.save(simplified, str(source))
    code, out, _ = hrmc(capsys, "parity", "torch", "static", "--policy", "q-halt", "--onnx-model", str(source))
    assert code == 0 and out.rstrip().endswith("PASS"), out


def test_unlabelled_unlisted_loops_and_foreign_steps_are_refused(capsys, tiny_export: Path, tmp_path: Path) -> None:
    source = rewritten(tiny_export, tmp_path / "sim", rename=True)
    proto = onnx.load(str(source))
    listed = next(p for p in proto.metadata_props if p.key == "hrmc.loops")
    loops = json.loads(listed.value)
    listed.value = json.dumps([entry for entry in loops if entry["depth"] != 1] + 2 * [loops[1]])  # depth 1 ambiguous
    onnx.save(proto, str(source))
    code, _, err = hrmc(capsys, "lower", "--policy", "q-halt", "--onnx-model", str(source), "-o", str(tmp_path / "x.onnx"))
    assert_one_line_error(code, err, "renamed_loop_1", "has no hrmc label")
    step = tmp_path / "sim" / step_path_for(tiny_export).name
    step.write_bytes(step.read_bytes()[:-100])  # the step graph is bound as strictly as ever
    code, _, err = hrmc(capsys, "lower", "--policy", "q-halt", "--onnx-model", str(source), "-o", str(tmp_path / "x.onnx"))
    assert_one_line_error(code, err, str(tmp_path / "sim" / "tiny.sim.step.onnx"), "no *.step.onnx beside it holds")
    assert not (tmp_path / "x.onnx").exists()
