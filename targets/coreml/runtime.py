"""Running a saved Core ML package: `predict` on macOS, the MIL replay elsewhere.

On Linux `predict()` does not exist, so a package's *saved* MIL program is read back and run op by
op by the MIL interpreter (interpreter.py: what coremltools' `value_inference` computes, per op a
numpy kernel). That checks the lowering against MIL's reference semantics, not Core ML's runtime
kernels: `runs_with()` says which of the two ran, for every report.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from hrmc.hrm_ref.compression import Compressed
from hrmc.targets.coreml._coremltools import ct
from hrmc.targets.coreml.interpreter import Observe, interpret
from hrmc.targets.coreml.lowering import DECOMPRESSING, stored_compressed
from hrmc.targets.coreml.package import default_function, read_package
from hrmc.targets.coreml.program import SavedFunction, read_program

LABEL = ("MIL reference semantics (the MIL program interpreted on Linux as coremltools' value_inference computes "
         "it, float16 matmuls summed and layer_norm computed in float32; not Core ML's runtime kernels)")

Predict = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def load(package: Path, function: str, compute_units) -> Predict:
    """One function of a saved package as a function of its inputs: Core ML's predict on macOS, the
    replay of its MIL program elsewhere. Load once, call many times."""
    if platform.system() == "Darwin":
        named = None if function == "main" else function  # 0.1's single-function packages
        return ct.models.MLModel(str(package), compute_units=compute_units, function_name=named).predict
    return functools.partial(replay, saved_program(package, function))


def runs_with() -> str:
    """What computes a package's outputs on this machine, for reports."""
    return "Core ML predict" if platform.system() == "Darwin" else LABEL


def saved_program(package: str | Path, function: str | None = None) -> SavedFunction:
    """One function (by default the default one) of the MIL program a saved package holds, read back
    from its files."""
    spec, program = _saved(Path(package).resolve(), _stamp(Path(package)))
    return program[function or default_function(spec)]


def program_constants(package: str | Path) -> Iterator[tuple[str, np.ndarray | Compressed]]:
    """Every array constant of every function of a saved package's MIL program, by function and name: a
    compressed weight (a constexpr dequantisation op) as one `Compressed`, its own constants not apart."""
    _, program = _saved(Path(package).resolve(), _stamp(Path(package)))
    for name, function in program.items():
        parts = {var.name for op in function.operations if op.op_type in DECOMPRESSING for var in op.inputs.values()}
        for op in function.operations:
            if op.op_type in DECOMPRESSING:
                yield f"{name}/{op.outputs[0].name}", stored_compressed(op)
            elif op.op_type == "const" and isinstance(op.outputs[0].val, np.ndarray) and op.outputs[0].name not in parts:
                yield f"{name}/{op.outputs[0].name}", op.outputs[0].val


def _stamp(package: Path) -> tuple:
    """What changes when a package's files do: their names, sizes and times."""
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(package.rglob("*")) if p.is_file())


@functools.lru_cache(maxsize=2)
def _saved(package: Path, stamp: tuple):
    """A package's spec and whole MIL program, read once: the program holds every function and all the
    weights, and the step, the whole inference and a trace each read one function of it."""
    spec, weights = read_package(package)
    return spec, read_program(spec, weights)


def replay(main: SavedFunction, feed: dict[str, np.ndarray], observe: Observe | None = None,
           float32: bool = False) -> dict[str, np.ndarray]:
    """Run a saved program's function op by op with numpy values (MIL reference semantics): the
    interpreter (interpreter.py), whose `observe` and `float32` this passes on."""
    return interpret(main, feed, observe, float32)


def replay_kept(package: Path, function: str, feed: dict[str, np.ndarray], kept: set[str]) -> dict[str, np.ndarray]:
    """One function of a saved package replayed on `feed` (`replay`), the values named in `kept` returned
    as computed (on any machine: Core ML's predict exposes no intermediate values)."""
    values = {}

    def keep(op, results):
        values.update((var.name, result) for var, result in zip(op.outputs, results) if var.name in kept)

    replay(saved_program(package, function), feed, observe=keep)
    return values
