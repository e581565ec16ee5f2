"""unroll-cycles: no cycle Loop is left and the graph computes exactly what it did."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hrmc.passes._loops import PassInputError
from hrmc.passes.unroll_cycles import UnrollCyclesPass
from tests.passes.graphs import cycles_model, execute, op_types

floats = st.floats(-1.5, 1.5, allow_nan=False).map(np.float32)


@settings(max_examples=30, deadline=None)
@given(h_trips=st.integers(1, 4), l_trips=st.integers(1, 4), a=floats, b=floats, c=floats,
       x=st.lists(floats, min_size=6, max_size=6))
def test_unrolling_changes_nothing_computed(h_trips: int, l_trips: int, a, b, c, x) -> None:
    model = cycles_model(h_trips, l_trips, a, b, c)
    feed = {"x": np.array(x, np.float32).reshape(2, 3)}
    before = execute(model, feed)
    result = UnrollCyclesPass()(model)
    assert result.modified and "Loop" not in op_types(result.model)
    assert np.array_equal(execute(result.model, feed)[0], before[0])  # same ops, same order: bit for bit


def test_a_graph_without_cycles_is_left_alone() -> None:
    model = cycles_model(1, 1, 1.0, 0.0, 1.0)
    UnrollCyclesPass()(model)
    assert not UnrollCyclesPass()(model).modified


def test_a_loop_without_hrmc_metadata_is_named() -> None:
    model = cycles_model(2, 2, 1.0, 0.0, 1.0)
    outer = next(node for node in model.graph if node.op_type == "Loop")
    outer.metadata_props.clear()
    with pytest.raises(PassInputError, match="Loop node 'outer' has no hrmc metadata"):
        UnrollCyclesPass()(model)


def test_a_cycle_without_a_fixed_trip_count_is_refused_before_anything_is_unrolled() -> None:
    model = cycles_model(2, 2, 1.0, 0.0, 1.0)
    next(node for node in model.graph if node.op_type == "Loop").metadata_props["hrmc.trip_count"] = ""
    with pytest.raises(PassInputError, match=r"Loop node 'outer' \(h_cycles\) has no fixed trip count"):
        UnrollCyclesPass()(model)
    loops = [node.name for node in ir.traversal.RecursiveGraphIterator(model.graph) if node.op_type == "Loop"]
    assert loops == ["outer", "inner"]  # the inner cycle too: nothing unrolled


def test_the_real_export_keeps_only_its_act_loop(tiny_export) -> None:
    model = ir.load(str(tiny_export))
    UnrollCyclesPass()(model)
    loops = [n for n in ir.traversal.RecursiveGraphIterator(model.graph) if n.op_type == "Loop"]
    assert [n.metadata_props["hrmc.loop"] for n in loops] == ["act"]
