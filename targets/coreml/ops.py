"""The Core ML op-mapping table: `OPS` maps each ONNX op (`hrmc.*` for our fused functions) to the
MIL ops that compute it, built through the lowering's `Builder` (lowering.py).

Every op the `fused` / `fused-fp16` pipelines emit for hrmc's models has an entry
(tests/targets/test_registry.py); a node without one fails at lower time naming the op and the node.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
import onnx_ir as ir

from hrmc.targets.coreml._coremltools import mb, mil_types

if TYPE_CHECKING:
    from hrmc.targets.coreml.lowering import Builder

MIL_DTYPES = {ir.DataType.FLOAT: "fp32", ir.DataType.FLOAT16: "fp16", ir.DataType.INT64: "int32",
              ir.DataType.INT32: "int32", ir.DataType.BOOL: "bool"}
MIL_TYPES = {"fp32": mil_types.fp32, "fp16": mil_types.fp16, "int32": mil_types.int32}


def mil_array(array: np.ndarray) -> np.ndarray:
    """A constant or an input as MIL takes it: int64 as int32."""
    array = np.asarray(array)
    return array.astype(np.int32) if array.dtype == np.int64 else array


def _binary(function: str) -> Callable[[Builder, ir.Node], object]:
    return lambda b, n: getattr(mb, function)(x=b.var(n.inputs[0]), y=b.var(n.inputs[1]))


def _unary(function: str) -> Callable[[Builder, ir.Node], object]:
    return lambda b, n: getattr(mb, function)(x=b.var(n.inputs[0]))


def _div(b: Builder, n: ir.Node):
    x, y = b.var(n.inputs[0]), b.var(n.inputs[1])
    if mil_types.is_float(x.dtype):
        return mb.real_div(x=x, y=y)
    # ONNX integer Div truncates toward zero; MIL's floor_div floors: divide magnitudes, then sign.
    magnitude = mb.floor_div(x=mb.abs(x=x), y=mb.abs(x=y))
    return mb.mul(x=magnitude, y=mb.mul(x=mb.sign(x=x), y=mb.sign(x=y)))


def _slice(b: Builder, n: ir.Node):
    x = b.var(n.inputs[0])
    rank = x.rank
    begin, end, stride = [0] * rank, [0] * rank, [1] * rank
    begin_mask, end_mask = [True] * rank, [True] * rank
    for start, stop, axis, step in b.slice_arguments(n):
        axis %= rank
        begin[axis], stride[axis], begin_mask[axis] = start, step, False
        if stop is not None:
            end[axis], end_mask[axis] = stop, False
    return mb.slice_by_index(x=x, begin=begin, end=end, stride=stride, begin_mask=begin_mask, end_mask=end_mask)


def _reshape(b: Builder, n: ir.Node):
    x, dims = b.var(n.inputs[0]), b.ints(n.inputs[1], "the shape")
    if not b.attr("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return mb.reshape(x=x, shape=np.array(dims, np.int32))


def _split(b: Builder, n: ir.Node):
    x, axis = b.var(n.inputs[0]), b.attr("axis", 0)
    if b.optional(n, 1) is not None:
        return mb.split(x=x, split_sizes=np.array(b.ints(n.inputs[1], "split sizes"), np.int32), axis=axis)
    return mb.split(x=x, num_splits=len(n.outputs), axis=axis)


def _gemm(b: Builder, n: ir.Node):
    if b.attr("alpha", 1.0) != 1.0 or b.attr("beta", 1.0) != 1.0 or b.attr("transA", 0):
        raise b.fail("only Gemm with alpha = beta = 1 and no transA is mapped")
    return b.matmul(n.inputs[0], n.inputs[1], transpose_y=bool(b.attr("transB", 0)), bias=b.optional(n, 2))


def _pad(b: Builder, n: ir.Node):
    pads = b.ints(n.inputs[1], "pads")
    half = len(pads) // 2
    fill = b.const(n.inputs[2]) if b.optional(n, 2) is not None else 0.0
    pairs = [v for axis in range(half) for v in (pads[axis], pads[half + axis])]
    x = b.var(n.inputs[0])
    fill = b.scalar(float(fill)) if mil_types.is_float(x.dtype) else np.int32(fill)
    return mb.pad(x=x, pad=np.array(pairs, np.int32), mode="constant", constant_val=fill)


def _expand(b: Builder, n: ir.Node):
    x, shape = b.var(n.inputs[0]), b.ints(n.inputs[1], "the shape")
    target = np.broadcast_shapes(tuple(x.shape), tuple(shape))
    if x.rank < len(target):
        x = mb.expand_dims(x=x, axes=list(range(len(target) - x.rank)))
    reps = [t // s for t, s in zip(target, x.shape)]
    return x if all(r == 1 for r in reps) else mb.tile(x=x, reps=reps)


def _reduce(function: str) -> Callable[[Builder, ir.Node], object]:
    def lower(b: Builder, n: ir.Node):
        axes = None if b.optional(n, 1) is None else b.ints(n.inputs[1], "axes")
        x, keep = b.var(n.inputs[0]), bool(b.attr("keepdims", 1))
        if x.val is not None:  # fold it here: coremltools' loader re-folds it with a numpy bool that numpy 2 refuses
            reduce = {"reduce_min": np.min, "reduce_max": np.max, "reduce_sum": np.sum, "reduce_mean": np.mean}[function]
            return mb.const(val=np.asarray(reduce(x.val, axis=None if axes is None else tuple(axes), keepdims=keep)))
        return getattr(mb, function)(x=x, axes=axes, keep_dims=keep)
    return lower


def _cast(b: Builder, n: ir.Node):
    to = ir.DataType(b.attr("to"))
    if to not in MIL_DTYPES:
        raise b.fail(f"cast to {to.name} has no MIL type")
    dtype = b.float_type if to in (ir.DataType.FLOAT, ir.DataType.FLOAT16) else MIL_DTYPES[to]
    return mb.cast(x=b.var(n.inputs[0]), dtype=dtype)


def _shape(b: Builder, n: ir.Node):
    shape = np.array(b.var(n.inputs[0]).shape[b.attr("start", 0):b.attr("end")], np.int32)
    return mb.const(val=shape)


def _rms_norm(b: Builder, n: ir.Node):
    """With the graph's own eps: Core ML's fused rms_norm rescales (docs/design.md §3). float32: explicit
    ops. float16 (ANE): x² overflows float16 from |x| = 256, so RMSNorm is computed as a layer_norm over
    [x, −x], whose mean is 0 and whose variance is mean(x²), and whose kernel on the ANE does not overflow
    (ANEMLL; apple/coremltools#2585): 4 ops instead of 5, the last axis read at twice its width."""
    x, epsilon = b.var(n.inputs[0]), float(b.const(n.inputs[1]))
    if b.overflow_safe_norm:
        width = x.shape[-1]
        both = mb.concat(values=[x, mb.mul(x=x, y=b.scalar(-1))], axis=-1)
        normed = mb.layer_norm(x=both, axes=[-1], epsilon=b.scalar(epsilon))
        return mb.slice_by_size(x=normed, begin=[0] * x.rank, size=list(x.shape[:-1]) + [width])
    mean = mb.reduce_mean(x=mb.mul(x=x, y=x), axes=[-1], keep_dims=True)
    return mb.real_div(x=x, y=mb.sqrt(x=mb.add(x=mean, y=b.scalar(epsilon))))


def _rope(b: Builder, n: ir.Node):
    x = b.var(n.inputs[0])
    front, back = mb.split(x=x, num_splits=2, axis=-1)
    rotated = mb.concat(values=[mb.mul(x=back, y=b.scalar(-1)), front], axis=-1)
    return mb.add(x=mb.mul(x=x, y=b.var(n.inputs[1])), y=mb.mul(x=rotated, y=b.var(n.inputs[2])))


def _attend(q, k, v, scale):
    """softmax(q·kᵀ · scale)·v over the last two axes."""
    scores = mb.mul(x=mb.matmul(x=q, y=k, transpose_y=True), y=scale)
    return mb.matmul(x=mb.softmax(x=scores, axis=-1), y=v)


def _attention(b: Builder, n: ir.Node):
    """q, k, v are [B, S, heads, D]. Batched over heads with transposes, or (ANE) one head at a time
    as apple/ml-ane-transformers does: [B, S, D] matmuls only, split from and concatenated back into
    [B, S, heads·D]."""
    scale = b.var(n.inputs[3])
    if not b.heads_apart:
        q, k, v = (mb.transpose(x=b.var(value), perm=[0, 2, 1, 3]) for value in n.inputs[:3])
        return mb.transpose(x=_attend(q, k, v, scale), perm=[0, 2, 1, 3])
    batch, length, heads, width = b.var(n.inputs[0]).shape
    q, k, v = (_heads(mb.reshape(x=b.var(value), shape=[batch, length, heads * width]), heads)
               for value in n.inputs[:3])
    joined = mb.concat(values=[_attend(*head, scale) for head in zip(q, k, v)], axis=2)
    return mb.reshape(x=joined, shape=[batch, length, heads, width])


def _heads(x, heads: int) -> list:
    return [x] if heads == 1 else list(mb.split(x=x, num_splits=heads, axis=2))


# The op-mapping table: every op the `fused` / `fused-fp16` pipelines emit for hrmc's models.
OPS: dict[str, Callable[[Builder, ir.Node], object]] = {
    "Add": _binary("add"), "Sub": _binary("sub"), "Mul": _binary("mul"), "Div": _div, "Pow": _binary("pow"),
    "Max": _binary("maximum"), "Min": _binary("minimum"), "Mod": _binary("mod"),
    "MatMul": lambda b, n: b.matmul(n.inputs[0], n.inputs[1]),
    "Equal": _binary("equal"), "Greater": _binary("greater"), "GreaterOrEqual": _binary("greater_equal"),
    "Less": _binary("less"), "LessOrEqual": _binary("less_equal"),
    "And": _binary("logical_and"), "Or": _binary("logical_or"), "Not": _unary("logical_not"),
    "Sqrt": _unary("sqrt"), "Exp": _unary("exp"), "Tanh": _unary("tanh"), "Sigmoid": _unary("sigmoid"),
    "Abs": _unary("abs"), "Sin": _unary("sin"), "Cos": _unary("cos"), "Floor": _unary("floor"),
    "Neg": lambda b, n: mb.mul(x=b.var(n.inputs[0]), y=b.scalar(-1)),
    "Reciprocal": lambda b, n: mb.inverse(x=b.var(n.inputs[0]), epsilon=0.0),
    "Identity": lambda b, n: mb.identity(x=b.var(n.inputs[0])),
    "Cast": _cast, "Shape": _shape, "Expand": _expand, "Slice": _slice, "Reshape": _reshape, "Split": _split,
    "Gemm": _gemm, "Pad": _pad,
    "CumSum": lambda b, n: mb.cumsum(x=b.var(n.inputs[0]), axis=b.ints(n.inputs[1], "the axis")[0],
                                     exclusive=bool(b.attr("exclusive", 0)), reverse=bool(b.attr("reverse", 0))),
    "Constant": lambda b, n: mb.const(val=b.array(b.const(n.outputs[0]))),
    "Where": lambda b, n: mb.select(cond=b.var(n.inputs[0]), a=b.var(n.inputs[1]), b=b.var(n.inputs[2])),
    "Concat": lambda b, n: mb.concat(values=[b.var(v) for v in n.inputs], axis=b.attr("axis")),
    "Gather": lambda b, n: mb.gather(x=b.var(n.inputs[0]), indices=b.var(n.inputs[1]), axis=b.attr("axis", 0)),
    "Unsqueeze": lambda b, n: mb.expand_dims(x=b.var(n.inputs[0]), axes=b.ints(n.inputs[1], "axes")),
    "Squeeze": lambda b, n: mb.squeeze(x=b.var(n.inputs[0]), axes=b.ints(n.inputs[1], "axes")),
    "Transpose": lambda b, n: mb.transpose(x=b.var(n.inputs[0]), perm=list(b.attr("perm"))),
    "Softmax": lambda b, n: mb.softmax(x=b.var(n.inputs[0]), axis=b.attr("axis", -1)),
    "ReduceMin": _reduce("reduce_min"), "ReduceMax": _reduce("reduce_max"), "ReduceSum": _reduce("reduce_sum"),
    "ReduceMean": _reduce("reduce_mean"),
    "ArgMax": lambda b, n: mb.reduce_argmax(x=b.var(n.inputs[0]), axis=b.attr("axis", 0),
                                            keep_dims=bool(b.attr("keepdims", 1))),
    "hrmc.RMSNorm": _rms_norm, "hrmc.Rope": _rope, "hrmc.Attention": _attention,
    "hrmc.SwiGLU": lambda b, n: mb.mul(x=mb.silu(x=b.var(n.inputs[0])), y=b.var(n.inputs[1])),
}
