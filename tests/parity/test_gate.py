"""The fidelity contract: step and trajectory gates on real executions, and that they can fail."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch

from hrmc import hrm_ref
from hrmc.hrm_ref import HRM, Batch, Carry
from hrmc.hrm_ref.act import initial_carry, resolve_budget
from hrmc.hrm_ref.presets import TRAINED_PRESETS, test_set_path
from hrmc.parity import Reference, check_modes, check_parity
from hrmc.parity.executors import EXECUTORS, TorchExecutor
from hrmc.targets.executor import Arrays
from hrmc.parity.gate import carry_at, compare, q_margin


class Nudged(TorchExecutor):
    """torch, with `amount` added to one output from step `after` on: a stand-in for a broken backend."""

    def __init__(self, output: str, amount: float, after: int = 1) -> None:
        super().__init__()
        self.output, self.amount, self.after = output, amount, after

    def step(self, carry: Carry, batch: Batch) -> Arrays:
        outputs = super().step(carry, batch)
        if int(carry.steps.max()) + 1 >= self.after:
            outputs[self.output] = outputs[self.output] + self.amount
        return outputs

    def run(self, batch: Batch) -> Arrays:
        outputs = super().run(batch)
        outputs[self.output][self.after - 1:] += self.amount
        return outputs


@pytest.fixture
def nudged(monkeypatch):
    def install(output: str, amount: float, after: int = 1) -> None:
        monkeypatch.setitem(EXECUTORS, "nudged", lambda **_: Nudged(output, amount, after))
    return install


@pytest.fixture(scope="module")
def batch(tiny: HRM) -> Batch:
    return hrm_ref.random_batch(tiny.config, 8, seed=0)


def test_compare_reports_the_tolerance_needed() -> None:
    a, b = np.array([1.0, 10.0]), np.array([1.0 + 2e-5, 10.0 + 1e-4])
    max_abs, max_rel, needed = compare(a, b, rtol=1e-5)
    assert max_abs == pytest.approx(1e-4) and max_rel == pytest.approx(2e-5, rel=1e-3)
    assert needed == pytest.approx(2e-5 - 1e-5 * (1 + 2e-5))  # the first element is the tight one


def test_the_halting_margin_follows_the_models_rule(tiny: HRM) -> None:
    trm = hrm_ref.build_preset("trm-tiny")
    q = {"q_halt_logits": np.array([0.5, -0.25]), "q_continue_logits": np.array([3.0, -1.0])}
    assert q_margin(q, tiny.config).tolist() == [-2.5, 0.75]  # HRM: halt when q_halt > q_continue
    assert trm.config.no_ACT_continue and q_margin(q, trm.config).tolist() == [0.5, -0.25]  # TRM: when q_halt > 0


def test_trm_halts_by_its_own_rule_in_the_gate() -> None:
    trm = hrm_ref.build_preset("trm-tiny")
    report = check_parity("torch", "torch", trm, hrm_ref.random_batch(trm.config, 8, seed=0), policy="q-halt",
                          budget=None, mode="trajectory")
    assert report.passed and report.halting["mismatched"] == report.halting["ambiguous"] == 0


@pytest.mark.parametrize("mode", ["step", "trajectory"])
def test_torch_against_itself_is_exact(tiny: HRM, batch: Batch, mode: str) -> None:
    report = check_parity("torch", "torch", tiny, batch, policy="q-halt", budget=None, mode=mode)
    assert report.passed and max(row.max_abs for row in report.rows) == 0
    assert all(row.floor is not None for row in report.rows) and max(row.floor for row in report.rows) > 0


@pytest.mark.parametrize("mode", ["step", "trajectory"])
def test_a_drift_above_tolerance_fails_and_is_named(tiny: HRM, batch: Batch, nudged, mode: str) -> None:
    nudged("logits", 1e-3, after=3)
    report = check_parity("torch", "nudged", tiny, batch, policy="max-steps", budget=None, mode=mode)
    assert not report.passed
    assert {row.output for row in report.failures()} == {"logits"}
    assert min(row.step for row in report.failures()) == 3


def test_a_drift_within_tolerance_passes(tiny: HRM, batch: Batch, nudged) -> None:
    nudged("logits", 5e-6)
    assert check_parity("torch", "nudged", tiny, batch, policy="max-steps", budget=None, mode="step").passed


def test_gates_sharing_one_reference_judge_as_alone_and_compute_its_steps_once(tiny: HRM, batch: Batch, nudged,
                                                                                monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HRMC_CACHE", str(tmp_path / "cache"))  # nothing computed before
    nudged("logits", 1e-3, after=3)
    budget = resolve_budget(tiny, "max-steps", None)
    reference = Reference.prepared(tiny, "max-steps", budget, batch)
    calls = []
    for executor in (reference.float32, reference.float64):
        executor.step = lambda carry, rows, step=executor.step: calls.append(step) or step(carry, rows)
    shared = [check_modes("torch", b, tiny, batch, policy="max-steps", budget=budget, reference=reference)
              for b in ("torch", "nudged", "torch")]
    alone = [check_modes("torch", b, tiny, batch, policy="max-steps", budget=budget) for b in ("torch", "nudged")]
    assert [[r.to_dict() for r in reports] for reports in shared[:2]] == [[r.to_dict() for r in reports] for reports in alone]
    assert [[r.passed for r in reports] for reports in shared] == [[True, True], [False, False], [True, True]]
    assert len(calls) == budget  # each float64 step once for three gates (float32's are the run's: max-steps)


def test_a_second_gate_reads_the_reference_from_the_cache_and_a_damaged_entry_is_computed_again(
        tiny: HRM, batch: Batch, nudged, monkeypatch, tmp_path: Path) -> None:
    """hrm_ref's float32 and float64 runs and its teacher-forced float64 steps depend only on the model, policy,
    budget and inputs: a later gate of them (another executor, another artifact) reads them from the cache."""
    monkeypatch.setenv("HRMC_CACHE", str(tmp_path / "cache"))
    nudged("logits", 1e-3, after=3)
    float64 = []
    for method in ("run", "step"):
        original = getattr(TorchExecutor, method)
        monkeypatch.setattr(TorchExecutor, method, lambda self, *args, original=original:
                            (float64.append(original) if self.dtype == "float64" else None) or original(self, *args))

    def gate(b: str) -> tuple[list[dict], list[str]]:
        lines: list[str] = []
        reports = check_modes("torch", b, tiny, batch, policy="max-steps", budget=None, progress=lines.append)
        return [report.to_dict() for report in reports], lines

    first, made = gate("torch")
    assert len(float64) == 1 + 8 and not any("holds hrm_ref" in line for line in made)  # its run, then 8 steps
    assert gate("torch")[0] == first and gate("nudged")[0] != first and len(float64) == 9  # read, not computed
    assert any("the cache" in line and "holds hrm_ref's float64 steps" in line for line in gate("torch")[1])
    entries = list((tmp_path / "cache" / "reference").glob("*/arrays.npz"))
    assert len(entries) == 2  # the runs, the float64 steps
    for entry in entries:
        entry.write_bytes(entry.read_bytes()[:-100])
    assert gate("torch")[0] == first and len(float64) == 18  # damaged: computed again, never read


@pytest.mark.parametrize("preset, policy", [("tiny", "max-steps"), ("sudoku4", "q-halt")])
def test_a_float32_step_read_from_the_trajectory_is_the_step_computed(preset: str, policy: str) -> None:
    """The reference's teacher-forced float32 steps before any row halts are read from its run: the same bits."""
    model = hrm_ref.build_preset(preset)
    with np.load(test_set_path(preset)) if preset in TRAINED_PRESETS else contextlib.nullcontext() as held_out:
        batch = (hrm_ref.random_batch(model.config, 8, seed=0) if held_out is None else
                 {name: torch.from_numpy(held_out[name][:32]) for name in held_out.files if name != "labels"})
    reference = Reference.prepared(model, policy, resolve_budget(model, policy, None), batch)
    start, read = initial_carry(reference.float32.model, batch), 0
    for s in range(reference.run32["steps"].shape[0]):
        carry = carry_at(reference.run32, start, s)
        computed, got = reference.float32.step(carry, batch), reference.step("float32", s, carry, batch)
        assert got.keys() == computed.keys()
        assert all(got[name].dtype == value.dtype and np.array_equal(got[name], value) for name, value in computed.items())
        read += not bool(carry.halted.any())
    assert read >= 2  # max-steps: every step; the trained fixture's first rows halt after step 2


