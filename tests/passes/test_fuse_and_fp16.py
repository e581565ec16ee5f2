"""fuse and fp16 on a transformer block written like the exporter's: fused calls, the same function."""

from __future__ import annotations

import collections

import numpy as np
import onnx_ir as ir
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hrmc.parity.gate import psnr
from hrmc.passes.fp16 import Float16Pass
from hrmc.passes.fuse import DOMAIN, FusePass
from tests.passes.graphs import block_model, execute

shapes = st.fixed_dictionaries({"batch": st.integers(1, 3), "seq": st.integers(1, 6), "heads": st.integers(1, 3),
                                "head_dim": st.sampled_from([2, 4, 8]), "inter": st.integers(1, 16),
                                "seed": st.integers(0, 2**16)})


def block_with_reference(shape: dict) -> tuple[ir.Model, dict[str, np.ndarray], np.ndarray]:
    """A random block, a seeded input for it, and its output before any pass."""
    model = block_model(**shape)
    dims = [int(d) for d in model.graph.inputs[0].shape]
    feed = {"x": np.random.default_rng(shape["seed"]).standard_normal(dims).astype(np.float32)}
    return model, feed, execute(model, feed)[0]


@settings(max_examples=8, deadline=None)
@given(shape=shapes)
def test_fuse_marks_every_pattern_and_computes_the_same(shape) -> None:
    model, feed, before = block_with_reference(shape)
    assert FusePass()(model).modified
    fused = collections.Counter(n.op_type for n in model.graph if n.domain == DOMAIN)
    assert fused == {"RMSNorm": 2, "Rope": 2, "Attention": 1, "SwiGLU": 1}
    assert not {"Softmax", "ReduceMean", "Sigmoid", "Neg"} & {n.op_type for n in model.graph}
    np.testing.assert_allclose(execute(model, feed)[0], before, rtol=0, atol=1e-6)


def test_fuse_leaves_a_graph_without_the_patterns_alone() -> None:
    model = block_model(1, 2, 1, 4, 4, seed=0)
    FusePass()(model)
    assert not FusePass()(model).modified


def test_rope_with_other_slices_is_not_fused() -> None:
    """A rotation that is not [D/2:], [:D/2] must stay as it is."""
    model = block_model(1, 3, 1, 4, 4, seed=1)
    half = next(node for node in model.graph if node.outputs[0].name == "half")  # a Constant node in block_model
    half.attributes["value"] = ir.AttrTensor("value", ir.tensor(np.array([1], np.int64)))
    FusePass()(model)
    assert "Rope" not in {n.op_type for n in model.graph if n.domain == DOMAIN}


@settings(max_examples=6, deadline=None)
@given(shape=shapes)
def test_fp16_keeps_the_interface_and_stays_close(shape) -> None:
    model, feed, before = block_with_reference(shape)
    FusePass()(model)
    Float16Pass()(model)
    assert model.graph.inputs[0].dtype == model.graph.outputs[0].dtype == ir.DataType.FLOAT
    assert all(v.dtype == ir.DataType.FLOAT16 for name, v in model.graph.initializers.items() if name.startswith("w_"))
    kept = [v for n in model.graph if n.domain == DOMAIN and n.op_type in ("RMSNorm", "Rope") for v in n.inputs[1:]]
    assert kept and all(v.dtype == ir.DataType.FLOAT for v in kept)  # eps and the rope tables stay float32
    after = execute(model, feed)[0]
    assert after.dtype == np.float32 and psnr(after, before) >= 50


def test_fp16_refuses_an_unfused_graph() -> None:
    with pytest.raises(ir.passes.PreconditionError, match=r"node '\w+' \((Softmax|ReduceMean)\) would run in float16: run `fuse` first"):
        Float16Pass()(block_model(1, 2, 1, 4, 4, seed=0))
