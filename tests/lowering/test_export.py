"""The structured export: nested Loops with hrmc's labels, weights once, dynamic batch, clean errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from hrmc import hrm_ref
from hrmc.hrm_ref import HRM
from hrmc.errors import InputError
from hrmc.lowering import export_onnx, read_record, step_path_for
from hrmc.lowering.export import weights_sha256


def loops(graph: onnx.GraphProto, depth: int = 0) -> list[tuple[int, str, str]]:
    found = []
    for node in graph.node:
        assert node.op_type != "If"
        labels = {p.key: p.value for p in node.metadata_props}
        if node.op_type == "Loop":
            found.append((depth, labels["hrmc.loop"], labels["hrmc.trip_count"]))
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                found += loops(attribute.g, depth + (node.op_type == "Loop"))
    return found


def test_act_and_cycles_are_nested_loops(tiny_export: Path) -> None:
    assert loops(onnx.load(tiny_export).graph) == [(0, "act", ""), (1, "h_cycles", "2"), (2, "l_cycles", "2")]
    assert loops(onnx.load(step_path_for(tiny_export)).graph) == [(0, "h_cycles", "2"), (1, "l_cycles", "2")]


def test_the_record_describes_the_export(tiny: HRM, tiny_export: Path) -> None:
    record = read_record(tiny_export)
    assert record.kind == "act" and record.policy == "q-halt" and record.budget == 8 and record.seq_len == 16
    assert record.weights_sha256 == weights_sha256(tiny) and record.config["hidden_size"] == 64
    assert record.outputs == ("logits", "q_halt_logits", "q_continue_logits")
    assert [loop["kind"] for loop in record.loops] == ["act", "h_cycles", "l_cycles"]
    assert read_record(step_path_for(tiny_export)).kind == "step"


def test_files_pass_the_full_onnx_check(tiny_export: Path) -> None:
    for path in (tiny_export, step_path_for(tiny_export)):
        onnx.checker.check_model(onnx.load(path), full_check=True)


def test_weights_are_stored_once(tiny: HRM, tiny_export: Path) -> None:
    parameter_bytes = sum(t.numel() * 4 for t in tiny.state_dict().values())
    proto = onnx.load(tiny_export)
    stored = sum(np.prod(init.dims) * 4 for init in proto.graph.initializer if len(init.dims) >= 1 and np.prod(init.dims) > 64)
    assert parameter_bytes * 0.99 <= stored <= parameter_bytes * 1.01
    metadata = sum(len(p.key) + len(p.value) for p in proto.metadata_props)
    assert tiny_export.stat().st_size <= 1.05 * parameter_bytes + metadata


def test_batch_dimension_is_dynamic(tiny: HRM, tiny_export: Path) -> None:
    batch = hrm_ref.random_batch(tiny.config, 5, seed=4)  # traced with 2 rows
    outputs = ort.InferenceSession(str(tiny_export)).run(None, {k: v.numpy() for k, v in batch.items()})
    expected = hrm_ref.run(tiny, batch, "q-halt")
    steps_run = int(outputs[-1])
    assert steps_run == expected["steps"].shape[0]
    assert np.array_equal(outputs[-2][:steps_run], expected["steps"].numpy())
    assert np.abs(outputs[0][:steps_run] - expected["logits"].numpy()).max() < 1e-4


def test_bad_output_paths_leave_nothing(tiny: HRM, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="output folder does not exist"):
        export_onnx(tiny, tmp_path / "missing" / "m.onnx")
    with pytest.raises(InputError, match="must end in .onnx"):
        export_onnx(tiny, tmp_path / "m.bin")
    with pytest.raises(InputError, match="float32 model"):
        export_onnx(tiny.with_dtype("float64"), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_foreign_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07garbage")
    with pytest.raises(InputError, match="cannot read .*junk.onnx as ONNX"):
        read_record(tmp_path / "junk.onnx")
    plain = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    onnx.save(plain, tmp_path / "plain.onnx")
    with pytest.raises(InputError, match="plain.onnx was not made by hrmc export"):
        read_record(tmp_path / "plain.onnx")
    with pytest.raises(InputError, match="ONNX model not found"):
        read_record(tmp_path / "none.onnx")
