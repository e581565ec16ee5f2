"""A step of `cleanup` (passes/cleanup.py): `FoldConstantTablesPass`, and the ops it folds (`FOLDS`)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx_ir as ir

FOLDS: dict[str, Callable[[ir.Node, list[np.ndarray]], np.ndarray]] = {
    "Concat": lambda node, arrays: np.concatenate(arrays, axis=node.attributes["axis"].as_int()),
    "Cos": lambda node, arrays: np.cos(arrays[0].astype(np.float64)).astype(arrays[0].dtype),
    "Sin": lambda node, arrays: np.sin(arrays[0].astype(np.float64)).astype(arrays[0].dtype),
}


class FoldConstantTablesPass(ir.passes.InPlacePass):
    """`fold-constant-tables` (a step of `cleanup`): compute the RoPE tables the exporter left to run time.

    The exporter folds constant subgraphs only up to a size: past it (trm-maze's 916 positions × 64
    angles) the cos and sin tables stay ops computed at run time from a constant angle table. A float16
    target then takes the cosine of angles up to 915 held in float16, whose spacing there is 0.5: tables
    40 dB below the contract (`hrmc parity torch ane --preset trm-maze --localize` named `node_cos`).
    Computed here once, in float64 from the float32 angles and rounded once, they are constants that
    every target stores in its own float type.

    Before:
        angles (initializer [S, D/2]) ──► Concat(angles, angles) ──► cat ──► Cos ──► cos ──► …
                                                                       └───► Sin ──► sin ──► …

    After:
        cos (initializer [S, D]) ──► …        sin (initializer [S, D]) ──► …

    Only Concat, Cos and Sin are folded, and only where every input is a constant: what the exporter
    leaves of the tables. Folding everything foldable takes minutes on an unrolled graph (`cleanup`).
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph, modified = model.graph, False
        for node in list(graph):
            if node.op_type not in FOLDS or node.domain not in ("", "ai.onnx") or not node.inputs:
                continue
            tensors = [ir.convenience.get_const_tensor(value) if value is not None else None for value in node.inputs]
            if any(tensor is None for tensor in tensors):
                continue
            array = np.ascontiguousarray(FOLDS[node.op_type](node, [tensor.numpy() for tensor in tensors]))
            computed, tensor = node.outputs[0], ir.tensor(array)
            table = ir.Value(name=computed.name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype),
                             const_value=tensor)
            computed.name = f"{computed.name}.computed"  # the table takes its name: peer tools match by name
            graph.register_initializer(table)
            computed.replace_all_uses_with(table, replace_graph_outputs=True)
            graph.remove(node, safe=True)
            modified = True
        return ir.passes.PassResult(model, modified)
