"""fold-constant-tables: the RoPE tables the exporter left to run time become constants, computed once."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
from hypothesis import given, settings
from hypothesis import strategies as st

from hrmc.passes.cleanup import CleanupPass
from hrmc.passes.fold_constant_tables import FoldConstantTablesPass


def _tables(angles: np.ndarray) -> ir.Model:
    """y = x·Cos(Concat(a, a)) + x·Sin(Concat(a, a)), `a` an initializer: trm-maze's step graph, reduced."""
    a = ir.Value(name="angles", shape=ir.Shape(angles.shape), type=ir.TensorType(ir.DataType.FLOAT),
                 const_value=ir.tensor(angles))
    width = 2 * angles.shape[1]
    x = ir.Value(name="x", shape=ir.Shape([angles.shape[0], width]), type=ir.TensorType(ir.DataType.FLOAT))
    cat = ir.Node("", "Concat", [a, a], attributes={"axis": ir.AttrInt64("axis", -1)}, name="node_cat")
    cat.outputs[0].name = "cat"
    cos, sin = (ir.Node("", op, [cat.outputs[0]], name=f"node_{op.lower()}") for op in ("Cos", "Sin"))
    cos.outputs[0].name, sin.outputs[0].name = "cos", "sin"
    products = [ir.Node("", "Mul", [x, table.outputs[0]]) for table in (cos, sin)]
    total = ir.Node("", "Add", [products[0].outputs[0], products[1].outputs[0]], name="node_y")
    total.outputs[0].name = "y"
    total.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
    graph = ir.Graph([x], [total.outputs[0]], nodes=[cat, cos, sin, *products, total], initializers=[a],
                     opset_imports={"": 18})
    return ir.Model(graph, ir_version=9)


def _run(model: ir.Model, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@settings(max_examples=20, deadline=None)
@given(positions=st.integers(1, 40), half=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_the_tables_become_constants_and_compute_what_the_ops_did(positions, half, seed):
    rng = np.random.default_rng(seed)
    angles = (rng.random((positions, half)) * positions).astype(np.float32)
    x = rng.standard_normal((positions, 2 * half)).astype(np.float32)
    before = _run(_tables(angles), x)
    model = _tables(angles)
    assert FoldConstantTablesPass()(model).modified
    CleanupPass()(model)
    assert [node.op_type for node in model.graph] == ["Mul", "Mul", "Add"]
    tables = {name: value.const_value.numpy() for name, value in model.graph.initializers.items()}
    assert set(tables) == {"cos", "sin"}  # named as the values they replace
    wide = np.concatenate([angles, angles], axis=-1).astype(np.float64)
    np.testing.assert_array_equal(tables["cos"], np.cos(wide).astype(np.float32))
    np.testing.assert_allclose(_run(model, x), before, rtol=1e-6, atol=1e-6)


def test_ops_reading_a_computed_value_stay():
    x = ir.Value(name="x", shape=ir.Shape([3]), type=ir.TensorType(ir.DataType.FLOAT))
    cos = ir.Node("", "Cos", [x], name="node_cos")
    cos.outputs[0].name = "y"
    model = ir.Model(ir.Graph([x], [cos.outputs[0]], nodes=[cos], opset_imports={"": 18}), ir_version=9)
    assert not FoldConstantTablesPass()(model).modified
    assert [node.op_type for node in model.graph] == ["Cos"]
