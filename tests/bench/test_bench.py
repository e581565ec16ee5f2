"""The bench code itself: `hrmc bench` on tiny in seconds, and its FLOP count."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hrmc import hrm_ref
from hrmc.bench.cuda import fixed_budget
from hrmc.bench.roofline import flops_per_step
from hrmc.hrm_ref.act import run
from tests.helpers import assert_one_line_error, hrmc


def test_bench_reports_every_executor(capsys, tiny_export: Path) -> None:
    code, out, _ = hrmc(capsys, "bench", "--executors", "torch,static", "--runs", "2", "--policy", "q-halt",
                        "--onnx-model", str(tiny_export), "--batch", "2", "--json")
    report = json.loads(out)
    assert code == 0 and report["peak_gflops"] > 0 and report["versions"]["torch"]
    assert [row["executor"] for row in report["rows"]] == ["torch", "static"]
    for row in report["rows"]:
        assert row["runs"] == 2 and 0 < row["min_ms"] <= row["p50_ms"] <= row["p90_ms"] and row["gflops"] > 0


def test_flops_per_step_counts_the_sudoku_arch() -> None:
    config = hrm_ref.build_preset("sudoku").config
    # 24 layer applications × (qkv 3h² + o h² + SwiGLU 3·h·inter) per token, attention 2·S²·h, heads
    h, inter, positions = 512, 1536, 82
    layer = 2 * positions * (4 * h * h + 3 * h * inter) + 4 * positions * positions * h
    assert flops_per_step(config, 1, positions) == 24 * layer + 2 * (positions - 1) * h * 11 + 2 * h * 2


@pytest.mark.parametrize("preset", ["tiny", "trm-tiny", "trm-tiny-mlp-t"])
def test_flops_per_step_is_what_torch_counts(preset: str) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    model = hrm_ref.build_preset(preset)
    batch = hrm_ref.random_batch(model.config, 2, seed=0)
    carry = hrm_ref.initial_carry(model, batch)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.inner(carry.z_H, carry.z_L, batch)
    assert flops_per_step(model.config, 2, model.inner.positions(batch)) == counter.get_total_flops()


def test_bench_refuses_an_unknown_executor(capsys) -> None:
    code, _, err = hrmc(capsys, "bench", "--executors", "torch,gpu")
    assert_one_line_error(code, err, "unknown executor gpu")


def test_the_cuda_graph_schedule_is_the_reference_run(tiny) -> None:
    """bench.cuda times `fixed_budget` (no host sync) for the static row: it must compute what `run` does."""
    batch = hrm_ref.random_batch(tiny.config, 3, seed=1)
    with torch.no_grad():
        reference = run(tiny, batch, "max-steps", 8)
        fixed = fixed_budget(tiny, batch, "max-steps", 8)
    assert torch.equal(fixed["logits"], reference["logits"][-1]) and torch.equal(fixed["z_H"], reference["z_H"][-1])
    assert fixed["steps"].tolist() == [8, 8, 8]


def test_ort_options_times_every_setting(tiny_export: Path) -> None:
    from click.testing import CliRunner

    from hrmc.bench.ort_options import VARIANTS, main as ort_options

    result = CliRunner().invoke(ort_options, ["--preset", "tiny", "--policy", "q-halt", "--runs", "1",
                                              "--onnx-model", str(tiny_export)])
    assert result.exit_code == 0, result.output
    rows = result.stdout.splitlines()[2:]
    assert [row[:34].rstrip() for row in rows] == list(VARIANTS) and rows[0].endswith("1.00×")
