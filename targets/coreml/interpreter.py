"""The MIL interpreter: one function of a saved Core ML program run op by op with numpy kernels.

The program is walked once into a plan (each op's kernel, where each argument comes from, which values
die after it); each call then runs the plan. A kernel computes what the op's `value_inference` in
coremltools computes, and its result is rounded to the op's declared output type, as coremltools
stores an inferred value: float16 ops round at their output. Three ops have no faithful
`value_inference` and are computed as Core ML's kernels are documented to (`matmul`, `layer_norm`:
summed in float32, rounded once; `silu`, which has none). Compressed weights are expanded by
coremltools' own `decompress`.

Rebuilding each op through coremltools' builder computes the same values (the slow reference,
tests/targets/coreml_builder_replay.py, bit for bit on every flavour and weight storage), but pays type
and value inference per op: 13.8 s of tiny's 21 s gate went there.
"""

from __future__ import annotations

import contextlib
import functools
import operator
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from hrmc.errors import InputError
from hrmc.targets.coreml._coremltools import Function, compute_gather, iOS18_compression, mil_types
from hrmc.targets.coreml.lowering import DECOMPRESSING
from hrmc.targets.coreml.ops import mil_array
from hrmc.targets.coreml.program import SavedFunction

Observe = Callable[[object, list[np.ndarray]], None]  # called with each computed op and its results

NUMPY_TYPES = {"fp16": np.float16, "fp32": np.float32, "int32": np.int32, "bool": np.bool_}


def _matmul(x, y, transpose_x=False, transpose_y=False):
    """MIL's matmul. numpy multiplies float16 operands one output element at a time, adding in float32
    and rounding once (1.4 s for one projection of sudoku): the same float32 sums through BLAS, rounded
    once to the declared float16, take 0.05 s. Only the order of the float32 additions differs (one
    float16 ulp on 0.06 % of the elements), as it does between any two kernels. A float16 weight comes
    widened once by the plan (`_WIDENED_ONCE`): an operand already float32 is not copied again."""
    x, y = (np.swapaxes(a, -1, -2) if flag else a for a, flag in ((x, transpose_x), (y, transpose_y)))
    if np.float16 in (x.dtype, y.dtype):
        return np.matmul(_wide(x), _wide(y))
    return np.matmul(x, y)


def _layer_norm(x, axes, epsilon=1e-5, gamma=None, beta=None):
    """MIL's layer_norm as the ANE's kernel is reported to compute it, without overflow (ANEMLL,
    apple/coremltools#2585): here in float32, rounded once to x's type. coremltools' value_inference
    squares float16 in float16, which overflows from |x| = 256, and returns float64. (The lowering
    gives it no gamma or beta.)"""
    wide = x.astype(np.float32)
    axes = tuple(int(axis) for axis in np.atleast_1d(axes))
    centred = wide - wide.mean(axis=axes, keepdims=True)
    normed = centred / np.sqrt(np.mean(np.square(centred), axis=axes, keepdims=True) + np.float32(epsilon))
    return normed.astype(x.dtype)


def _softmax(x, axis):
    """As coremltools' value_inference computes it, in x's type. In float16 the maximum (exact either way), the
    subtraction and the division in float32, rounded once (the same bits, `_widening`); the exponential (looked
    up, `_elementwise`) and the sum (`_float16_sum`) as numpy computes them in float16."""
    axis = int(axis)
    if x.dtype != np.float16:
        shifted = np.exp(x - np.max(x, axis=axis, keepdims=True))
        return shifted / np.sum(shifted, axis=axis, keepdims=True)
    wide = _wide(x)
    exponentials = _wide(_looked_up(np.exp, _half(wide - wide.max(axis=axis, keepdims=True))))
    return exponentials / _wide(_float16_sum(exponentials, axis))


