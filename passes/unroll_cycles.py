"""The first pass of every pipeline, which leaves the ACT Loop the graph's only control flow: `UnrollCyclesPass`."""

from __future__ import annotations

import onnx_ir as ir

from hrmc.names import LOOP, TRIP_COUNT
from hrmc.passes._loops import PassInputError, inline_iteration, loops_of_kind, replace_loop

CYCLE_KINDS = ("h_cycles", "l_cycles")


class UnrollCyclesPass(ir.passes.InPlacePass):
    """`unroll-cycles`: inline the fixed-count H- and L-cycle Loops.

    Before (one ACT step; the exporter's `while_loop`s, labelled hrmc.loop = h_cycles / l_cycles):

        z_H, z_L = Loop[h_cycles, trip_count=2](cond, h0, z_H, z_L)
            body: z_L = Loop[l_cycles, trip_count=2](cond, l0, z_L)
                      body: z_L = L_level(z_L, z_H + x)
                  z_H = H_level(z_H, z_L)

    After (innermost loops first, each body cloned trip_count times; weights referenced, not copied):

        z_L = L_level(z_L, z_H + x); z_L = L_level(z_L, z_H + x); z_H = H_level(z_H, z_L)
        z_L = L_level(z_L, z_H + x); z_L = L_level(z_L, z_H + x); z_H = H_level(z_H, z_L)

    Loops of other kinds (the ACT loop) are left alone; their bodies are unrolled inside.
    """

    def requires(self, model: ir.Model) -> None:
        for loop in loops_of_kind(model.graph, CYCLE_KINDS):
            if not loop.metadata_props.get(TRIP_COUNT, "").isdigit():
                raise PassInputError(f"Loop node {loop.name!r} ({loop.metadata_props[LOOP]}) has no fixed trip count")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        loops = loops_of_kind(model.graph, CYCLE_KINDS)
        for loop in loops:
            cond, values = loop.inputs[1], list(loop.inputs[2:])
            for iteration in range(int(loop.metadata_props[TRIP_COUNT])):
                step = inline_iteration(loop, iteration, cond, values)
                values = step.values
            replace_loop(loop, values)
        return ir.passes.PassResult(model, modified=bool(loops))
