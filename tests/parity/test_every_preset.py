"""Every executor pair the stages so far add, for every preset and policy, in both modes.

Heavy: one export per case (about a minute, two for sudoku), then torch–onnx (the export),
onnx–static (the passes), torch–chunked (the chunk graph and its host loop) and torch–mlx in both
modes, and torch–coreml (the float32 package, MIL replay) in step mode for every preset but sudoku.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hrmc import hrm_ref
from hrmc.hrm_ref import HRM, HRMConfig
from hrmc.hrm_ref.presets import randomize_weights
from hrmc.cli import main
from hrmc.lowering import export_onnx
from hrmc.parity import check_parity

CASES = [("tiny", "max-steps"), ("sudoku", "max-steps"), ("sudoku", "q-halt"), ("nibble", "max-steps"),
         ("nibble", "q-halt"), ("hex", "max-steps"), ("hex", "q-halt"), ("nxt", "max-steps"), ("denoiser", "max-steps"),
         ("controller-grb", "max-steps"), ("controller-grb", "q-halt"), ("controller-cab", "q-halt")]


PAIRS = [("torch", "onnx"), ("onnx", "static"), ("torch", "chunked"), ("torch", "mlx")]
STEP_ONLY = [("torch", "coreml")]  # trajectory mode replays the whole unrolled package: tiny's in tests/targets


@pytest.mark.heavy
@pytest.mark.parametrize("preset, policy", CASES)
def test_every_executor_pair_agrees_in_both_modes(preset: str, policy: str, tmp_path: Path, capsys) -> None:
    model = ["--preset", preset, "--policy", policy, "--batch", "1" if preset == "sudoku" else "3"]
    assert main(["export", *model, "-o", str(tmp_path / "m.onnx")]) == 0
    runs = [(pair, mode) for pair in PAIRS for mode in ("step", "trajectory")]
    if preset != "sudoku":  # sudoku's float32 package is minutes per graph under the replay: measured in the README
        runs += [(pair, "step") for pair in STEP_ONLY]
    for pair, mode in runs:
        code = main(["parity", *pair, *model, "--mode", mode, "--onnx-model", str(tmp_path / "m.onnx")])
        report = capsys.readouterr().out
        assert code == 0 and report.rstrip().endswith("PASS"), f"{pair} {mode}\n{report}"


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
        for mode in ("step", "trajectory"):
            report = check_parity(*pair, model, batch, policy=policy, budget=None, mode=mode,
                                  onnx_model=str(tmp_path / "m.onnx"))
            assert report.passed, (pair, mode, report.failures())
