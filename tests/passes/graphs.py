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
