"""The float16 contract (docs/design.md §4): the rule itself on synthetic outputs, the gate's comparison on
hrm_ref float16 itself and on a model with one weight 1 % off, and on shipped ane packages: it passes a
correct package and fails a wrong one, through the binding (an edited file) or through the numbers (a
non-weight constant 1 % off, record rewritten)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch
from hypothesis import given, settings, strategies as st

from hrmc import hrm_ref
from hrmc.cli import main
from hrmc.hrm_ref import HRM, Batch
from hrmc.hrm_ref.presets import TRAINED_PRESETS, test_set_path
from hrmc.lowering.artifact import bound_parts, load_proto
from hrmc.parity import format_report
from hrmc.parity.executors import TorchExecutor
from hrmc.parity.gate import (BAND_FACTOR, FLOAT16_ROUNDING, HALF_FACTOR, Q_ERROR_LIMIT, Reference, Report,
                              float16_margins, float16_row, step_parity)
from hrmc.parity.mac_check.check import rmse
from tests.helpers import assert_one_line_error, hrmc
from tests.parity.test_artifacts import largest_weight, rope_table, tamper

WEIGHT = "inner.L_level.layers.1.self_attn.o_proj.weight"  # one weight matrix, made 1 % wrong


def noise(shape: tuple[int, ...], rms: float, seed: int) -> np.ndarray:
    """Random noise of exactly this RMS."""
    values = np.random.default_rng(seed).standard_normal(shape)
    return values * (rms / np.sqrt(np.mean(values ** 2)))


@settings(max_examples=60, deadline=None)
@given(scale=st.floats(1e-3, 1e3), yardstick=st.floats(1e-6, 1e-2), factor=st.floats(0.0, 4.0),
       seed=st.integers(0, 2**16))
def test_an_output_passes_while_its_error_is_within_twice_hrm_ref_float16s(scale, yardstick, factor, seed) -> None:
    """e_B ≤ 2 · e_16, both RMSE against float64; or, where that is less, one float16 rounding of the output
    (2⁻¹¹ × its RMS). The row shows the ratio, both PSNRs, and which rule judged it."""
    exact = noise((4, 16), scale, seed)
    e_16 = yardstick * scale
    got, x16 = exact + noise(exact.shape, factor * e_16, seed + 1), exact + noise(exact.shape, e_16, seed + 2)
    row = float16_row("z_H", 1, got, x16, exact, 0.0, 0.0, None)
    rounding = FLOAT16_ROUNDING * scale
    assert row.ratio == pytest.approx(factor, rel=1e-6, abs=1e-9) and row.needed == pytest.approx(factor * e_16, rel=1e-6)
    assert row.gated == ("ratio" if HALF_FACTOR * e_16 >= rounding else "rounding")
    assert row.limit == pytest.approx(max(HALF_FACTOR * e_16, rounding))
    assert row.passed == (row.needed <= row.limit)
    assert row.psnr < row.float16_psnr if factor > 1 else row.psnr >= row.float16_psnr - 1e-9
    if factor > 2.01 and HALF_FACTOR * e_16 >= rounding:
        assert not row.passed


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), scale=st.floats(1e-2, 1e3))
def test_one_float16_rounding_passes_where_hrm_ref_float16_is_exact(seed, scale) -> None:
    """An output hrm_ref float16 gets exactly (e_16 = 0): rounding it once to float16 passes (rule rounding),
    1 % off it does not."""
    exact = noise((8, 32), scale, seed)
    rounded = float16_row("logits", 1, exact.astype(np.float16), exact, exact, 0.0, 0.0, None)
    assert rounded.passed and rounded.gated == "rounding" and rounded.float16_psnr == np.inf
    assert not float16_row("logits", 1, exact * 1.01, exact, exact, 0.0, 0.0, None).passed


def test_the_psnr_floor_is_an_extra_absolute_bar() -> None:
    exact = noise((4, 64), 1.0, 0)
    got = exact + noise(exact.shape, 1e-3, 1)
    row = float16_row("z_H", 1, got, exact + noise(exact.shape, 1e-3, 2), exact, 0.0, 0.0, None)
    assert row.passed and 50 < row.psnr < 70
    assert not float16_row("z_H", 1, got, exact + noise(exact.shape, 1e-3, 2), exact, 0.0, 0.0, 70.0).passed


def test_q_values_are_judged_on_their_error_against_the_q_scale() -> None:
    """One number per sample: |Δq| ≤ 1e-2 × the q scale, whatever hrm_ref float16's error; ratio for information."""
    exact = np.array([8.0, -0.5])
    row = float16_row("q_halt_logits", 1, exact + 0.07, exact, exact, 0.0, 8.0, None)
    assert row.gated == "abs" and row.passed and row.limit == pytest.approx(Q_ERROR_LIMIT * 8)
    assert row.ratio == np.inf and row.float16_psnr == np.inf
    assert not float16_row("q_halt_logits", 1, exact + 0.09, exact, exact, 0.0, 8.0, None).passed


