"""`cleanup`: onnx-ir's own passes, in the order that pays after unrolling.

Before: an unrolled graph with per-iteration copies of the same constants and counters, and nodes
nothing reads (the loop counters' `iteration` constants, dropped trip-count logic):

    a0/iteration = Constant(0)   (unused)
    a0/c = Constant([1])  …  a1/c = Constant([1])  …
    y = Identity(x)

After: unused nodes removed, equal subexpressions merged, Identity forwarded, equal initializers
shared, names made unique, nodes sorted:

    c = Constant([1])  …   (one copy, read by every iteration)

Full constant folding (onnxscript's optimizer) is left out on purpose: on an unrolled graph it
takes minutes, and the exporter already folded the loop bodies once.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common

STEPS = (common.RemoveUnusedNodesPass, common.CommonSubexpressionEliminationPass, common.IdentityEliminationPass,
         common.DeduplicateInitializersPass, common.RemoveUnusedNodesPass, common.NameFixPass,
         common.TopologicalSortPass)


class CleanupPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for step in STEPS:
            modified |= step()(model).modified
        return ir.passes.PassResult(model, modified)
