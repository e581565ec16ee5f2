"""Stage 6 of the pipeline: latency of every executor, side by side, with a FLOP-based roofline.

Entry point: `run_bench(model, batch, executors, …) -> BenchReport`, which `hrmc bench` prints and
`bench/test_latency.py` (pytest-benchmark, `pytest --benchmark-only`) mirrors. Each executor is
prepared once (export, lowering, compilation are not timed); then its whole inference is timed
`runs` times. GFLOP/s divide the matmul FLOPs of the steps actually taken by the median time,
and are set against this machine's float32 matmul peak, measured in the same run.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from hrmc.bench.roofline import flops_per_step, matmul_peak
from hrmc.hrm_ref import HRM, Batch
from hrmc.hrm_ref.act import batch_size
from hrmc.parity.executors import make_executor


@dataclass
class Row:
    executor: str
    preset: str
    batch: int
    p50_ms: float
    p90_ms: float
    min_ms: float
    runs: int
    steps: int  # ACT steps the inference took
    gflops: float  # achieved, at the median
    of_peak: float  # achieved / measured matmul peak
    dtype: str = "float32"  # the forward dtype


@dataclass
class BenchReport:
    machine: dict
    versions: dict
    peak_gflops: float
    rows: list[Row] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # what a backend adds (bench.cuda: per-dtype peaks, drift)

    def to_dict(self) -> dict:
        return asdict(self)


def machine() -> dict:
    return {"system": platform.system(), "machine": platform.machine(), "processor": platform.processor(),
            "cpus": os.cpu_count()}


def versions() -> dict:
    """Installed versions, read from the distributions' metadata: importing coremltools only for its
    version would print its macOS-only warnings into every report."""
    found = {}
    for name in ("torch", "onnxruntime", "onnx", "mlx", "coremltools", "numpy"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def time_runs(function: Callable[[], object], runs: int, finish: Callable[[], object] = lambda: None) -> list[float]:
    """Seconds per call, after one untimed warm-up call; `finish` waits for asynchronous work (a GPU's)."""
    function()
    finish()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        finish()
        times.append(time.perf_counter() - started)
    return times


def run_bench(model: HRM, batch: Batch, executors: list[str], *, policy: str, budget: int | None, preset: str,
              runs: int = 5, onnx_model: str | None = None, chunk: int | None = None,
              progress: Callable[[str], None] = lambda _: None) -> BenchReport:
    progress("measuring the float32 matmul peak")
    report = BenchReport(machine(), versions(), round(matmul_peak(), 1))
    size = batch_size(batch)
    per_step = flops_per_step(model.config, size, model.inner.positions(batch))
    for name in executors:
        executor = make_executor(name, onnx_model=onnx_model, chunk=chunk)
        progress(f"preparing {name}")
        executor.prepare(model, policy, budget, batch)
        steps = int(executor.run(batch)["steps"].shape[0])
        progress(f"timing {name}: {runs} runs of the whole inference")
        times = np.array(time_runs(lambda: executor.run(batch), runs))
        median = float(np.median(times))
        gflops = steps * per_step / median / 1e9
        report.rows.append(Row(name, preset, size, round(median * 1e3, 2), round(float(np.percentile(times, 90)) * 1e3, 2),
                               round(float(times.min()) * 1e3, 2), runs, steps, round(gflops, 2),
                               round(gflops / report.peak_gflops, 3)))
    return report


def format_bench(report: BenchReport) -> str:
    lines = [f"{report.machine['cpus']} CPUs, {report.machine['machine']}; float32 matmul peak "
             f"{report.peak_gflops:.1f} GFLOP/s (measured now)",
             f"{'executor':<16}{'model':<14}{'batch':>6}{'p50 ms':>10}{'p90 ms':>10}{'min ms':>10}{'runs':>6}"
             f"{'steps':>7}{'GFLOP/s':>10}{'of peak':>9}"]
    for row in report.rows:
        lines.append(f"{row.executor:<16}{row.preset:<14}{row.batch:>6}{row.p50_ms:>10.2f}{row.p90_ms:>10.2f}"
                     f"{row.min_ms:>10.2f}{row.runs:>6}{row.steps:>7}{row.gflops:>10.2f}{row.of_peak:>9.1%}")
    if any(row.executor.startswith("mlx") for row in report.rows) and report.machine["system"] == "Linux":
        lines.append("note: MLX on Linux uses a reference BLAS: correctness only, not a speed figure")
    return "\n".join(lines)


__all__ = ["BenchReport", "Row", "flops_per_step", "format_bench", "matmul_peak", "run_bench"]
