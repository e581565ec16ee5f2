"""A step of `cleanup` (passes/cleanup.py): `FoldWeightTransposesPass`."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


class FoldWeightTransposesPass(ir.passes.InPlacePass):
    """`fold-weight-transposes` (a step of `cleanup`): store a transposed weight as its own initializer.

    The exporter folds `F.linear`'s weight transpose into a constant for a weight one loop body reads; a
    weight two loop bodies share (TRM's one network, run by the L cycles and by the H-step) stays a
    Transpose node in the graph, which every target would then run at each use, and behind which a
    target no longer sees a constant weight (the `ane` lowering's float16 pairs need one).

    Before:
        W (initializer [out, in]) ──► Transpose(perm=[1, 0]) ──► t ──► MatMul(x, t) … MatMul(z, t)

    After:
        W.transposed (initializer [in, out]) ──► MatMul(x, W.transposed) … MatMul(z, W.transposed)

    W itself goes once nothing else reads it.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph, folded = model.graph, {}
        for node in list(graph):
            if node.op_type != "Transpose" or node.domain not in ("", "ai.onnx"):
                continue
            source = node.inputs[0]
            if source is None or not source.is_initializer() or source.const_value is None:
                continue
            perm_attribute = node.attributes.get("perm")
            perm = tuple(perm_attribute.as_ints()) if perm_attribute is not None else None  # None: reverse the axes
            key = (source.name, perm)
            if key not in folded:
                array = np.ascontiguousarray(np.transpose(source.const_value.numpy(), perm))
                folded[key] = ir.Value(name=f"{source.name}.transposed", shape=ir.Shape(array.shape),
                                       type=ir.TensorType(source.dtype), const_value=ir.tensor(array))
                graph.register_initializer(folded[key])
            node.outputs[0].replace_all_uses_with(folded[key])
            graph.remove(node, safe=True)
            if not source.uses() and not source.is_graph_input():  # W itself, once nothing reads it
                del graph.initializers[source.name]
        return ir.passes.PassResult(model, modified=bool(folded))
