"""Every executor pair the stages so far add, for every preset, in both modes.

Heavy: one export per case (about a minute, two for sudoku), then torch–onnx (the export),
onnx–static (the passes), torch–chunked (the chunk graph and its host loop) and torch–mlx in both
modes, and torch–coreml (the float32 package, MIL replay) in step mode for every case but the
full-size sudoku. Each pair's executors are prepared and run once for both modes (`check_modes`), and
every pair reads one reference (`Reference.prepared`: hrm_ref's runs and teacher-forced steps, once per case).

The full-size sudoku gates MLX in trajectory mode only: its whole-inference graph against the reference's
whole run. MLX's Linux wheel computes with the reference (netlib) BLAS, 4 s a sudoku step where onnxruntime
takes 0.3 s, and step mode's 32 more steps (teacher-forced, then chained for the whole graph) were 130 of the
case's 390 s. The step graph is the same emitted code at any width: step mode runs it on sudoku-shaped.

Upstream's sudoku arch runs once at full size, under max-steps. Its q-halt case runs on a
sudoku-shaped model (the same 81 cells, vocabulary, puzzle position and H/L cycles; a quarter of the
width, half the layers and half the budget): the halting rule is the same code at any size, and the
size cost four minutes here (the unrolled graphs' op count, not the width, is what takes the time).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hrmc import hrm_ref
from hrmc.hrm_ref import HRM, HRMConfig
from hrmc.hrm_ref.presets import PRESETS, randomize_weights
from hrmc.lowering import export_onnx
from hrmc.hrm_ref.act import resolve_budget
from hrmc.parity import Reference, check_modes

# Every preset once, HRM's q-halt on every front end and head that has a q head (the masked halting is the same code
# whatever computes q), max-steps on tiny, full-size sudoku, the heads without one (nxt, denoiser) and controller-grb;
# TRM under both policies (its own halting rule).
CASES = [("tiny", "max-steps"), ("sudoku", "max-steps"), ("sudoku-shaped", "q-halt"), ("nibble", "q-halt"),
         ("hex", "q-halt"), ("nxt", "max-steps"), ("denoiser", "max-steps"), ("controller-grb", "max-steps"),
         ("controller-cab", "q-halt"), ("trm-tiny", "max-steps"), ("trm-tiny", "q-halt"), ("trm-tiny-mlp-t", "q-halt")]
SUDOKU_SHAPED = PRESETS["sudoku"].replace(hidden_size=128, num_heads=2, puzzle_emb_ndim=128, H_layers=2, L_layers=2,
                                          halt_max_steps=8)

PAIRS = [("torch", "onnx"), ("onnx", "static"), ("torch", "chunked"), ("torch", "mlx")]
STEP_ONLY = [("torch", "coreml")]  # trajectory mode replays the whole unrolled package: tiny's in tests/targets


def _model(case: str) -> HRM:
    if case == "sudoku-shaped":
        return randomize_weights(HRM(SUDOKU_SHAPED), seed=0).eval()
    return hrm_ref.build_preset(case)


@pytest.mark.heavy
@pytest.mark.parametrize("case, policy", CASES)
def test_every_executor_pair_agrees_in_both_modes(case: str, policy: str, tmp_path: Path) -> None:
    model = _model(case)
    export_onnx(model, tmp_path / "m.onnx", policy)
    batch = hrm_ref.random_batch(model.config, 1 if case == "sudoku" else 3, seed=0)
    # Random-weight TRM runs 42 layers a step: two correct float32 implementations drift apart by chance past
    # 10 × torch's own noise (AMD EPYC: onnxruntime's q_halt at step 8 is 9.5e-6 from float64, torch's 1.0e-6).
    # Step mode gates them here; TRM's whole runs are compared (answers, halting) on the trained fixtures.
    modes = ("step",) if model.config.family == "trm" else ("step", "trajectory")
    runs = [(pair, ("trajectory",) if case == "sudoku" and pair == ("torch", "mlx") else modes) for pair in PAIRS]
    if case != "sudoku":  # sudoku's float32 package is minutes per graph under the replay: measured in bench/RESULTS.md
        runs += [(pair, ("step",)) for pair in STEP_ONLY]
    budget = resolve_budget(model, policy, None)
    reference = Reference.prepared(model, policy, budget, batch)  # hrm_ref's runs and steps, once for every pair
    for pair, modes in runs:
        reports = check_modes(*pair, model, batch, policy=policy, budget=budget, modes=modes,
                              onnx_model=str(tmp_path / "m.onnx"), reference=reference)
        for mode, report in zip(modes, reports):
            assert report.passed, (pair, mode, report.failures())


small_configs = st.builds(
    HRMConfig, vocab_size=st.integers(2, 12), hidden_size=st.sampled_from([16, 32]), num_heads=st.sampled_from([1, 2]),
    H_cycles=st.integers(1, 3), L_cycles=st.integers(1, 3), H_layers=st.integers(1, 2), L_layers=st.integers(1, 2),
    puzzle_emb_ndim=st.sampled_from([0, 16, 40]), num_puzzle_identifiers=st.integers(1, 3),
    halt_max_steps=st.integers(1, 5), seq_len=st.integers(2, 9))


@pytest.mark.heavy
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=small_configs, batch_size=st.integers(1, 4), policy=st.sampled_from(hrm_ref.POLICIES),
       seed=st.integers(0, 2**16))
def test_random_configs_export_faithfully(tmp_path: Path, config: HRMConfig, batch_size: int, policy: str, seed: int) -> None:
    model: HRM = randomize_weights(HRM(config), seed).eval()
    export_onnx(model, tmp_path / "m.onnx", policy)
    batch = hrm_ref.random_batch(config, batch_size, seed)
    for pair in PAIRS:
        reports = check_modes(*pair, model, batch, policy=policy, budget=None, onnx_model=str(tmp_path / "m.onnx"))
        assert all(report.passed for report in reports), (pair, [report.failures() for report in reports])