def test_trajectory_gate_scales_with_the_noise_floor(tiny: HRM, batch: Batch) -> None:
    report = check_parity("torch", "torch", tiny, batch, policy="max-steps", budget=None, mode="trajectory")
    floors = [row.floor for row in report.rows if row.output == "logits"]
    assert 0 < floors[0] < floors[-1]  # the recurrence amplifies rounding noise step by step
    for output in {row.output for row in report.rows}:  # the limit follows the largest floor so far
        rows = [row for row in report.rows if row.output == output]
        assert all(row.limit == max(1e-5, 10 * max(r.floor for r in rows[:i + 1])) for i, row in enumerate(rows))


@pytest.mark.parametrize("mode", ["step", "trajectory"])
def test_torch_and_onnx_agree(tiny: HRM, tiny_export: Path, mode: str) -> None:
    batch = hrm_ref.random_batch(tiny.config, 16, seed=1)
    report = check_parity("torch", "onnx", tiny, batch, policy="q-halt", budget=None, mode=mode, onnx_model=str(tiny_export))
    assert report.passed, [row for row in report.failures()]
    assert {row.output for row in report.rows} >= {"logits", "q_halt_logits", "q_continue_logits"}
    assert 0 < max(row.max_abs for row in report.rows) < 1e-4  # different op order: close, not identical
