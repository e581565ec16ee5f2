"""The float16 range report (`inspect --ranges`, `lower --target ane`'s check) and the ANE's overflow-safe
RMSNorm, on tiny with one massive channel: every MLP's first output channel scaled up, so the residual
sums every norm reads hold one value of 10⁴ among values of order 1 (the "massive activations" trained
transformers grow). Scaling every channel instead drowns the residual's O(1) part in float16 and
fails the contract on float16 weights alone (53 dB at step 1)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
import torch

from hrmc import hrm_ref
from hrmc.targets import coreml
from hrmc.targets import FLOAT16_MAX
from hrmc.targets.coreml.ranges import EXACT_INTEGERS, MATMUL_OUTPUT_MAX, op_range, package_inputs, value_ranges
from tests.helpers import hrmc

LARGE = 12000  # norm inputs reach 1.18e4 on seed 0; matmul outputs stay under 32,760 / 2


def scaled_checkpoint(factor: float, path: Path) -> Path:
    """tiny with the first output channel of every MLP's down projection scaled by `factor`."""
    model = hrm_ref.build_preset("tiny")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "down_proj" in name:
                parameter[0].mul_(factor)
    hrm_ref.save_checkpoint(model, path)
    return path


def lower_ane(capsys, checkpoint: Path, out: Path) -> tuple[int, str, str]:
    return hrmc(capsys, "lower", "--target", "ane", "--checkpoint", str(checkpoint), "--policy", "q-halt",
                "--batch", "2", "-o", str(out))


def test_each_op_is_held_to_the_limit_that_applies_to_it() -> None:
    assert op_range("matmul", "m", "", [np.array([3.5], np.float32)]).limit == MATMUL_OUTPUT_MAX
    assert op_range("add", "a", "", [np.array([3.0, 1500.0], np.float32)]).limit == EXACT_INTEGERS
    assert op_range("add", "a", "", [np.array([3.5], np.float32)]).limit == FLOAT16_MAX
    assert op_range("mul", "m", "", [np.array([3.0], np.float32)]).limit == FLOAT16_MAX  # not a sum
    assert op_range("add", "a", "", [np.array([1, 2], np.int32)]) is None  # no float output
    near = op_range("matmul", "m", "n", [np.array([-20000.0], np.float32)])
    assert near.max_abs == 20000 and not near.overflows and near.headroom < 2
    assert op_range("matmul", "m", "n", [np.array([40000.0], np.float32)]).overflows
    for broken in (np.nan, np.inf):  # inf − inf of a weight pair beyond float16 is NaN, and NaN compares false
        assert op_range("mul", "m", "n", [np.array([1.0, broken], np.float32)]).overflows
        assert op_range("add", "a", "n", [np.array([1.0, broken], np.float32)]).limit == FLOAT16_MAX


def test_a_weight_float16_cannot_hold_is_refused_before_any_work(capsys, tmp_path: Path) -> None:
    """Finite in float32, beyond float16: named by its parameter for --target ane (in either weight storage),
    by its ONNX constant where the lowering meets it first; a float32 package takes it."""
    from hrmc.targets.coreml.lowering import Builder, FLAVOURS
    from tests.helpers import assert_one_line_error

    checkpoint = scaled_checkpoint(1e6, tmp_path / "huge.safetensors")
    for weights in ("float16x2", "float16"):
        code, _, err = hrmc(capsys, "lower", "--target", "ane", "--weights", weights, "--checkpoint", str(checkpoint),
                            "-o", str(tmp_path / "h.mlpackage"))
        assert_one_line_error(code, err, "mlp.down_proj.weight holds", "beyond float16's 65504")
        assert not any(tmp_path.glob("h.*")), err
    builder = Builder("h.onnx", FLAVOURS["ane"], weight_pairs=True)
    with pytest.raises(coreml.LowerError, match="constant 'w' \\[2\\] holds 70000"):
        builder.array(np.array([1.0, 7e4], np.float32), "w")