def test_the_decision_bands_are_what_hrm_ref_float16_changes_in_the_margins(tiny: HRM) -> None:
    """Answers: the reference's top-1 minus top-2 logit per position, the band BAND_FACTOR × the most hrm_ref
    float16 moves the difference of those two classes; halting: the halting margin per sample."""
    logits = np.array([[[3.0, 1.0, 0.0], [0.0, 0.5, 0.4]]])
    moved = logits + np.array([[[0.01, -0.01, 0.5], [0.0, -0.002, 0.0]]])  # class 2 rises, but is not in a top two
    exact = {"logits": logits, "q_halt_logits": np.array([1.0]), "q_continue_logits": np.array([0.25])}
    yardstick = {"logits": moved, "q_halt_logits": np.array([1.0]), "q_continue_logits": np.array([0.2])}
    margins = float16_margins(exact, yardstick, tiny.config)
    lead, band = margins["answers"]
    np.testing.assert_allclose(lead, [[2.0, 0.1]])
    assert band == pytest.approx(BAND_FACTOR * 0.02)
    halting, band = margins["halting"]
    np.testing.assert_allclose(halting, [0.75])
    assert band == pytest.approx(BAND_FACTOR * 0.05)


class OneWeightOff(TorchExecutor):
    """hrm_ref in float16 with one weight matrix scaled by `factor`: a float16 side that is wrong by a known
    amount (what a converter that got one matrix 1 % wrong would ship)."""

    def __init__(self, weight: str = WEIGHT, factor: float = 1.0) -> None:
        super().__init__("float16")
        self.weight, self.factor = weight, factor

    def prepare(self, model: HRM, policy: str, budget: int | None, batch: Batch) -> None:
        twin = model.twin()
        with torch.no_grad():
            dict(twin.named_parameters())[self.weight].mul_(self.factor)
        super().prepare(twin, policy, budget, batch)


def held_out_or_random(name: str, count: int) -> Batch:
    model = hrm_ref.build_preset(name)
    if name not in TRAINED_PRESETS:
        return hrm_ref.random_batch(model.config, count, seed=0)
    with np.load(test_set_path(name)) as data:
        return {key: torch.from_numpy(data[key][:count]) for key in ("inputs", "puzzle_identifiers")}


def gate_float16_side(model: HRM, batch: Batch, b: TorchExecutor) -> Report:
    a = TorchExecutor()
    for executor in (a, b):
        executor.prepare(model, "q-halt", None, batch)
    report = Report("step", [a.describe(), b.describe()], "m", "q-halt", a.budget, len(batch["inputs"]), 0, 1e-5, 1e-5)
    return step_parity(a, b, Reference.prepared(model, "q-halt", a.budget, batch, float16=True), batch, report)


@pytest.mark.parametrize("preset", ["tiny", "sudoku4", "trm-sudoku4"])
def test_hrm_ref_float16_passes_at_ratio_one_and_one_weight_1_percent_off_fails(preset: str) -> None:
    """The comparison on outputs computed from a model: hrm_ref float16 as the float16 side is its own
    yardstick (every ratio exactly 1); the same with one weight matrix 1 % off fails on the ratio, its report
    printing the ratio column and naming the rule. Random tiny, and trained fixtures on held-out puzzles."""
    model, batch = hrm_ref.build_preset(preset), held_out_or_random(preset, 8)
    weight = WEIGHT if preset != "trm-sudoku4" else "inner.L_level.layers.1.mlp.down_proj.weight"
    same = gate_float16_side(model, batch, OneWeightOff(weight))
    states = [row for row in same.rows if row.gated in ("ratio", "rounding")]
    assert same.passed and states and all(row.ratio == 1.0 and row.psnr == row.float16_psnr for row in states)
    assert same.answers["compared"] > 0 and same.halting["compared"] > 0
    wrong = gate_float16_side(model, batch, OneWeightOff(weight, 1.01))
    assert not wrong.passed and max(row.ratio for row in wrong.rows if row.gated == "ratio") > 2 * HALF_FACTOR
    text = format_report(wrong)
    assert " ratio " in text and "≤ 2·x16" in text and "× hrm_ref float16's error" in text.splitlines()[-1]


