"""The pass that makes a fused graph compute in float16 (the `fused-fp16` pipeline's): `Float16Pass`."""

from __future__ import annotations

import onnx_ir as ir

from hrmc.passes.fuse import DOMAIN

F32, F16 = ir.DataType.FLOAT, ir.DataType.FLOAT16
UNFUSED = ("ReduceMean", "Softmax")
# (function, input position) pairs that the function bodies read in float32.
FLOAT32_SLOTS = {("RMSNorm", 1), ("Rope", 1), ("Rope", 2)}


def _keeps_float32(value: ir.Value) -> bool:
    uses = list(value.uses())
    return bool(uses) and all(node.domain == DOMAIN and (node.op_type, index) in FLOAT32_SLOTS for node, index in uses)


def _retype(value: ir.Value) -> None:
    if value.type is not None and value.dtype == F32:
        value.type = ir.TensorType(F16)


class Float16Pass(ir.passes.InPlacePass):
    """`fp16`: compute in float16, except norms, rope and softmax, which stay float32 inside the `hrmc` functions.

    Before (float32 throughout, after `fuse`):

        z_H: f32 ─► Add(z_H, x) ─► MatMul(·, W: f32) ─► hrmc.RMSNorm(·, eps: f32) ─► … ─► logits: f32

    After (the interface keeps its float32 names and types; the tables the function bodies read
    in float32, rope's cos/sin and the norm's eps, stay float32):

        z_H: f32 ─► Cast(f16) ─► Add ─► MatMul(·, W: f16) ─► hrmc.RMSNorm(·, eps: f32) ─► … ─► Cast(f32) ─► logits: f32

    `hrmc.RMSNorm`, `hrmc.Rope` and the softmax in `hrmc.Attention` cast their input to float32 and
    their result back (see `fuse`), so only the main graph changes here. The pass refuses a graph
    that still has an unfused ReduceMean or Softmax: it would compute a norm or softmax in float16.
    """

    def requires(self, model: ir.Model) -> None:
        for node in model.graph:
            if node.op_type in UNFUSED and node.domain == "":
                raise ir.passes.PreconditionError(
                    f"node {node.name or node.outputs[0].name!r} ({node.op_type}) would run in float16: run `fuse` first")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        for initializer in list(graph.initializers.values()):
            if initializer.dtype == F32 and not _keeps_float32(initializer):
                array = initializer.const_value.numpy().astype("float16")
                initializer.const_value = ir.tensor(array, name=initializer.name)
                _retype(initializer)
        for node in graph:
            self._retype_node(node)
        self._cast_interface(graph)
        return ir.passes.PassResult(model, modified=True)

    @staticmethod
    def _retype_node(node: ir.Node) -> None:
        if node.op_type == "Constant" and _keeps_float32(node.outputs[0]):
            return
        to = node.attributes.get("to")
        if node.op_type == "Cast" and to is not None and to.value == F32:
            node.attributes["to"] = ir.AttrInt64("to", F16)
        value = node.attributes.get("value")
        if node.op_type in ("Constant", "ConstantOfShape") and value is not None and value.value.dtype == F32:
            node.attributes["value"] = ir.AttrTensor("value", ir.tensor(value.value.numpy().astype("float16")))
        for output in node.outputs:
            _retype(output)

    @staticmethod
    def _cast_interface(graph: ir.Graph) -> None:
        """float32 inputs are cast on the way in, float32 outputs on the way out, under their old names."""
        for value in graph.inputs:
            if value.dtype != F32:
                continue
            uses = list(value.uses())
            cast = ir.node("Cast", [value], attributes={"to": F16}, name=f"{value.name}_to_f16")
            cast.outputs[0].name, cast.outputs[0].type = f"{value.name}_f16", ir.TensorType(F16)
            cast.outputs[0].shape = value.shape
            for user, index in uses:
                user.replace_input_with(index, cast.outputs[0])
            graph.insert_before(graph[0], cast)
        for position, value in enumerate(list(graph.outputs)):
            if value.dtype != F16:
                continue
            cast = ir.node("Cast", [value], attributes={"to": F32}, name=f"{value.name}_to_f32")
            name, value.name = value.name, f"{value.name}_f16"
            cast.outputs[0].name, cast.outputs[0].type, cast.outputs[0].shape = name, ir.TensorType(F32), value.shape
            graph.append(cast)
            graph.outputs[position] = cast.outputs[0]
