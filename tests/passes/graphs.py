"""Tiny ONNX graphs shaped like hrmc's exports (labelled Loops), built inline for the pass tests."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper

OPSET = [helper.make_opsetid("", 18)]


def const(name: str, value) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(np.asarray(value), name))


def labelled_loop(name: str, inputs: list[str], outputs: list[str], body: onnx.GraphProto, kind: str,
                  trips: int | None) -> onnx.NodeProto:
    node = helper.make_node("Loop", inputs, outputs, name=name, body=body)
    node.metadata_props.add(key="hrmc.loop", value=kind)
    node.metadata_props.add(key="hrmc.trip_count", value="" if trips is None else str(trips))
    return node


def _cycle_body(prefix: str, trips: int, update: list[onnx.NodeProto]) -> onnx.GraphProto:
    """A loop body (iter, cond, i, x) → (i + 1 < trips, i + 1, x_next) around `update`, which sets x_next."""
    nodes = [const(f"{prefix}one", np.int64(1)), const(f"{prefix}trips", np.int64(trips)),
             helper.make_node("Add", [f"{prefix}i", f"{prefix}one"], [f"{prefix}i_next"]),
             helper.make_node("Less", [f"{prefix}i_next", f"{prefix}trips"], [f"{prefix}cond_out"]), *update]
    inputs = [helper.make_tensor_value_info(f"{prefix}{name}", dtype, shape) for name, dtype, shape in
              (("iter", TensorProto.INT64, []), ("cond", TensorProto.BOOL, []), ("i", TensorProto.INT64, []),
               ("x", TensorProto.FLOAT, [2, 3]))]
    outputs = [helper.make_tensor_value_info(f"{prefix}{name}", dtype, shape) for name, dtype, shape in
               (("cond_out", TensorProto.BOOL, []), ("i_next", TensorProto.INT64, []), ("x_next", TensorProto.FLOAT, [2, 3]))]
    return helper.make_graph(nodes, f"{prefix}body", inputs, outputs)


def cycles_model(h_trips: int, l_trips: int, a: float, b: float, c: float) -> ir.Model:
    """x → Loop[h_cycles](Loop[l_cycles](x = tanh(a·x + b)); x = c·x + 0.1) → y."""
    l_body = _cycle_body("l_", l_trips, [
        const("l_a", np.float32(a)), const("l_b", np.float32(b)),
        helper.make_node("Mul", ["l_x", "l_a"], ["l_ax"]), helper.make_node("Add", ["l_ax", "l_b"], ["l_axb"]),
        helper.make_node("Tanh", ["l_axb"], ["l_x_next"])])
    h_body = _cycle_body("h_", h_trips, [
        const("h_zero", np.int64(0)), const("h_true", np.bool_(True)),
        labelled_loop("inner", ["", "h_true", "h_zero", "h_x"], ["h_j", "h_xl"], l_body, "l_cycles", l_trips),
        const("h_c", np.float32(c)), const("h_tenth", np.float32(0.1)),
        helper.make_node("Mul", ["h_xl", "h_c"], ["h_cx"]), helper.make_node("Add", ["h_cx", "h_tenth"], ["h_x_next"])])
    graph = helper.make_graph(
        [const("zero", np.int64(0)), const("yes", np.bool_(True)),
         labelled_loop("outer", ["", "yes", "zero", "x"], ["count", "y"], h_body, "h_cycles", h_trips)],
        "cycles", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    return ir.from_proto(helper.make_model(graph, opset_imports=OPSET))


def act_model(budget: int, a: float, b: float, threshold: float, batch: int) -> ir.Model:
    """ACT-shaped: per-sample halting on sum(x) > threshold or the budget; halted rows frozen."""
    nodes = [
        const("one", np.int64(1)), const("budget", np.int64(budget)), const("a", np.float32(a)),
        const("b", np.float32(b)), const("t", np.float32(threshold)), const("axis1", np.array([1], np.int64)),
        const("col", np.array([-1, 1], np.int64)),
        helper.make_node("Mul", ["x", "a"], ["ax"]), helper.make_node("Add", ["ax", "b"], ["axb"]),
        helper.make_node("Tanh", ["axb"], ["x_new"]),
        helper.make_node("Reshape", ["halted", "col"], ["halted_col"]),
        helper.make_node("Where", ["halted_col", "x", "x_new"], ["x_next"]),
        helper.make_node("ReduceSum", ["x_new", "axis1"], ["total"], keepdims=0),
        helper.make_node("Greater", ["total", "t"], ["wants"]),
        helper.make_node("Add", ["s", "one"], ["s_next"]),
        helper.make_node("Not", ["halted"], ["running"]),
        helper.make_node("Cast", ["running"], ["running_i"], to=TensorProto.INT32),
        helper.make_node("Add", ["count", "running_i"], ["count_next"]),
        helper.make_node("GreaterOrEqual", ["s_next", "budget"], ["spent"]),
        helper.make_node("Or", ["wants", "spent"], ["halt_now"]),
        helper.make_node("Or", ["halted", "halt_now"], ["halted_next"]),
        helper.make_node("Cast", ["halted_next"], ["halted_i"], to=TensorProto.INT32),
        helper.make_node("ReduceMin", ["halted_i"], ["all_i"], keepdims=0),
        helper.make_node("Cast", ["all_i"], ["all"], to=TensorProto.BOOL),
        helper.make_node("Not", ["all"], ["some_running"]),
        helper.make_node("Less", ["s_next", "budget"], ["within"]),
        helper.make_node("And", ["within", "some_running"], ["cond_out"]),
    ]
    body = helper.make_graph(nodes, "act_body",
                             [helper.make_tensor_value_info("iter", TensorProto.INT64, []),
                              helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
                              helper.make_tensor_value_info("s", TensorProto.INT64, []),
                              helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3]),
                              helper.make_tensor_value_info("halted", TensorProto.BOOL, [batch]),
                              helper.make_tensor_value_info("count", TensorProto.INT32, [batch])],
                             [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
                              helper.make_tensor_value_info("s_next", TensorProto.INT64, []),
                              helper.make_tensor_value_info("x_next", TensorProto.FLOAT, [batch, 3]),
                              helper.make_tensor_value_info("halted_next", TensorProto.BOOL, [batch]),
                              helper.make_tensor_value_info("count_next", TensorProto.INT32, [batch])])
    graph = helper.make_graph(
        [const("s0", np.int64(0)), const("go", np.bool_(True)), const("h0", np.zeros(batch, bool)),
         const("c0", np.zeros(batch, np.int32)),
         labelled_loop("act", ["", "go", "s0", "x0", "h0", "c0"], ["steps_run", "x_final", "halted", "steps"], body, "act", None)],
        "act", [helper.make_tensor_value_info("x0", TensorProto.FLOAT, [batch, 3])],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in (("x_final", TensorProto.FLOAT, [batch, 3]),
                                                                 ("halted", TensorProto.BOOL, [batch]),
                                                                 ("steps", TensorProto.INT32, [batch]),
                                                                 ("steps_run", TensorProto.INT64, []))])
    model = ir.from_proto(helper.make_model(graph, opset_imports=OPSET))
    model.metadata_props["hrmc.budget"] = str(budget)
    return model


def execute(model: ir.Model, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto)
    return ort.InferenceSession(proto.SerializeToString(), options).run(None, feed)


def op_types(model: ir.Model) -> set[str]:
    return {node.op_type for node in ir.traversal.RecursiveGraphIterator(model.graph)}


def block_model(batch: int, seq: int, heads: int, head_dim: int, inter: int, seed: int) -> ir.Model:
    """One post-norm transformer block written the way the exporter writes hrm_ref's (rope, attention, SwiGLU).

    x [batch, seq, heads·head_dim] → y, with random weights and rope tables from `seed`.
    """
    rng = np.random.default_rng(seed)
    width, half = heads * head_dim, head_dim // 2
    angles = np.arange(seq)[:, None] * (1e4 ** (-np.arange(half) / half))[None, :]
    tables = {"cos": np.cos(np.concatenate([angles, angles], -1))[:, None, :],
              "sin": np.sin(np.concatenate([angles, angles], -1))[:, None, :]}
    weights = {"w_qkv": (width, 3 * width), "w_o": (width, width), "w_gu": (width, 2 * inter), "w_down": (inter, width)}
    arrays = {name: rng.standard_normal(shape) / np.sqrt(shape[0]) for name, shape in weights.items()} | tables
    initializers = [onnx.numpy_helper.from_array(np.asarray(a, np.float32), name) for name, a in arrays.items()]
    small = {"two": np.float32(2.0), "eps": np.float32(1e-5), "scale": np.float32(head_dim ** -0.5),
             "last": np.array([-1], np.int64), "heads_shape": np.array([-1, seq, 3 * heads, head_dim], np.int64),
             "flat_shape": np.array([-1, seq, width], np.int64), "half": np.array([half], np.int64),
             "end": np.array([2**63 - 1], np.int64), "zero": np.array([0], np.int64),
             "axis3": np.array([3], np.int64), "step1": np.array([1], np.int64)}
    node = helper.make_node
    nodes = [const(name, value) for name, value in small.items()]

    def rms(x: str, out: str) -> None:
        nodes.extend([node("Pow", [x, "two"], [f"{out}_sq"]),
                      node("ReduceMean", [f"{out}_sq", "last"], [f"{out}_ms"], keepdims=1, noop_with_empty_axes=0),
                      node("Add", [f"{out}_ms", "eps"], [f"{out}_shift"]), node("Sqrt", [f"{out}_shift"], [f"{out}_rms"]),
                      node("Reciprocal", [f"{out}_rms"], [f"{out}_inv"]), node("Mul", [x, f"{out}_inv"], [out])])

    def rope(x: str, out: str) -> None:
        nodes.extend([node("Mul", [x, "cos"], [f"{out}_cos"]),
                      node("Slice", [x, "half", "end", "axis3", "step1"], [f"{out}_back"]),
                      node("Neg", [f"{out}_back"], [f"{out}_neg"]),
                      node("Slice", [x, "zero", "half", "axis3", "step1"], [f"{out}_front"]),
                      node("Concat", [f"{out}_neg", f"{out}_front"], [f"{out}_rot"], axis=-1),
                      node("Mul", [f"{out}_rot", "sin"], [f"{out}_sin"]),
                      node("Add", [f"{out}_cos", f"{out}_sin"], [out])])

    nodes += [node("MatMul", ["x", "w_qkv"], ["qkv"]), node("Reshape", ["qkv", "heads_shape"], ["qkv_heads"]),
              node("Split", ["qkv_heads"], ["q", "k", "v"], axis=2, num_outputs=3)]
    rope("q", "q_rot"), rope("k", "k_rot")
    nodes += [node("Transpose", ["q_rot"], ["q_t"], perm=[0, 2, 1, 3]), node("Transpose", ["v"], ["v_t"], perm=[0, 2, 1, 3]),
              node("Transpose", ["k_rot"], ["k_t"], perm=[0, 2, 3, 1]), node("MatMul", ["q_t", "k_t"], ["scores"]),
              node("Mul", ["scores", "scale"], ["scaled"]), node("Softmax", ["scaled"], ["probs"], axis=-1),
              node("MatMul", ["probs", "v_t"], ["heads_out"]), node("Transpose", ["heads_out"], ["attn"], perm=[0, 2, 1, 3]),
              node("Reshape", ["attn", "flat_shape"], ["attn_flat"]), node("MatMul", ["attn_flat", "w_o"], ["o"]),
              node("Add", ["x", "o"], ["h"])]
    rms("h", "n")
    nodes += [node("MatMul", ["n", "w_gu"], ["gu"]), node("Split", ["gu"], ["gate", "up"], axis=2, num_outputs=2),
              node("Sigmoid", ["gate"], ["sig"]), node("Mul", ["gate", "sig"], ["silu"]), node("Mul", ["silu", "up"], ["m"]),
              node("MatMul", ["m", "w_down"], ["down"]), node("Add", ["n", "down"], ["h2"])]
    rms("h2", "y")
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, seq, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, seq, width])], initializers)
    proto = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]))
    return ir.from_proto(proto)
