"""Running a saved Core ML package: `predict` on macOS, the MIL replay elsewhere.

On Linux `predict()` does not exist, so a package's *saved* MIL program is read back and every op
is rebuilt from numpy constants, so that coremltools' own `value_inference` computes it
(`FALLBACK` covers ops without one). That checks the lowering against MIL's reference semantics,
not Core ML's runtime kernels: `runs_with()` says which of the two ran, for every report.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from hrmc.hrm_ref.compression import Compressed
from hrmc.targets.coreml._coremltools import Function, ct, iOS18_compression, mb
from hrmc.targets.coreml.lowering import DECOMPRESSING, stored_compressed
from hrmc.targets.coreml.ops import mil_array
from hrmc.targets.coreml.package import default_function, read_package

LABEL = ("MIL reference semantics (coremltools value_inference replay on Linux, float16 matmuls summed and "
         "layer_norm computed in float32; not Core ML's runtime kernels)")

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


def _matmul(x: np.ndarray, y: np.ndarray, transpose_x: bool = False, transpose_y: bool = False) -> np.ndarray:
    """MIL's matmul. numpy multiplies float16 operands one output element at a time, adding in float32
    and rounding once (1.4 s for one projection of sudoku): the same float32 sums through BLAS, rounded
    once, take 0.05 s. Only the order of the float32 additions differs (one float16 ulp on 0.06 % of
    the elements), as it does between any two kernels."""
    x, y = (np.swapaxes(a, -1, -2) if flag else a for a, flag in ((x, transpose_x), (y, transpose_y)))
    if x.dtype == np.float16 and y.dtype == np.float16:
        return np.matmul(x.astype(np.float32), y.astype(np.float32)).astype(np.float16)
    return np.matmul(x, y)


def _layer_norm(x: np.ndarray, axes, epsilon=1e-5) -> np.ndarray:
    """MIL's layer_norm as the ANE's kernel is reported to compute it, without overflow (ANEMLL,
    apple/coremltools#2585): here in float32, rounded once to x's type. coremltools' value_inference
    squares float16 in float16, which overflows from |x| = 256, and returns float64. (The lowering
    gives it no gamma or beta.)"""
    wide = x.astype(np.float32)
    axes = tuple(int(axis) for axis in np.atleast_1d(axes))
    centred = wide - wide.mean(axis=axes, keepdims=True)
    normed = centred / np.sqrt(np.mean(np.square(centred), axis=axes, keepdims=True) + np.float32(epsilon))
    return normed.astype(x.dtype)


def _decompressed(op_type: str) -> Callable[..., np.ndarray]:
    """A constexpr dequantisation op (compressed weights) as MIL defines it: coremltools' own `decompress` of the
    op (its value_inference is left to Core ML's load time), not hrmc's, whose compression the replay checks."""
    decompress = getattr(iOS18_compression, op_type).decompress
    if op_type == "constexpr_lut_to_dense":
        return lambda indices, lut, vector_axis=None: decompress(indices, lut, vector_axis)
    return lambda data, scale, offset=None: decompress(data, scale, offset)


FALLBACK: dict[str, Callable[..., np.ndarray]] = {
    "silu": lambda x: x / (1 + np.exp(-x)),  # MIL's silu has no value_inference
    "matmul": _matmul,
    "layer_norm": _layer_norm,
} | {op_type: _decompressed(op_type) for op_type in DECOMPRESSING}


def saved_program(package: str | Path, function: str | None = None) -> Function:
    """One function (by default the default one) of the MIL program a saved package holds, read back
    from its files."""
    spec, program = _saved(Path(package).resolve(), _stamp(Path(package)))
    return program.functions[function or default_function(spec)]


def program_constants(package: str | Path) -> Iterator[tuple[str, np.ndarray | Compressed]]:
    """Every array constant of every function of a saved package's MIL program, by function and name: a
    compressed weight (a constexpr dequantisation op) as one `Compressed`, its own constants not apart."""
    _, program = _saved(Path(package).resolve(), _stamp(Path(package)))
    for name, function in program.functions.items():
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
    from coremltools.converters.mil.frontend.milproto.load import load as load_milproto

    spec, weights = read_package(package)
    return spec, load_milproto(spec, spec.specificationVersion, str(weights))


Observe = Callable[[object, list[np.ndarray]], None]  # called with each computed op and its results


def replay(main: Function, feed: dict[str, np.ndarray], observe: Observe | None = None,
           float32: bool = False) -> dict[str, np.ndarray]:
    """Run a saved program's main function op by op with numpy values (MIL reference semantics).

    `observe(op, results)` sees every op but constants. `float32`: a float16 program computed in
    float32 (its constants, inputs and casts widened), for the range analysis: the values float16
    would have to hold, not float16's own.

    Each value is dropped after its last reader, and each op is built in a scratch function of its
    own: a whole-inference package holds every step's activations, and keeping them all ran trm-maze
    (900 positions) out of 24 GiB."""
    with np.errstate(all="ignore"):  # float16 overflows to inf, as the ANE's kernels do: the range report says so
        return _replay(main, feed, observe, float32)


def _replay(main: Function, feed: dict[str, np.ndarray], observe: Observe | None, float32: bool) -> dict[str, np.ndarray]:
    widen = _widen if float32 else (lambda value: value)
    values = {name: widen(mil_array(feed[name])) for name in main.inputs}
    last_reader = {name: index for index, op in enumerate(main.operations) for name in _input_names(op)}
    kept = {var.name for var in main.outputs}
    for index, op in enumerate(main.operations):
        if op.op_type == "const":
            values[op.outputs[0].name] = widen(op.outputs[0].val)
            continue
        arguments = {name: widen(_replay_value(var, values)) for name, var in op.inputs.items()}
        if float32 and op.op_type == "cast" and arguments["dtype"] == "fp16":
            arguments["dtype"] = "fp32"
        if op.op_type in FALLBACK:
            results = [FALLBACK[op.op_type](**arguments)]
        else:
            # A scratch function per op: every op built in one would stay in it, with its value.
            with Function({}, opset_version=main.opset_version):
                built = getattr(mb, op.op_type)(**arguments)
                results = [var.val for var in (built if isinstance(built, (list, tuple)) else [built])]
        results = [np.asarray(result) for result in results]
        if observe is not None:
            observe(op, results)
        for output, result in zip(op.outputs, results):
            values[output.name] = result
        for name in _input_names(op):
            if last_reader[name] == index and name not in kept:
                values.pop(name, None)
    return {var.name: values[var.name] for var in main.outputs}


def replay_kept(package: Path, function: str, feed: dict[str, np.ndarray], kept: set[str]) -> dict[str, np.ndarray]:
    """One function of a saved package replayed on `feed` (`replay`), the values named in `kept` returned
    as computed (on any machine: Core ML's predict exposes no intermediate values)."""
    values = {}

    def keep(op, results):
        values.update((var.name, result) for var, result in zip(op.outputs, results) if var.name in kept)

    replay(saved_program(package, function), feed, observe=keep)
    return values


def _widen(value):
    """float16 arrays and scalars as float32; anything else (lists of values too) as it is."""
    if isinstance(value, (list, tuple)):
        return [_widen(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic)) and value.dtype == np.float16:
        return value.astype(np.float32)
    return value


def _input_names(op) -> set[str]:
    """The names of the values an op reads (inputs may be lists of values)."""
    names = set()
    for var in op.inputs.values():
        names.update(v.name for v in (var if isinstance(var, (list, tuple)) else [var]))
    return names


def _replay_value(var, values):
    if isinstance(var, (list, tuple)):
        return [_replay_value(v, values) for v in var]
    value = values[var.name] if var.name in values else var.val  # strings (modes) stay Python strings
    # numpy scalars as Python scalars: MIL's value_inference passes them to numpy as `keepdims` and the like
    scalar = isinstance(value, (np.generic, np.ndarray)) and np.ndim(value) == 0 and np.asarray(value).dtype.kind in "biu"
    return value.item() if scalar else value