def lower_ane(structured: Path, out: Path, batch: int = 2) -> Path:
    assert main(["lower", "--target", "ane", "--policy", "q-halt", "--batch", str(batch), "--onnx-model",
                 str(structured), "-o", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def ane_package(tiny_export: Path, tmp_path_factory) -> Path:
    return lower_ane(tiny_export, tmp_path_factory.mktemp("ane") / "tiny.mlpackage")


def test_a_correct_package_passes_with_decisions_compared(capsys, ane_package: Path) -> None:
    code, out, _ = hrmc(capsys, "parity", "torch", "ane", "--policy", "q-halt", "--batch", "2", "--artifact",
                        str(ane_package), "--json")
    report = json.loads(out)
    assert code == 0 and report["passed"]
    rows = [row for row in report["rows"] if row["check"] == "A vs B"]
    q_rows = [row for row in rows if row["output"].startswith("q_")]
    assert q_rows and all(row["gated"] == "abs" and 0 < row["max_abs"] <= row["limit"] for row in q_rows)
    states = [row for row in rows if row not in q_rows]
    assert states and all(row["gated"] == "ratio" and 0 < row["ratio"] <= HALF_FACTOR and row["side"] == "B"
                          for row in states)
    assert report["answers"]["compared"] > 0 and report["halting"]["compared"] > 0
    assert report["task"]["samples"] == 2 and "cells_agree" in report["task"]
    code, out, _ = hrmc(capsys, "parity", "torch", "ane", "--policy", "q-halt", "--batch", "2", "--artifact",
                        str(ane_package))
    header = next(line for line in out.splitlines() if line.startswith("output") and "ratio" in line)
    assert code == 0 and "x16 PSNR" in header and "≥60 dB" in header and out.rstrip().endswith("PASS")


def test_an_edited_weight_file_is_refused_by_its_record(capsys, ane_package: Path, tmp_path: Path) -> None:
    edited = tmp_path / ane_package.name
    shutil.copytree(ane_package, edited)
    weights = edited / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    data = np.frombuffer(weights.read_bytes(), np.uint8).copy()
    data[-4096:-2048] ^= 1  # a few float16 weights off by one ulp: a 1.001-size change
    weights.write_bytes(data.tobytes())
    code, _, err = hrmc(capsys, "parity", "torch", "ane", "--policy", "q-halt", "--batch", "2", "--artifact", str(edited))
    assert_one_line_error(code, err, "weight.bin", "does not match the sha256")


@pytest.mark.heavy  # an export's copy lowered to ane, gated and localised: two minutes
def test_a_constant_1_percent_off_fails_the_numbers(capsys, shipped_copy: Path, tmp_path: Path) -> None:
    """A converter that got one constant 1 % wrong, its record consistent: a RoPE table, a constant of the graph's
    own (a changed weight is refused before anything runs: targets/weights.py). The numbers alone must fail it,
    on the float16 rule's ratio. (The RMSNorm epsilon 1 % off would change its outputs by 5e-8 of their size, far
    inside float16's own rounding: no comparison of outputs can or should see it.)"""
    for part in (shipped_copy, bound_parts(shipped_copy)["step"]):
        tamper(part, lambda table: table * np.float32(1.01), rebind=True, tensor=rope_table)
    package = lower_ane(shipped_copy, tmp_path / "wrong.mlpackage")
    code, out, _ = hrmc(capsys, "parity", "torch", "ane", "--policy", "q-halt", "--batch", "2", "--artifact",
                        str(package))
    assert code == 1 and "FAIL: " in out and "× hrm_ref float16's error" in out.splitlines()[-1], out
    # --localize holds each value to the rule's bound on the failing step, as a PSNR, and finds where it starts
    code, out, _ = hrmc(capsys, "parity", "torch", "ane", "--policy", "q-halt", "--batch", "2", "--artifact",
                        str(package), "--localize", "--json")
    found = json.loads(out)
    assert code == 1 and found["step"] == 1 and found["measure"] == "psnr" and found["first"] is not None
    assert "the float16 rule's limit on" in found["tolerance"]
    assert found["first"]["output"]["exceeds"] and not any(drift["exceeds"] for drift in found["first"]["inputs"])


@pytest.fixture
def shipped_copy(tiny_export: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "export"
    folder.mkdir()
    for part in bound_parts(tiny_export).values():
        shutil.copy(part, folder / part.name)
    return folder / tiny_export.name


def test_tamper_helper_scales_the_largest_weight(shipped_copy: Path) -> None:
    before = onnx.numpy_helper.to_array(largest_weight(load_proto(shipped_copy)))
    tamper(shipped_copy, lambda w: w * np.float32(2), rebind=True)
    after = onnx.numpy_helper.to_array(largest_weight(load_proto(shipped_copy)))
    np.testing.assert_array_equal(after, before * 2)
    assert set(bound_parts(shipped_copy)) == {"act", "step"}  # still a consistent set
