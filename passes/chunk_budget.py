"""The pass `lower_onnx` runs on the one-step model after its pipeline: `ChunkBudgetPass` makes the step graph
every target's step parity runs (k = 1) and the k-step graphs a host loop calls (targets/host_loop.py).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from hrmc.names import CARRY_NAMES, CHUNK, KIND
from hrmc.passes._loops import PassInputError, clone_nodes


class ChunkBudgetPass(ir.passes.InPlacePass):
    """`chunk-budget k`: the one-step graph becomes a k-step graph, with the carry in and out.

    A host loop calls it until every sample has halted, so a static graph costs about what dynamic
    halting costs. With k = 1 it is how every target gets the one-step model that step parity needs.

    Before (the one-step model, cycles already unrolled):

        (z_H, z_L, steps, halted, *batch) → step → (z_H_next, z_L_next, steps_next, halted_next, logits, q…)

    After (k copies chained; weights and batch inputs are shared, not copied):

        c₁ = step(c₀); c₂ = step(c₁); … c_k = step(c_{k−1})
        → (z_H_next … of c_k, logits = stack(logits₁ … logits_k) [k, B, …], …,
           halted_per_step = stack(halted₁ … halted_k) [k, B], steps_per_step likewise)

    Outputs are not frozen for samples that halted inside the chunk: the host loop freezes them,
    as `hrm_ref.run` does.
    """

    def __init__(self, steps: int) -> None:
        super().__init__()
        if steps < 1:
            raise PassInputError(f"chunk-budget needs at least 1 step, got {steps}")
        self.steps = steps

    def requires(self, model: ir.Model) -> None:
        if model.metadata_props.get(KIND) != "step":
            raise ir.passes.PreconditionError("it works on the one-step model (NAME.step.onnx)")
        loop = next((n for n in ir.traversal.RecursiveGraphIterator(model.graph) if n.op_type in ("Loop", "If")), None)
        if loop is not None:
            raise ir.passes.PreconditionError(f"node {loop.name!r} is a {loop.op_type}: run unroll-cycles first")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        inputs = {value.name: value for value in graph.inputs}
        outputs = {value.name: value for value in graph.outputs}
        carry_in = [inputs[name] for name in CARRY_NAMES]
        carry_out = [outputs[f"{name}_next"] for name in CARRY_NAMES]
        heads = [value for value in graph.outputs if value not in carry_out]
        body = list(graph)
        per_step = [[*carry_out, *heads]]
        for copy in range(1, self.steps):
            value_map: dict[ir.Value, ir.Value | None] = dict(zip(carry_in, per_step[-1][:len(CARRY_NAMES)]))
            graph.extend(clone_nodes(body, value_map, f"k{copy}"))
            per_step.append([value_map[value] for value in per_step[0]])
        axis = ir.node("Constant", [], {"value": ir.tensor(np.array([0], dtype=np.int64), name="chunk_axis")})
        graph.append(axis)
        stacked = {}
        named = [(i, v.name) for i, v in enumerate(per_step[0])][len(CARRY_NAMES):]
        for index, name in named + [(2, "steps_per_step"), (3, "halted_per_step")]:
            pieces = [ir.node("Unsqueeze", [step[index], axis.outputs[0]]) for step in per_step]
            concat = ir.node("Concat", [p.outputs[0] for p in pieces], {"axis": 0})
            graph.extend([*pieces, concat])
            first = per_step[0][index]
            concat.outputs[0].dtype = first.dtype
            if first.shape is not None:
                concat.outputs[0].shape = ir.Shape([self.steps, *first.shape])
            stacked[name] = concat.outputs[0]
        last = per_step[-1][:len(CARRY_NAMES)]
        for value in list(graph.outputs):
            graph.outputs.remove(value)
        for name, value in zip(CARRY_NAMES, last):
            value.name = f"{name}_next"  # the final carry keeps the one-step model's names
            graph.outputs.append(value)
        for name, value in stacked.items():
            for old in per_step[0]:
                if old.name == name:
                    old.name = f"{name}.step0"
            value.name = name
            graph.outputs.append(value)
        model.metadata_props[KIND] = "chunk"
        model.metadata_props[CHUNK] = str(self.steps)
        return ir.passes.PassResult(model, modified=True)
