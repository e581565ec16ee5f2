"""The pass every pipeline ends with: `CleanupPass`, onnx-ir's own passes and two of hrmc's, in the order of `STEPS`."""

from __future__ import annotations

import functools
import sys

import onnx_ir as ir
import onnx_ir.passes.common as common

from hrmc.passes.fold_constant_tables import FoldConstantTablesPass
from hrmc.passes.fold_weight_transposes import FoldWeightTransposesPass

# onnx-ir compares only initializers of up to 1024 elements by default; a weight the exporter folded in two
# loop bodies (TRM's network, shared by the L cycles and the H-step) is far larger, and would be stored twice.
STEPS = (FoldWeightTransposesPass, FoldConstantTablesPass, common.RemoveUnusedNodesPass,
         common.CommonSubexpressionEliminationPass, common.IdentityEliminationPass,
         functools.partial(common.DeduplicateInitializersPass, size_limit=sys.maxsize),
         common.RemoveUnusedNodesPass, common.NameFixPass, common.TopologicalSortPass)


class CleanupPass(ir.passes.InPlacePass):
    """`cleanup`: onnx-ir's own passes, in the order that pays after unrolling.

    Before: an unrolled graph with per-iteration copies of the same constants and counters, and nodes
    nothing reads (the loop counters' `iteration` constants, dropped trip-count logic), and weights
    read through a Transpose node:

        a0/iteration = Constant(0)   (unused)
        a0/c = Constant([1])  …  a1/c = Constant([1])  …
        y = Identity(x)
        t = Transpose(W)

    After: transposed weights stored as such (`fold_weight_transposes`), the RoPE tables computed once
    (`fold_constant_tables`), unused nodes removed, equal subexpressions merged, Identity forwarded,
    equal initializers shared (of any size), names made unique, nodes sorted:

        c = Constant([1])  …   (one copy, read by every iteration)
        W.transposed (initializer)

    Full constant folding (onnxscript's optimizer) is left out on purpose: on an unrolled graph it
    takes minutes, and the exporter already folded the loop bodies once.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for step in STEPS:
            modified |= step()(model).modified
        return ir.passes.PassResult(model, modified)
