"""torch on a CUDA GPU: eager against CUDA-graph replay of the fixed-budget loop, in float32 and bfloat16.

Entry point: `cuda_bench(preset, batch, budget, …) -> BenchReport`; run it as
`python -m hrmc.bench.cuda --preset sudoku --batch 1` on a machine with a CUDA GPU (never in tests or CI).

Rows, per forward dtype:
- `torch-eager`: `hrm_ref.act.run`, the reference driver (a host sync per ACT step to test halting).
- `torch-graph`: the same `budget` ACT steps with no host sync (the static graph's schedule: halting
  is a mask, max-steps runs every step), captured once as a CUDA graph and replayed.
- `torch-compile-graph` (`--compile`): one ACT step compiled by inductor, the loop captured as above.

Before timing, each replayed row's final logits are compared with the eager run's: the report's
`extra.max_abs_diff_vs_eager` says how far they are apart (bit-identical is not expected across different kernels).
"""

from __future__ import annotations

import json
from typing import Callable

import click
import numpy as np
import torch

from hrmc.bench import BenchReport, Row, machine, time_runs, versions
from hrmc.bench.roofline import flops_per_step, matmul_peak
from hrmc.hrm_ref import HRM, Batch, build_preset, random_batch
from hrmc.hrm_ref.act import Carry, batch_size, initial_carry, resolve_budget, run, step

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
PEAK_SIZE = 8192


def fixed_budget(model: HRM, batch: Batch, policy: str, budget: int) -> dict[str, torch.Tensor]:
    """`budget` ACT steps with no host sync; the last step's outputs and the final carry."""
    carry: Carry = initial_carry(model, batch)
    for _ in range(budget):
        carry, outputs = step(model, carry, batch, policy, budget)
    return outputs | {"z_H": carry.z_H, "steps": carry.steps}


def capture(function: Callable[[], dict[str, torch.Tensor]]) -> tuple[Callable[[], None], dict[str, torch.Tensor]]:
    """`function` captured as a CUDA graph: (replay, the static outputs each replay overwrites)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream, as torch's graph docs ask
        for _ in range(2):
            function()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = function()
    return graph.replay, outputs


def time_dtype(model: HRM, label: str, batch: Batch, budget: int, runs: int, compile_step: bool, peak: float,
               drift: dict[str, float], progress: Callable[[str], None]) -> list[Row]:
    """The rows of one forward dtype; each replayed row's drift from eager goes into `drift`."""
    dtype_name = model.config.forward_dtype
    size = batch_size(batch)
    per_step = flops_per_step(model.config, size, model.inner.positions(batch))
    eager_logits = run(model, batch, "max-steps", budget)["logits"][-1]
    candidates: dict[str, Callable[[], object]] = {"torch-eager": lambda: run(model, batch, "max-steps", budget)}
    replayed = {}
    candidates["torch-graph"], replayed["torch-graph"] = capture(lambda: fixed_budget(model, batch, "max-steps", budget))
    if compile_step:
        progress(f"compiling one ACT step ({dtype_name})")
        compiled = model.twin(model.config).to("cuda")
        compiled.inner = torch.compile(compiled.inner, fullgraph=True)
        candidates["torch-compile-graph"], replayed["torch-compile-graph"] = capture(
            lambda: fixed_budget(compiled, batch, "max-steps", budget))
    for name, outputs in replayed.items():
        candidates[name]()
        drift[f"{name}/{dtype_name}"] = float((outputs["logits"].float() - eager_logits.float()).abs().max())
    rows = []
    for name, function in candidates.items():
        progress(f"timing {name} ({dtype_name}): {runs} whole inferences")
        times = np.array(time_runs(function, runs, finish=torch.cuda.synchronize))  # to the last kernel's end
        median = float(np.median(times))
        gflops = budget * per_step / median / 1e9
        rows.append(Row(name, label, size, round(median * 1e3, 3),
                        round(float(np.percentile(times, 90)) * 1e3, 3), round(float(times.min()) * 1e3, 3),
                        runs, budget, round(gflops, 1), round(gflops / peak, 4), dtype_name))
    return rows


