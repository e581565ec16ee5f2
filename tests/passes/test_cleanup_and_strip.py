"""cleanup and strip-heads on small graphs: fewer nodes, the same outputs."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from hrmc.passes._loops import PassInputError
from hrmc.passes.cleanup import CleanupPass
from hrmc.passes.strip_heads import StripHeadsPass
from tests.passes.graphs import OPSET, const, execute


def two_heads(scale: float) -> ir.Model:
    """x → (y = relu(x)·scale twice, with a duplicate constant, an Identity and a dead branch); z = exp(x)."""
    nodes = [const("k1", np.float32(scale)), const("k2", np.float32(scale)),
             helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Identity", ["r"], ["r2"]),
             helper.make_node("Mul", ["r2", "k1"], ["y1"]), helper.make_node("Mul", ["r", "k2"], ["y2"]),
             helper.make_node("Add", ["y1", "y2"], ["y"]), helper.make_node("Neg", ["x"], ["dead"]),
             helper.make_node("Exp", ["x"], ["z"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, [4])])
    model = ir.from_proto(helper.make_model(graph, opset_imports=OPSET))
    model.metadata_props["hrmc.outputs"] = '["y", "z"]'
    return model


@settings(max_examples=20, deadline=None)
@given(scale=st.floats(-3, 3).map(np.float32), x=st.lists(st.floats(-3, 3).map(np.float32), min_size=4, max_size=4))
def test_cleanup_removes_nodes_not_results(scale, x) -> None:
    model, feed = two_heads(scale), {"x": np.array(x, np.float32)}
    before, nodes_before = execute(model, feed), len(list(model.graph))
    assert CleanupPass()(model).modified
    assert len(list(model.graph)) < nodes_before
    assert not {n.op_type for n in model.graph} & {"Identity", "Neg"}
    for old, new in zip(before, execute(model, feed)):
        assert np.array_equal(old, new)


def test_strip_heads_drops_the_output_and_what_only_it_needed() -> None:
    model = two_heads(2.0)
    feed = {"x": np.array([-1, 0, 1, 2], np.float32)}
    y = execute(model, feed)[0]
    StripHeadsPass(("z",))(model)
    assert [v.name for v in model.graph.outputs] == ["y"] and "Exp" not in {n.op_type for n in model.graph}
    assert np.array_equal(execute(model, feed)[0], y) and model.metadata_props["hrmc.outputs"] == '["y"]'


@pytest.mark.parametrize("name, message", [("w", "has no output 'w'"), ("halted", "is the carry or a halting decision")])
def test_strip_heads_refuses_what_it_cannot_strip(name: str, message: str) -> None:
    with pytest.raises(PassInputError, match=message):
        StripHeadsPass((name,))(two_heads(1.0))