def _float16_sum(widened: np.ndarray, axis: int) -> np.ndarray:
    """numpy's sum of float16 values (given widened to float32), with its dimension kept. Along the last axis numpy
    adds float16 in float32, pairwise as it adds float32, and rounds once: the float32 sum rounded is its bits,
    10 times faster (trm-maze's attention)."""
    if axis in (-1, widened.ndim - 1):
        return _half(np.sum(widened, axis=-1, keepdims=True))
    return np.sum(_half(widened), axis=axis, keepdims=True)


def _reduce(reduce: Callable) -> Callable:
    def kernel(x, axes=None, keep_dims=False):
        axes = None if axes is None else tuple(int(axis) for axis in np.atleast_1d(axes))
        return reduce(x, axis=axes, keepdims=bool(keep_dims)).astype(x.dtype)
    return kernel


def _argmax(x, axis=-1, keep_dims=False, output_dtype="int32"):
    return np.argmax(x, axis=int(axis), keepdims=bool(keep_dims))


def _expand_dims(x, axes):
    rank = x.ndim + len(axes)
    shape = list(x.shape)
    for axis in sorted(rank + axis if axis < 0 else axis for axis in axes):
        shape.insert(axis, 1)
    return np.reshape(x, shape)


def _squeeze(x, axes=None):
    squeezed = np.squeeze(x, axis=None if axes is None else tuple(int(axis) for axis in axes))
    return squeezed if squeezed.shape != () else x.reshape(-1)[0]


def _slice_by_index(x, begin, end, stride=None, begin_mask=None, end_mask=None, squeeze_mask=None):
    """As coremltools solves it: a squeezed axis takes the one element at its begin."""
    squeezed = [bool(squeeze_mask is not None and squeeze_mask[axis]) for axis in range(x.ndim)]
    slices = tuple(slice(None if begin_mask is not None and begin_mask[axis] else int(begin[axis]),
                         None if squeezed[axis] or end_mask is not None and end_mask[axis] else int(end[axis]),
                         np.iinfo(np.int32).max if squeezed[axis] else 1 if stride is None else int(stride[axis]))
                   for axis in range(x.ndim))
    return np.squeeze(x[slices], axis=tuple(axis for axis in range(x.ndim) if squeezed[axis]))


def _slice_by_size(x, begin, size):
    slices = []
    for axis in range(x.ndim):
        start = int(begin[axis]) + (x.shape[axis] if begin[axis] < 0 else 0)
        slices.append(slice(start, start + int(size[axis])) if size[axis] > 0 else slice(start, None))
    return x[tuple(slices)]


def _split(x, axis, num_splits=None, split_sizes=None):
    axis = int(axis)
    sizes = split_sizes if split_sizes is not None else [x.shape[axis] // int(num_splits)] * int(num_splits)
    return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis)) if len(sizes) > 1 else (x,)


def _pad(x, pad, mode="constant", constant_val=0.0):
    pairs = np.zeros(2 * x.ndim, np.int32)
    pairs[-len(pad):] = pad
    pairs = pairs.reshape(-1, 2)
    if mode == "constant":
        return np.pad(x, pairs, "constant", constant_values=constant_val)
    return np.pad(x, pairs, "edge" if mode == "replicate" else mode)


def _cumsum(x, axis=0, exclusive=False, reverse=False):
    """MIL's cumsum. (coremltools' value_inference fails for `exclusive`; this computes what the op
    defines: the sum of the elements before each.)"""
    axis = int(axis)
    data = np.flip(x, axis=axis) if reverse else x
    summed = np.cumsum(data, axis=axis)
    if exclusive:
        summed = np.concatenate([np.zeros_like(np.take(summed, [0], axis=axis)),
                                 np.take(summed, range(summed.shape[axis] - 1), axis=axis)], axis=axis)
    return np.flip(summed, axis=axis) if reverse else summed


def _gather(x, indices, axis=0, batch_dims=0, validate_indices=False):
    return compute_gather(params=x, indices=indices, axis=int(axis), batch_dims=int(batch_dims))


