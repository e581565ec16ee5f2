"""The pass after `unroll-cycles` in every pipeline, which leaves no control flow: `ActToMaskedBudgetPass`, and
`select`, the masked update it makes of each carried value.
"""

from __future__ import annotations

import onnx_ir as ir

from hrmc.names import BUDGET, KIND
from hrmc.passes._loops import PassInputError, inline_iteration, loops_of_kind, replace_loop


def select(graph: ir.Graph, before: ir.Node, active: ir.Value, new: ir.Value, old: ir.Value) -> ir.Value:
    """where(active, new, old), with And/Or for booleans."""
    if new.dtype == ir.DataType.BOOL:
        keep_new = ir.node("And", [active, new])
        inactive = ir.node("Not", [active])
        keep_old = ir.node("And", [inactive.outputs[0], old])
        chosen = ir.node("Or", [keep_new.outputs[0], keep_old.outputs[0]])
        nodes = [keep_new, inactive, keep_old, chosen]
    else:
        nodes = [ir.node("Where", [active, new, old])]
    graph.insert_before(before, nodes)
    chosen_value = nodes[-1].outputs[0]
    chosen_value.dtype, chosen_value.shape = new.dtype, new.shape
    return chosen_value


class ActToMaskedBudgetPass(ir.passes.InPlacePass):
    """`act-to-masked-budget`: the data-dependent ACT Loop becomes `budget` masked copies of its body.

    Before (labelled hrmc.loop = act; runs while some sample is still going and s < budget):

        outputs… = Loop[act](cond₀, s, z_H, z_L, steps, halted, per-step buffers…)
            body: one ACT step, cond_out = (s + 1 < budget) & ~all(halted)

    After (budget = the model's hrmc.budget; no Loop, no If):

        active₀ = cond₀
        v₁ = body(v₀);  v₁ = where(active₀, v₁, v₀);  active₁ = active₀ & cond_out₁
        v₂ = body(v₁);  v₂ = where(active₁, v₂, v₁);  active₂ = active₁ & cond_out₂
        … budget times

    Every carried value is selected by the active flag. Once the Loop would have stopped, nothing
    changes any more, so the outputs (per-step buffers, halted, steps, steps_run) are exactly the
    Loop's. Booleans are selected with And/Or, because onnxruntime has no Where kernel for bool.
    """

    def requires(self, model: ir.Model) -> None:
        loops = loops_of_kind(model.graph, ("act",))
        if loops and BUDGET not in model.metadata_props:
            raise PassInputError(f"ACT Loop node {loops[0].name!r}: the model records no {BUDGET}")
        for loop in loops:
            if loop.inputs[0] is not None:
                raise PassInputError(f"ACT Loop node {loop.name!r} has a trip count input; expected a condition only")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        loops = loops_of_kind(model.graph, ("act",))
        if not loops:
            return ir.passes.PassResult(model, modified=False)
        budget = int(model.metadata_props[BUDGET])
        for loop in loops:
            graph = loop.graph
            active, values = loop.inputs[1], list(loop.inputs[2:])
            for iteration in range(budget):
                step = inline_iteration(loop, iteration, active, values)
                values = [select(graph, loop, active, new, old) for new, old in zip(step.values, values)]
                still = ir.node("And", [active, step.cond])
                graph.insert_before(loop, still)
                active = still.outputs[0]
            replace_loop(loop, values)
        model.metadata_props[KIND] = "static"
        return ir.passes.PassResult(model, modified=True)
