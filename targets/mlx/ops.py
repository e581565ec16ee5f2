"""The MLX op-mapping table: `OPS` maps each ONNX op (`hrmc.*` for our fused functions) to the line of
MLX (or, for shape arithmetic, numpy) that the lowering's `Emitter` (lowering.py) writes for it.

Every op the `fused` pipeline emits for hrmc's models has an entry (tests/targets/test_registry.py);
a node without one fails at lower time naming the op and the node. The fused `hrmc` functions map
to MLX's fused primitives: `mx.fast.rms_norm`, `mx.fast.scaled_dot_product_attention`, and rope
from the exported cos/sin tables (never `mx.fast.rope`, which recomputes them: docs/design.md §3).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
import onnx_ir as ir

if TYPE_CHECKING:
    from hrmc.targets.mlx.lowering import Emitter

DTYPES = {ir.DataType.FLOAT: "float32", ir.DataType.FLOAT16: "float16", ir.DataType.BFLOAT16: "bfloat16",
          ir.DataType.INT64: "int64", ir.DataType.INT32: "int32", ir.DataType.INT8: "int8",
          ir.DataType.UINT8: "uint8", ir.DataType.UINT32: "uint32", ir.DataType.UINT16: "uint16",
          ir.DataType.INT16: "int16", ir.DataType.BOOL: "bool_"}


def _binary(function: str) -> Callable[[Emitter, ir.Node], str]:
    return lambda e, n: f"{e.ns}.{function}({e.arg(n.inputs[0])}, {e.arg(n.inputs[1])})"


def _unary(function: str) -> Callable[[Emitter, ir.Node], str]:
    return lambda e, n: f"{e.ns}.{function}({e.arg(n.inputs[0])})"


def _reduce(function: str) -> Callable[[Emitter, ir.Node], str]:
    def emit(e: Emitter, n: ir.Node) -> str:
        axes = None if e.optional(n, 1) is None else e.ints(n.inputs[1], "axes")
        if axes is None and e.attr("noop_with_empty_axes", 0):
            return e.arg(n.inputs[0])
        return f"{e.ns}.{function}({e.arg(n.inputs[0])}, axis={axes and tuple(axes)!r}, keepdims={bool(e.attr('keepdims', 1))})"
    return emit


def _slice(e: Emitter, n: ir.Node) -> str:
    slices = e.slice_arguments(n)
    rank = n.inputs[0].shape.rank() if n.inputs[0].shape is not None else None
    if rank is not None:  # count every axis from the front
        slices = [(start, end, axis % rank, step) for start, end, axis, step in slices]
    axes = [axis for _, _, axis, _ in slices]
    if any(a >= 0 for a in axes) and any(a < 0 for a in axes):
        raise e.fail("mixed positive and negative axes on an input of unknown rank")
    negative = all(a < 0 for a in axes)
    width = -min(axes) if negative else max(axes) + 1
    index = [":"] * width
    for start, end, axis, step in slices:
        index[axis] = f"{start}:{'' if end is None else end}" + (f":{step}" if step != 1 else "")
    return f"{e.arg(n.inputs[0])}[{'..., ' if negative else ''}{', '.join(index)}]"


def _reshape(e: Emitter, n: ir.Node) -> str:
    x, target = e.arg(n.inputs[0]), n.inputs[1]
    if target in e.host:
        return f"{e.ns}.reshape({x}, {e.shape(target, 'the shape')})"
    dims = e.ints(target, "the shape")
    if not e.attr("allowzero", 0):  # 0 copies the input's dimension
        return f"{e.ns}.reshape({x}, ({''.join(f'{x}.shape[{i}], ' if d == 0 else f'{d}, ' for i, d in enumerate(dims))}))"
    return f"{e.ns}.reshape({x}, {tuple(dims)!r})"


def _split(e: Emitter, n: ir.Node) -> str:
    axis = e.attr("axis", 0)
    if e.optional(n, 1) is not None:
        sizes = e.ints(n.inputs[1], "split sizes")
        return f"{e.ns}.split({e.arg(n.inputs[0])}, {list(np.cumsum(sizes)[:-1].tolist())!r}, axis={axis})"
    return f"{e.ns}.split({e.arg(n.inputs[0])}, {len(n.outputs)}, axis={axis})"


def _gemm(e: Emitter, n: ir.Node) -> str:
    a, b = e.arg(n.inputs[0]), e.arg(n.inputs[1])
    a, b = (f"{a}.T" if e.attr("transA", 0) else a), (f"{b}.T" if e.attr("transB", 0) else b)
    product = f"{e.ns}.matmul({a}, {b})"
    alpha, beta = e.attr("alpha", 1.0), e.attr("beta", 1.0)
    product = product if alpha == 1.0 else f"{product} * {alpha!r}"
    if e.optional(n, 2) is None:
        return product
    bias = e.arg(n.inputs[2])
    return f"{product} + {bias}" if beta == 1.0 else f"{product} + {beta!r} * {bias}"


def _pad(e: Emitter, n: ir.Node) -> str:
    if e.attr("mode", "constant") != "constant" or e.optional(n, 3) is not None:
        raise e.fail("only constant padding of every axis is mapped")
    pads = e.ints(n.inputs[1], "pads")
    widths = list(zip(pads[: len(pads) // 2], pads[len(pads) // 2:]))
    fill = e.const(n.inputs[2]).item() if e.optional(n, 2) is not None else 0
    return f"{e.ns}.pad({e.arg(n.inputs[0])}, {widths!r}, constant_values={fill!r})"


def _mod(e: Emitter, n: ir.Node) -> str:
    if e.attr("fmod", 0):
        raise e.fail("fmod=1 (C fmod) has no MLX equivalent")
    return _binary("remainder")(e, n)  # ONNX Mod with fmod=0 takes the divisor's sign, as Python's % does


def _cumsum(e: Emitter, n: ir.Node) -> str:
    axis = e.ints(n.inputs[1], "axis")[0]
    return (f"mx.cumsum({e.arg(n.inputs[0])}, axis={axis}, reverse={bool(e.attr('reverse', 0))}, "
            f"inclusive={not e.attr('exclusive', 0)})")


def _constant(e: Emitter, n: ir.Node) -> str:
    value = e.attr("value")
    if value is None:
        raise e.fail("only the `value` form of Constant is mapped")
    array = value.numpy()
    return f'w["{e.weights.key(n.outputs[0].name or "constant", array)}"]'


def _constant_of_shape(e: Emitter, n: ir.Node) -> str:
    value = e.attr("value")
    array = value.numpy() if value is not None else np.zeros(1, np.float32)
    return f"mx.full({e.shape(n.inputs[0], 'the shape')}, {array.item()!r}, dtype=mx.{DTYPES[ir.DataType.from_numpy(array.dtype)]})"


def _shape(e: Emitter, n: ir.Node) -> str:
    start, end = e.attr("start", 0), e.attr("end")
    return f"np.array({e.name(n.inputs[0])}.shape[{start}:{'' if end is None else end}], dtype=np.int64)"


def _expand(e: Emitter, n: ir.Node) -> str:
    x = e.arg(n.inputs[0])
    return f"{e.ns}.broadcast_to({x}, np.broadcast_shapes({x}.shape, {e.shape(n.inputs[1], 'the shape')}))"


def _rope(e: Emitter, n: ir.Node) -> str:
    return f"rope({e.arg(n.inputs[0])}, {e.arg(n.inputs[1])}, {e.arg(n.inputs[2])})"


def _attention(e: Emitter, n: ir.Node) -> str:
    scale = e.const(n.inputs[3])
    if scale is None or scale.size != 1:
        raise e.fail("the attention scale must be a constant scalar")
    q, k, v = (f"{e.arg(value)}.transpose(0, 2, 1, 3)" for value in n.inputs[:3])
    return f"mx.fast.scaled_dot_product_attention({q}, {k}, {v}, scale={float(scale)!r}).transpose(0, 2, 1, 3)"


def _rms_norm(e: Emitter, n: ir.Node) -> str:
    epsilon = e.const(n.inputs[1])
    if epsilon is None or epsilon.size != 1:
        raise e.fail("the epsilon must be a constant scalar")
    return f"mx.fast.rms_norm({e.arg(n.inputs[0])}, None, {float(epsilon)!r})"


# The op-mapping table: every op the `mlx` pipeline emits for hrmc's models.
OPS: dict[str, Callable[[Emitter, ir.Node], str]] = {
    "Add": _binary("add"), "Sub": _binary("subtract"), "Mul": _binary("multiply"), "Div": _binary("divide"),
    "Pow": _binary("power"), "Max": _binary("maximum"), "Min": _binary("minimum"),
    "MatMul": _binary("matmul"), "Equal": _binary("equal"), "Greater": _binary("greater"),
    "GreaterOrEqual": _binary("greater_equal"), "Less": _binary("less"), "LessOrEqual": _binary("less_equal"),
    "And": _binary("logical_and"), "Or": _binary("logical_or"), "Mod": _mod,
    "BitwiseAnd": _binary("bitwise_and"), "BitwiseOr": _binary("bitwise_or"),
    "BitShift": lambda e, n: _binary("left_shift" if e.attr("direction") == "LEFT" else "right_shift")(e, n),
    "CumSum": _cumsum,
    "Not": _unary("logical_not"), "Neg": _unary("negative"), "Sqrt": _unary("sqrt"), "Exp": _unary("exp"),
    "Log": _unary("log"), "Abs": _unary("abs"), "Sin": _unary("sin"), "Cos": _unary("cos"), "Tanh": _unary("tanh"),
    "Floor": _unary("floor"), "Reciprocal": _unary("reciprocal"), "Sigmoid": _unary("sigmoid"),
    "Identity": lambda e, n: e.arg(n.inputs[0]),
    "Cast": lambda e, n: f"{e.arg(n.inputs[0])}.astype({e.dtype(e.attr('to'))})",
    "Where": lambda e, n: f"{e.ns}.where({', '.join(e.arg(v) for v in n.inputs)})",
    "Concat": lambda e, n: f"{e.ns}.concatenate([{', '.join(e.arg(v) for v in n.inputs)}], axis={e.attr('axis')})",
    "Gather": lambda e, n: f"{e.ns}.take({e.arg(n.inputs[0])}, {e.arg(n.inputs[1])}, axis={e.attr('axis', 0)})",
    "Unsqueeze": lambda e, n: f"{e.ns}.expand_dims({e.arg(n.inputs[0])}, {tuple(e.ints(n.inputs[1], 'axes'))!r})",
    "Squeeze": lambda e, n: f"{e.ns}.squeeze({e.arg(n.inputs[0])}, {tuple(e.ints(n.inputs[1], 'axes'))!r})",
    "Transpose": lambda e, n: f"{e.ns}.transpose({e.arg(n.inputs[0])}, {tuple(e.attr('perm'))!r})",
    "Softmax": lambda e, n: f"mx.softmax({e.arg(n.inputs[0])}, axis={e.attr('axis', -1)})",
    "ReduceMin": _reduce("min"), "ReduceMax": _reduce("max"), "ReduceSum": _reduce("sum"),
    "ReduceMean": _reduce("mean"),
    "Slice": _slice, "Reshape": _reshape, "Split": _split, "Gemm": _gemm, "Pad": _pad, "Constant": _constant,
    "ConstantOfShape": _constant_of_shape, "Shape": _shape, "Expand": _expand,
    "hrmc.RMSNorm": _rms_norm, "hrmc.Rope": _rope, "hrmc.Attention": _attention,
    "hrmc.SwiGLU": lambda e, n: f"nn.silu({e.arg(n.inputs[0])}) * {e.arg(n.inputs[1])}",
}
# Ops that may run on the host (numpy) when they only compute shapes.
HOST_OPS = {"Concat", "Gather", "Slice", "Unsqueeze", "Squeeze", "Cast", "Add", "Sub", "Mul", "Reshape", "Identity"}