def _decompressed(op_type: str) -> Callable[..., np.ndarray]:
    """A constexpr dequantisation op (compressed weights) as MIL defines it: coremltools' own `decompress` of the
    op (its value_inference is left to Core ML's load time), not hrmc's, whose compression the replay checks."""
    decompress = getattr(iOS18_compression, op_type).decompress
    if op_type == "constexpr_lut_to_dense":
        return lambda indices, lut, vector_axis=None: decompress(indices, lut, vector_axis)
    return lambda data, scale, offset=None: decompress(data, scale, offset)


def _binary(function: Callable) -> Callable:
    return lambda x, y: function(x, y)


def _widening(function: Callable) -> Callable:
    """+, −, ×, ÷ of float16 values as numpy computes them (each operand widened to float32, the result rounded
    to float16 once, which is the correctly rounded float16 result: float32's 24 bits hold 2 × 11 + 2), the
    rounding left to `_as_declared`: numpy's own float16 loop rounds a float16 subnormal 100 times slower."""
    def kernel(x, y):
        if np.float16 in (np.result_type(x), np.result_type(y)):
            return function(_wide(x), _wide(y))
        return function(x, y)
    return kernel


def _wide(a) -> np.ndarray:
    """float16 values as float32 (exactly), through torch where numpy is slow (float16 subnormals)."""
    a = np.asarray(a)
    if a.dtype == np.float16 and a.ndim:
        return torch.from_numpy(np.ascontiguousarray(a)).float().numpy()
    return a.astype(np.float32, copy=False)


def _half(a: np.ndarray) -> np.ndarray:
    """float32 values rounded to float16, to nearest even as numpy's cast, through torch (F16C): the same bits
    (30 million random float32 patterns and every value near float16's range compared), without numpy's slow
    path for float16 subnormals."""
    if a.ndim:
        return torch.from_numpy(np.ascontiguousarray(a)).to(torch.float16).numpy()
    return a.astype(np.float16)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _silu(x):
    return x / (1 + np.exp(-x))


def _elementwise(function: Callable) -> Callable:
    """A function of each element, which in float16 is a function of 65,536 bit patterns: computed for all of them
    once, then looked up. The same bits as numpy computing it on a contiguous array, the loop coremltools'
    value_inference takes (numpy's scalar loop, for one element or a strided array, differs from its SIMD loop by
    one ulp on a few patterns on AVX-512 machines: exp 4 of 65,536, sin and cos 2), 27 times faster for the exponentials of trm-maze's attention (8 × 916² per layer application)."""
    return lambda x: _looked_up(function, x)


def _looked_up(function: Callable, x) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype == np.float16 and x.ndim:
        return _float16_table(function)[x.view(np.uint16)]
    return function(x)


@functools.cache
def _float16_table(function: Callable) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.asarray(function(FLOAT16_PATTERNS), np.float16)


FLOAT16_PATTERNS = np.arange(2 ** 16, dtype=np.uint16).view(np.float16)  # every float16, NaNs too


