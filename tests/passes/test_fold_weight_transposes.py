"""fold-weight-transposes: a weight read through Transpose becomes a transposed initializer, once."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hrmc.passes import run_pipeline
from hrmc.passes.fold_weight_transposes import FoldWeightTransposesPass


def _graph(weight: np.ndarray, perm: list[int] | None, readers: int) -> ir.Model:
    """y_i = MatMul(x, Transpose(W)) for `readers` MatMuls, one Transpose node each (as the exporter
    leaves a weight shared by two loop bodies)."""
    w = ir.Value(name="W", shape=ir.Shape(weight.shape), type=ir.TensorType(ir.DataType.FLOAT),
                 const_value=ir.tensor(weight))
    transposed_shape = weight.shape[::-1] if perm is None else tuple(weight.shape[i] for i in perm)
    x = ir.Value(name="x", shape=ir.Shape([3, transposed_shape[0]]), type=ir.TensorType(ir.DataType.FLOAT))
    nodes, outputs = [], []
    for i in range(readers):
        attributes = {} if perm is None else {"perm": ir.AttrInt64s("perm", perm)}
        transpose = ir.Node("", "Transpose", [w], attributes=attributes, name=f"t{i}")
        matmul = ir.Node("", "MatMul", [x, transpose.outputs[0]], name=f"m{i}")
        matmul.outputs[0].name = f"y{i}"
        matmul.outputs[0].type, matmul.outputs[0].shape = ir.TensorType(ir.DataType.FLOAT), None
        nodes += [transpose, matmul]
        outputs.append(matmul.outputs[0])
    graph = ir.Graph([x], outputs, nodes=nodes, initializers=[w], opset_imports={"": 18})
    return ir.Model(graph, ir_version=9)


def _run(model: ir.Model, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


@settings(max_examples=20, deadline=None)
@given(rows=st.integers(1, 6), cols=st.integers(1, 6), readers=st.integers(1, 3), explicit=st.booleans())
def test_folding_keeps_the_outputs_and_stores_each_weight_once(rows: int, cols: int, readers: int, explicit: bool) -> None:
    weight = np.random.default_rng(rows * 7 + cols).standard_normal((rows, cols)).astype(np.float32)
    x = np.random.default_rng(1).standard_normal((3, cols)).astype(np.float32)
    before = _run(_graph(weight, [1, 0] if explicit else None, readers), x)
    model = _graph(weight, [1, 0] if explicit else None, readers)
    assert FoldWeightTransposesPass()(model).modified
    assert [n.op_type for n in model.graph] == ["MatMul"] * readers
    assert list(model.graph.initializers) == ["W.transposed"]  # W itself: read by nothing now
    assert all(np.array_equal(a, b) for a, b in zip(_run(model, x), before))


def test_a_transpose_of_an_activation_is_left_alone() -> None:
    model = _graph(np.ones((2, 2), np.float32), None, 1)
    activation = model.graph.inputs[0]
    transpose = next(iter(model.graph))
    transpose.replace_input_with(0, activation)
    assert not FoldWeightTransposesPass()(model).modified


@pytest.mark.parametrize("preset", ["trm-tiny", pytest.param("trm-tiny-mlp-t", marks=pytest.mark.heavy)])
def test_a_trm_step_reads_every_weight_once_and_untransposed(preset: str, exported) -> None:
    """TRM's one network, shared by the L cycles and the H-step: the exporter leaves some of its weights
    behind Transpose nodes and folds others once per loop body; after the pipeline no weight is read
    through a Transpose and each is stored once."""
    from hrmc import hrm_ref
    from hrmc.lowering import step_path_for

    model = ir.load(str(step_path_for(exported(preset))))
    assert any(n.op_type == "Transpose" and n.inputs[0].is_initializer() for n in model.graph.all_nodes())
    run_pipeline(model, "fused", chunk=1)
    initializers = model.graph.initializers
    assert not any(n.op_type == "Transpose" and n.inputs[0] is not None and n.inputs[0].name in initializers
                   for n in model.graph)
    parameters = hrm_ref.build_preset(preset).num_parameters()
    stored = sum(v.const_value.size for v in initializers.values())  # weights folded by the exporter are renamed
    assert parameters <= stored < 1.02 * parameters  # buffers (puzzle_emb, H_init, L_init) and RoPE tables on top