@torch.no_grad()
def cuda_bench(preset: str, size: int, budget: int | None, *, runs: int = 20, compile_step: bool = False,
               dtypes: tuple[str, ...] = tuple(DTYPES), progress: Callable[[str], None] = lambda _: None) -> BenchReport:
    if not torch.cuda.is_available():
        raise click.UsageError("no CUDA device: bench.cuda needs one (the CPU matrix is `hrmc bench`)")
    rows, peaks, drift = [], {}, {}
    for dtype_name in dtypes:
        model = build_preset(preset, forward_dtype=dtype_name).to("cuda")
        batch = {name: value.to("cuda") for name, value in random_batch(model.config, size, seed=0).items()}
        progress(f"measuring the {dtype_name} matmul peak")
        peaks[dtype_name] = round(matmul_peak(PEAK_SIZE, 2.0, "cuda", DTYPES[dtype_name]), 1)
        rows += time_dtype(model, f"preset:{preset}", batch, resolve_budget(model, "max-steps", budget), runs,
                           compile_step, peaks[dtype_name], drift, progress)
    return BenchReport(machine() | {"gpu": torch.cuda.get_device_name()}, versions(), peaks[dtypes[0]], rows,
                       extra={"matmul_peak_gflops": peaks, "max_abs_diff_vs_eager": drift})


def format_cuda(report: BenchReport) -> str:
    peaks = ", ".join(f"{dtype} {value:,.0f}" for dtype, value in report.extra["matmul_peak_gflops"].items())
    lines = [f"{report.machine['gpu']}; matmul peak GFLOP/s ({PEAK_SIZE}³, measured now): {peaks}",
             f"{'executor':<22}{'dtype':<10}{'batch':>6}{'p50 ms':>10}{'p90 ms':>10}{'min ms':>10}{'runs':>6}"
             f"{'steps':>7}{'GFLOP/s':>10}{'of peak':>9}"]
    for row in report.rows:
        lines.append(f"{row.executor:<22}{row.dtype:<10}{row.batch:>6}{row.p50_ms:>10.2f}{row.p90_ms:>10.2f}"
                     f"{row.min_ms:>10.2f}{row.runs:>6}{row.steps:>7}{row.gflops:>10.1f}{row.of_peak:>9.1%}")
    eager = {row.dtype: row.p50_ms for row in report.rows if row.executor == "torch-eager"}
    for row in report.rows:
        if row.executor != "torch-eager":
            versus = [dtype for dtype in dict.fromkeys((row.dtype, "float32")) if dtype in eager]
            lines.append(f"{row.executor} {row.dtype}: "
                         + ", ".join(f"{eager[dtype] / row.p50_ms:.1f}× eager {dtype}" for dtype in versus))
    lines += [f"final logits, max |replayed − eager|: {name} {diff:.3g}"
              for name, diff in report.extra["max_abs_diff_vs_eager"].items()]
    return "\n".join(lines)


@click.command()
@click.option("--preset", default="sudoku", show_default=True)
@click.option("--batch", "batch_size", type=int, default=1, show_default=True)
@click.option("--budget", type=int, help="ACT steps (default: the preset's halt_max_steps).")
@click.option("--runs", type=int, default=20, show_default=True)
@click.option("--compile", "compile_step", is_flag=True, help="Add torch.compile'd steps under a CUDA graph.")
@click.option("--json", "as_json", is_flag=True)
def main(preset, batch_size, budget, runs, compile_step, as_json) -> None:
    """Time torch eager vs CUDA-graph replay on this machine's GPU."""
    report = cuda_bench(preset, batch_size, budget, runs=runs, compile_step=compile_step,
                        progress=lambda message: click.echo(message, err=True))
    click.echo(json.dumps(report.to_dict()) if as_json else format_cuda(report))


if __name__ == "__main__":
    main()