@pytest.fixture(scope="module")
def large(tmp_path_factory) -> Path:
    """tiny at LARGE: its checkpoint, its export (q-halt, batch 2) and its ane package l.mlpackage."""
    from hrmc.cli import main

    folder = tmp_path_factory.mktemp("large")
    model = ["--checkpoint", str(scaled_checkpoint(LARGE, folder / "large.safetensors")), "--policy", "q-halt",
             "--batch", "2"]
    assert main(["export", *model, "-o", str(folder / "large.onnx")]) == 0
    assert main(["lower", "--target", "ane", *model, "--onnx-model", str(folder / "large.onnx"),
                 "-o", str(folder / "l.mlpackage")]) == 0
    return folder


@pytest.mark.heavy  # an export and ane lowerings of tiny: a minute
def test_norm_inputs_past_float16_squares_stay_finite_in_the_ane_package(large: Path) -> None:
    """Norm inputs reach 10⁴; the explicit form (x², mean, sqrt, divide) overflows on them in float16,
    the layer_norm over [x, −x] the package has does not."""
    from hrmc.passes import lower_onnx

    whole = coreml.package_functions(large / "l.mlpackage")["static"]
    feed, _ = package_inputs(whole, None, 0)
    main = coreml.saved_program(whole.path, whole.name)
    norm_inputs = {op.inputs["x"].name for op in main.operations if op.op_type == "layer_norm"}
    assert norm_inputs and max(r.max_abs for r in value_ranges(whole, feed) if r.name in norm_inputs) >= 1e4
    outputs = coreml.replay(main, feed)
    assert all(np.isfinite(value).all() for value in outputs.values() if value.dtype.kind == "f")

    overflowed = []

    def watch(op, results) -> None:
        if op.op_type == "mul" and any(np.isinf(r).any() for r in results if r.dtype.kind == "f"):
            overflowed.append(op.outputs[0].name)

    static = ir.load(str(lower_onnx(large / "large.onnx", large / "static.onnx", "fused").graphs["static"]))
    explicit = dataclasses.replace(coreml.FLAVOURS["ane"], overflow_safe_norm=False)
    with np.errstate(over="ignore"):
        coreml.replay(coreml.build_program({"main": static}, 2, "large.onnx", explicit).program.functions["main"], feed,
                      observe=watch)
    assert overflowed  # x² past 65504


@pytest.mark.heavy  # an export and ane lowerings of tiny: a minute
def test_inspect_ranges_reports_the_tightest_ops_by_onnx_node(capsys, large: Path) -> None:
    code, out, _ = hrmc(capsys, "inspect", str(large / "l.mlpackage"), "--ranges", "--json")
    report = json.loads(out)
    assert code == 0 and not report["overflows"] and report["ops"] > 1000
    tightest = report["tightest"][0]
    assert tightest["op"] == "matmul" and tightest["node"] and 1e4 <= tightest["max_abs"] < MATMUL_OUTPUT_MAX / 2
    code, out, _ = hrmc(capsys, "inspect", str(large / "l.mlpackage"), "--ranges")
    assert code == 0 and "near a limit: none" in out and tightest["node"] in out


@pytest.mark.heavy  # an export and ane lowerings of tiny: a minute
def test_lower_warns_near_a_limit_and_fails_on_an_overflow_leaving_nothing(capsys, tmp_path: Path) -> None:
    code, out, err = lower_ane(capsys, scaled_checkpoint(20000, tmp_path / "near.safetensors"), tmp_path / "n.mlpackage")
    assert code == 0 and "warning: n.mlpackage: matmul" in err and "headroom" in err, err
    assert (tmp_path / "n.mlpackage").is_dir()
    code, out, err = lower_ane(capsys, scaled_checkpoint(40000, tmp_path / "over.safetensors"), tmp_path / "o.mlpackage")
    lines = [line for line in err.splitlines() if not line.startswith("  ")]
    assert code == 1 and len(lines) == 1 and "float16 overflow: matmul" in lines[0] and "ONNX node" in lines[0], err
    assert not list(tmp_path.glob("o*.mlpackage"))


@pytest.mark.heavy  # a minute
def test_the_ane_package_passes_parity_with_norm_inputs_at_ten_thousand(capsys, large: Path) -> None:
    code, out, _ = hrmc(capsys, "parity", "torch", "ane", "--checkpoint", str(large / "large.safetensors"),
                        "--policy", "q-halt", "--batch", "2", "--artifact", str(large / "l.mlpackage"), "--json")
    report = json.loads(out)
    assert code == 0 and report["passed"], out
    assert report["answers"]["mismatched"] == 0 and report["answers"]["compared"] > 0