# Each MIL op hrmc's lowering emits, as a numpy kernel of the op's named inputs.
KERNELS: dict[str, Callable[..., Any]] = {
    **{name: _binary(function) for name, function in {
        "pow": operator.pow, "mod": operator.mod, "floor_div": operator.floordiv,
        "maximum": np.maximum, "minimum": np.minimum, "equal": np.equal, "not_equal": operator.ne,
        "greater": operator.gt, "greater_equal": operator.ge, "less": operator.lt, "less_equal": operator.le,
        "logical_and": np.logical_and, "logical_or": np.logical_or}.items()},
    **{name: _widening(function) for name, function in {
        "add": operator.add, "sub": operator.sub, "mul": operator.mul, "real_div": operator.truediv}.items()},
    **{name: _elementwise(function) for name, function in {
        "abs": np.abs, "sign": np.sign, "sqrt": np.sqrt, "exp": np.exp, "tanh": np.tanh, "sin": np.sin,
        "cos": np.cos, "floor": np.floor, "sigmoid": _sigmoid, "silu": _silu}.items()},
    "logical_not": lambda x: np.logical_not(x),
    "inverse": lambda x, epsilon=1e-4: np.reciprocal(x + epsilon),
    "identity": lambda x: x,
    "cast": lambda x, dtype: x.astype(NUMPY_TYPES[dtype]),
    "reshape": lambda x, shape: np.reshape(x, [int(d) for d in shape]),
    "expand_dims": _expand_dims, "squeeze": _squeeze,
    "transpose": lambda x, perm: np.transpose(x, axes=perm),
    "slice_by_index": _slice_by_index, "slice_by_size": _slice_by_size,
    "split": _split, "concat": lambda values, axis, interleave=False: np.concatenate(values, axis=int(axis)),
    "tile": lambda x, reps: np.tile(x, reps), "pad": _pad, "cumsum": _cumsum,
    "select": lambda cond, a, b: np.where(cond, a, b), "gather": _gather,
    "softmax": _softmax, "matmul": _matmul, "layer_norm": _layer_norm,
    "reduce_mean": _reduce(np.mean), "reduce_sum": _reduce(np.sum), "reduce_max": _reduce(np.max),
    "reduce_min": _reduce(np.min), "reduce_argmax": _argmax,
} | {op_type: _decompressed(op_type) for op_type in DECOMPRESSING}


# Constant float16 operands a kernel would widen to float32 on every call (36 % of sudoku's replay was that
# copy): the plan widens them once. Only where the kernel's result is the same bits either way.
_WIDENED_ONCE = {"matmul": ("x", "y")}


@dataclass(frozen=True)
class Step:
    """One op of the plan: its kernel, its arguments (a value's name, a list of names, or a constant),
    its outputs with their declared types, and the values no op after it reads."""
    op: object
    kernel: Callable[..., Any]
    arguments: dict[str, tuple[str, Any]]  # name -> ("value", name) | ("values", [names]) | ("const", value)
    outputs: tuple[tuple[str, str], ...]  # (name, MIL dtype)
    dead: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    inputs: tuple[str, ...]
    constants: dict[str, Any]  # const ops' values, by name
    steps: tuple[Step, ...]
    outputs: tuple[str, ...]


@functools.lru_cache(maxsize=8)
def plan(function: SavedFunction | Function) -> Plan:
    """Walk a program's function once: constants apart, every other op a `Step`."""
    produced_by_const = {op.outputs[0].name: op.outputs[0].val for op in function.operations if op.op_type == "const"}
    outputs = tuple(var.name for var in function.outputs)
    last_reader: dict[str, int] = {}
    computing = [op for op in function.operations if op.op_type != "const"]
    for index, op in enumerate(computing):
        for name in _input_names(op):
            last_reader[name] = index
    steps, widened = [], {}
    for index, op in enumerate(computing):
        if op.op_type not in KERNELS:
            raise InputError(f"MIL op {op.op_type} ({op.name}): no kernel in hrmc's MIL interpreter (hrmc's lowering "
                             "never writes it)")
        arguments = {name: _argument(var, produced_by_const) for name, var in op.inputs.items()}
        for name in _WIDENED_ONCE.get(op.op_type, ()):
            kind, value = arguments.get(name, (None, None))
            if kind == "const" and getattr(value, "dtype", None) == np.float16:
                if id(value) not in widened:  # a weight read by every unrolled step is widened once
                    widened[id(value)] = value.astype(np.float32)
                arguments[name] = (kind, widened[id(value)])
        dead = tuple(name for name in _input_names(op) if last_reader[name] == index and name not in outputs)
        steps.append(Step(op, KERNELS[op.op_type], arguments,
                          tuple((var.name, _dtype_name(var)) for var in op.outputs), dead))
    return Plan(tuple(function.inputs), produced_by_const, tuple(steps), outputs)


