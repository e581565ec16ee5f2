"""The `hrmc` functions (RMSNorm, Rope, Attention, SwiGLU), the onnxscript rules that rewrite their patterns into
calls of them, and `FusePass`, which applies the rules.

The function bodies compute norms, rope and softmax in float32 whatever the input type (`Cast` in,
`CastLike` out): the `fp16` pass relies on that to keep those regions in float32.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper
from onnxscript.rewriter import pattern

DOMAIN = "hrmc"
OPSET = 20
F32 = TensorProto.FLOAT


def _function(name: str, inputs: list[str], nodes: list, outputs: list[str]) -> ir.Function:
    proto = helper.make_function(DOMAIN, name, inputs, outputs, nodes, [helper.make_opsetid("", OPSET)])
    return ir.serde.deserialize_function(proto)


def _rms_norm() -> ir.Function:
    make = helper.make_node
    return _function("RMSNorm", ["x", "epsilon"], [
        make("Cast", ["x"], ["x32"], to=F32),
        make("Constant", [], ["two"], value_float=2.0),
        make("Constant", [], ["last"], value_ints=[-1]),
        make("Pow", ["x32", "two"], ["square"]),
        make("ReduceMean", ["square", "last"], ["mean"], keepdims=1, noop_with_empty_axes=0),
        make("Add", ["mean", "epsilon"], ["shifted"]),
        make("Sqrt", ["shifted"], ["rms"]),
        make("Reciprocal", ["rms"], ["inverse"]),
        make("Mul", ["x32", "inverse"], ["y32"]),
        make("CastLike", ["y32", "x"], ["y"]),
    ], ["y"])


def _rope() -> ir.Function:
    make = helper.make_node
    return _function("Rope", ["x", "cos", "sin"], [
        make("Cast", ["x"], ["x32"], to=F32),
        make("Split", ["x32"], ["front", "back"], axis=-1, num_outputs=2),
        make("Neg", ["back"], ["minus_back"]),
        make("Concat", ["minus_back", "front"], ["rotated"], axis=-1),
        make("Mul", ["x32", "cos"], ["x_cos"]),
        make("Mul", ["rotated", "sin"], ["rotated_sin"]),
        make("Add", ["x_cos", "rotated_sin"], ["y32"]),
        make("CastLike", ["y32", "x"], ["y"]),
    ], ["y"])


def _attention() -> ir.Function:
    make = helper.make_node
    return _function("Attention", ["q", "k", "v", "scale"], [  # q, k, v: [batch, seq, heads, head_dim]
        make("Transpose", ["q"], ["q_heads"], perm=[0, 2, 1, 3]),
        make("Transpose", ["k"], ["k_heads_t"], perm=[0, 2, 3, 1]),
        make("Transpose", ["v"], ["v_heads"], perm=[0, 2, 1, 3]),
        make("MatMul", ["q_heads", "k_heads_t"], ["scores"]),
        make("Mul", ["scores", "scale"], ["scaled"]),
        make("Cast", ["scaled"], ["scaled32"], to=F32),
        make("Softmax", ["scaled32"], ["probs32"], axis=-1),
        make("CastLike", ["probs32", "v"], ["probs"]),
        make("MatMul", ["probs", "v_heads"], ["heads_out"]),
        make("Transpose", ["heads_out"], ["y"], perm=[0, 2, 1, 3]),
    ], ["y"])


def _swiglu() -> ir.Function:
    make = helper.make_node
    return _function("SwiGLU", ["gate", "up"], [
        make("Sigmoid", ["gate"], ["sig"]),
        make("Mul", ["gate", "sig"], ["silu"]),
        make("Mul", ["silu", "up"], ["y"]),
    ], ["y"])


FUNCTIONS = {"RMSNorm": _rms_norm, "Rope": _rope, "Attention": _attention, "SwiGLU": _swiglu}


def _scalar(value: ir.Value | None) -> float | None:
    constant = None if value is None else value.const_value
    return float(constant.numpy()) if constant is not None and constant.size == 1 else None


def _ints(value: ir.Value | None) -> list[int] | None:
    constant = None if value is None else value.const_value
    return None if constant is None else [int(v) for v in np.ravel(constant.numpy())]


class RMSNormRule(pattern.RewriteRuleClassBase):
    def pattern(self, op, x, epsilon):
        mean = op.ReduceMean(op.Pow(x, 2.0), [-1], keepdims=1, noop_with_empty_axes=0)
        return op.Mul(x, op.Reciprocal(op.Sqrt(op.Add(mean, epsilon))))

    def check(self, context, x, epsilon, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        return result if _scalar(epsilon) is not None else result.fail("epsilon is not a constant scalar", epsilon)

    def rewrite(self, op, x, epsilon, **_):
        return op.RMSNorm(x, epsilon, _domain=DOMAIN)


class RopeRule(pattern.RewriteRuleClassBase):
    def pattern(self, op, x, cos, sin, back_start, back_end, front_start, front_end, axes, steps):
        back = op.Slice(x, back_start, back_end, axes, steps)
        front = op.Slice(x, front_start, front_end, axes, steps)
        rotated = op.Concat(op.Neg(back), front, axis=-1)
        return op.Add(op.Mul(x, cos), op.Mul(rotated, sin))

    def check(self, context, x, cos, sin, back_start, back_end, front_start, front_end, axes, steps,
              **_) -> pattern.MatchResult:
        """The two slices must be the halves [D/2:] and [:D/2] of the last axis, the tables constants."""
        result = pattern.MatchResult()
        width = x.shape[-1] if x.shape is not None and x.shape.rank() else None
        if not isinstance(width, int) or width % 2:
            return result.fail("the rotated axis has no static even width", x)
        half, rank = width // 2, x.shape.rank()
        if _ints(axes) not in ([-1], [rank - 1]) or _ints(steps) != [1]:
            return result.fail("the slices do not step through the last axis", axes)
        if _ints(back_start) != [half] or _ints(front_start) != [0] or _ints(front_end) != [half]:
            return result.fail("the slices are not the two halves", x)
        if (_ints(back_end) or [0])[0] < width:
            return result.fail("the back slice stops short of the end", back_end)
        if cos.const_value is None or sin.const_value is None:
            return result.fail("the cos/sin tables are not constants", cos)
        return result

    def rewrite(self, op, x, cos, sin, **_):
        return op.Rope(x, cos, sin, _domain=DOMAIN)


class AttentionRule(pattern.RewriteRuleClassBase):
    def pattern(self, op, q, k, v, scale):
        scores = op.MatMul(op.Transpose(q, perm=[0, 2, 1, 3]), op.Transpose(k, perm=[0, 2, 3, 1]))
        probs = op.Softmax(op.Mul(scores, scale), axis=-1)
        return op.Transpose(op.MatMul(probs, op.Transpose(v, perm=[0, 2, 1, 3])), perm=[0, 2, 1, 3])

    def check(self, context, q, k, v, scale, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        return result if _scalar(scale) is not None else result.fail("the scale is not a constant scalar", scale)

    def rewrite(self, op, q, k, v, scale, **_):
        return op.Attention(q, k, v, scale, _domain=DOMAIN)


class SwiGLURule(pattern.RewriteRuleClassBase):
    def pattern(self, op, gate, up):
        return op.Mul(op.Mul(gate, op.Sigmoid(gate)), up)

    def rewrite(self, op, gate, up, **_):
        return op.SwiGLU(gate, up, _domain=DOMAIN)


# Rope before attention: attention's pattern starts at the (rotated) q and k.
RULES = pattern.RewriteRuleSet([RMSNormRule.rule(), RopeRule.rule(), AttentionRule.rule(), SwiGLURule.rule()],
                               commute=True)


class FusePass(ir.passes.InPlacePass):
    """`fuse`: mark RMSNorm, RoPE, SwiGLU and attention as calls of `hrmc` functions that targets map to fused primitives.

    Before (one post-norm block as the exporter writes it; the cos/sin tables are constants):

        ms = ReduceMean(Pow(h, 2), [-1]);  n = Mul(h, Reciprocal(Sqrt(Add(ms, eps))))
        q' = Add(Mul(q, cos), Mul(Concat(Neg(Slice(q, D/2:)), Slice(q, :D/2)), sin))
        s = Softmax(Mul(MatMul(Transpose(q', 0213), Transpose(k', 0231)), scale));  o = Transpose(MatMul(s, Transpose(v, 0213)), 0213)
        m = Mul(Mul(gate, Sigmoid(gate)), up)

    After (each call's body is the same ops, defined once per model in `model.functions`):

        n = hrmc.RMSNorm(h, eps)      q' = hrmc.Rope(q, cos, sin)
        o = hrmc.Attention(q', k', v, scale)      m = hrmc.SwiGLU(gate, up)

    onnxruntime inlines the functions, so the graph computes what it did.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        # Our own function bodies hold the very patterns: keep them out of the rewriter's reach.
        ours = {key: model.functions.pop(key) for key in list(model.functions) if key[0] == DOMAIN}
        count = RULES.apply_to_model(model)
        model.functions.update(ours)
        used = {node.op_type for node in model.graph if node.domain == DOMAIN}
        for name in sorted(used):
            function = FUNCTIONS[name]()
            model.functions.setdefault(function.identifier(), function)
        if used:
            model.opset_imports.setdefault(DOMAIN, 1)
        return ir.passes.PassResult(model, modified=count > 0)
