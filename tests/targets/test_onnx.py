"""The ONNX target: the graphs `lower` writes, and its executors (`onnx`, `static`, `chunked`) against the reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest

from hrmc import hrm_ref, lowering
from tests.helpers import hrmc


def test_lower_writes_static_step_and_chunk_graphs(capsys, tiny_export: Path, tmp_path: Path) -> None:
    code, out, _ = hrmc(capsys, "lower", "--target", "onnx", "--onnx-model", str(tiny_export), "--policy", "q-halt",
                        "--chunk", "3", "--dump-after", "unroll-cycles", "-o", str(tmp_path / "s.onnx"))
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.after-unroll-cycles.onnx", "s.chunk3.onnx", "s.onnx",
                                                         "s.step.onnx"]
    static = onnx.load(tmp_path / "s.onnx")
    assert not {n.op_type for n in static.graph.node} & {"Loop", "If"}


def test_the_fused_fp16_pipeline_leaves_no_control_flow_and_fuses(capsys, tiny_export: Path, tmp_path: Path) -> None:
    code, _, _ = hrmc(capsys, "lower", "--onnx-model", str(tiny_export), "--policy", "q-halt", "--pipeline", "fused-fp16",
                      "-o", str(tmp_path / "a.onnx"))
    static = onnx.load(tmp_path / "a.onnx")
    ops = {(n.domain, n.op_type) for n in static.graph.node}
    assert code == 0 and not {op for _, op in ops} & {"Loop", "If"}
    assert {("hrmc", "RMSNorm"), ("hrmc", "Rope"), ("hrmc", "Attention"), ("hrmc", "SwiGLU")} <= ops
    assert {t.data_type for t in static.graph.initializer if t.dims and t.name.startswith("model.")} == {
        onnx.TensorProto.FLOAT16}


def test_parity_gates_the_shipped_artifact(capsys, tiny_export: Path) -> None:
    code, out, _ = hrmc(capsys, "parity", "torch", "onnx", "--onnx-model", str(tiny_export), "--policy", "q-halt",
                        "--batch", "6", "--json")
    report = json.loads(out)
    assert code == 0 and report["passed"] and report["mode"] == "step" and report["batch"] == 6
    assert report["executors"][1].startswith("onnx (tiny.onnx: structured graph with Loops")
    assert {"prepare B (onnx)", "reference runs (hrm_ref float32, float64)", "whole run B (onnx)"} <= set(report["phases"])


@pytest.mark.parametrize("pair", [("onnx", "static"), ("torch", "chunked")])
def test_static_and_chunked_executors_pass_the_gate(capsys, tiny_export: Path, pair: tuple[str, str]) -> None:
    for mode in ("step", "trajectory"):
        code, out, _ = hrmc(capsys, "parity", *pair, "--onnx-model", str(tiny_export), "--policy", "q-halt",
                            "--batch", "8", "--mode", mode)
        assert code == 0 and out.rstrip().endswith("PASS"), out


def test_chunked_stops_once_every_sample_halted(tiny, tiny_export: Path) -> None:
    from hrmc.parity.executors import make_executor

    batch = hrm_ref.random_batch(tiny.config, 8, seed=0)
    full = make_executor("chunked", onnx_model=str(tiny_export), chunk=1)
    full.prepare(tiny, "q-halt", None, batch)
    steps_taken = full.run(batch)["steps"].shape[0]
    assert full.graph_calls == steps_taken
    assert hrm_ref.run(tiny, batch, "q-halt")["steps"].shape[0] == steps_taken
    # the first seeded single sample that halts early under q-halt
    early, halting_step = next((b, int(hrm_ref.run(tiny, b, "q-halt")["steps"][-1, 0]))
                               for b in (hrm_ref.random_batch(tiny.config, 1, seed=s) for s in range(50))
                               if hrm_ref.run(tiny, b, "q-halt")["steps"][-1, 0] < tiny.config.halt_max_steps)
    full.prepare(tiny, "q-halt", None, early)
    full.run(early)
    assert full.graph_calls == halting_step < tiny.config.halt_max_steps


def perturbed_copy(export: Path, folder: Path, initializer: str, amount: float) -> Path:
    """The exported pair with one weight nudged and its record rewritten to match, as a broken
    exporter would write it: only the numbers can tell."""
    from hrmc.lowering.artifact import save_bound

    parts = {}
    for role, source in (("act", export), ("step", lowering.step_path_for(export))):
        proto = onnx.load(source)
        weight = next(init for init in proto.graph.initializer if init.name == initializer)
        values = onnx.numpy_helper.to_array(weight) + amount
        weight.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), initializer))
        parts[role] = (folder / source.name, proto)
    save_bound(parts)
    return folder / export.name


def test_parity_fails_on_a_tampered_weight_and_names_the_output(capsys, tiny_export: Path, tmp_path: Path) -> None:
    tampered = perturbed_copy(tiny_export, tmp_path, "model.inner.q_head.weight", 1e-3)
    code, out, _ = hrmc(capsys, "parity", "torch", "onnx", "--onnx-model", str(tampered), "--policy", "q-halt")
    verdict = out.strip().splitlines()[-1]
    assert code == 1 and verdict.startswith("FAIL: ") and "q_halt_logits" in verdict and "logits from" not in verdict.replace("q_halt_logits", "").replace("q_continue_logits", "")