def interpret(function: SavedFunction | Function, feed: dict[str, np.ndarray], observe: Observe | None = None,
              float32: bool = False) -> dict[str, np.ndarray]:
    """Run one function of a saved program (program.py; or a coremltools Function built in memory) on `feed`
    (numpy values by input name).

    `observe(op, results)` sees every op but constants. `float32`: a float16 program computed in float32
    (its constants, inputs and casts widened), for the range analysis: the values float16 would have to
    hold, not float16's own. Each value is dropped after its last reader: a whole-inference function holds
    every step's activations (trm-maze's ran out of 24 GiB when kept)."""
    program = plan(function)
    widen = _widen if float32 else (lambda value: value)
    values = {name: widen(mil_array(feed[name])) for name in program.inputs}
    # float16 overflows to inf, as the ANE's kernels do: the range report says so
    with np.errstate(all="ignore"), _one_torch_thread():
        for step in program.steps:
            arguments = {name: _resolve(kind, source, values, program.constants, widen)
                         for name, (kind, source) in step.arguments.items()}
            if float32 and step.op.op_type == "cast" and arguments["dtype"] == "fp16":
                arguments["dtype"] = "fp32"
            computed = step.kernel(**arguments)
            results = [_as_declared(result, dtype, float32) for result, (_, dtype) in zip(
                computed if isinstance(computed, tuple) else (computed,), step.outputs)]
            if observe is not None:
                observe(step.op, results)
            values.update((name, result) for (name, _), result in zip(step.outputs, results))
            for name in step.dead:
                values.pop(name, None)
    return {name: values[name] if name in values else widen(program.constants[name]) for name in program.outputs}


@contextlib.contextmanager
def _one_torch_thread():
    """torch on one thread while the kernels run: its conversions (`_wide`, `_half`) between numpy's BLAS calls
    are memory-bound, and two thread pools taking turns on two cores spin against each other (trm-maze's step
    19 s with torch's default two threads, 11.6 s with one; a matmul alone is faster on two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _argument(var, constants: dict[str, Any]) -> tuple[str, Any]:
    if isinstance(var, (list, tuple)):
        return ("values", [_argument(v, constants) for v in var])
    if var.name in constants or var.op is None and var.val is not None:
        return ("const", constants.get(var.name, var.val))
    return ("value", var.name)


def _resolve(kind: str, source, values: dict, constants: dict, widen: Callable):
    if kind == "values":
        return [_resolve(k, s, values, constants, widen) for k, s in source]
    if kind == "const":
        return widen(source)
    return values[source]


def _as_declared(result, dtype: str, float32: bool) -> np.ndarray:
    """A kernel's result in the op's declared output type, as coremltools stores an inferred value (float32 to
    float16 by `_half`)."""
    wanted = np.float32 if float32 and dtype == "fp16" else NUMPY_TYPES.get(dtype)
    result = np.asarray(result)
    if wanted is None or result.dtype == wanted:
        return result
    return _half(result) if wanted is np.float16 and result.dtype == np.float32 else result.astype(wanted)


def _dtype_name(var) -> str:
    return mil_types.builtin_to_string(var.dtype)


def _widen(value):
    """float16 arrays (by `_wide`) and scalars as float32; anything else (lists of values too) as it is."""
    if isinstance(value, (list, tuple)):
        return [_widen(v) for v in value]
    if isinstance(value, np.ndarray) and value.dtype == np.float16 and value.ndim:
        return _wide(value)
    if isinstance(value, (np.ndarray, np.generic)) and value.dtype == np.float16:
        return value.astype(np.float32)
    return value


def _input_names(op) -> set[str]:
    """The names of the values an op reads (inputs may be lists of values)."""
    names = set()
    for var in op.inputs.values():
        names.update(v.name for v in (var if isinstance(var, (list, tuple)) else [var]))
    return names
