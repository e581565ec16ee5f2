"""The onnxruntime backend: runs hrmc's ONNX models (CPU; CUDA where present).

Executors:
- `onnx`: the structured graphs of `hrmc export` (ACT and cycles as Loops).
- `static`: the same after the `static` pass pipeline (no Loop or If). Its step model is
  chunk-budget 1.
- `chunked`: a k-step static graph with the carry in and out, driven by a host loop that stops
  once every sample has halted.

Each runs either a shipped artifact (`--artifact`: exactly those files, checked against their
recorded parts and the model given) or graphs made afresh from `--onnx-model` or a fresh export.
The pass pipeline's graphs are this target's output as they are, copied out of the cache
(passes.cached_lowering): it has no op table and no lowering of its own.

    package.py    a shipped ONNX artifact's graphs by role, verified
    runtime.py    onnxruntime sessions
    executors.py  OnnxExecutor, StaticExecutor, ChunkedExecutor: onnx, static, chunked
"""

from __future__ import annotations

from pathlib import Path

from hrmc.files import check_output
from hrmc.lowering.export import read_record
from hrmc.passes import copy_lowered, output_paths
from hrmc.targets import LowerOptions, Target
from hrmc.targets.executor import Executor
from hrmc.targets.onnx.executors import ChunkedExecutor, OnnxExecutor, StaticExecutor
from hrmc.targets.onnx.runtime import session, session_options


def executor(target: Target, name: str, onnx_model: str | Path | None, chunk: int | None,
             artifact: str | Path | None) -> Executor:
    return {"onnx": OnnxExecutor, "static": StaticExecutor, "chunked": ChunkedExecutor}[name](target, onnx_model, chunk,
                                                                                           artifact)


def lower(target: Target, graphs: dict[str, Path], out: str | Path, options: LowerOptions) -> list[Path]:
    """The pass pipeline's graphs are this target's output, written as `out` and its siblings."""
    return list(copy_lowered(graphs, out).values())


def check_out(target: Target, out: str | Path, chunk: int | None, force: bool) -> list[Path]:
    """The graphs `lower` will write: OUT, OUT.step.onnx and OUT.chunkK.onnx."""
    return [check_output(path, target.suffix) for path in output_paths(out, chunk).values()]


__all__ = ["ChunkedExecutor", "OnnxExecutor", "StaticExecutor", "check_out", "executor", "lower", "read_record",
           "session", "session_options"]
