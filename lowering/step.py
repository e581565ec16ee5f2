"""The one-step model, read out of the traced whole inference: one `torch.export` trace per model, not two.

The ACT Loop's body is one ACT step (hrm_ref's `act.step`, the code a one-step trace would run), so the one-step
model is that body with the carry made graph inputs, the step's outputs made graph outputs, and what only the
loop needs (counter, per-step buffers, freezing) left behind:

    Before (NAME.onnx, the traced ACTGraph):

        batch → initial carry, zero buffers → Loop[act](cond, counter, z_H, z_L, steps, halted, …, unfrozen…)
            body: carry', outputs = step(carry, batch)     ⊃ Loop[h_cycles] ⊃ Loop[l_cycles]
                  frozen, buffers written at slot counter; carried out: carry', …, outputs (unfrozen)

    After (NAME.step.onnx):

        (z_H, z_L, steps, halted, *batch) → the body's step nodes ⊃ Loop[h_cycles] ⊃ Loop[l_cycles]
            → (z_H_next, z_L_next, steps_next, halted_next, *outputs)

The body's nodes reading values of the outer graph (the batch, the weights, constants) keep reading them: those
nodes of the outer graph stay, everything else (the initial carry, the buffers, the Loop) is removed as unused.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir

from hrmc.errors import HrmcError
from hrmc.lowering.graph import ACT_CARRIED, OUTPUT_GROUPS
from hrmc.names import CARRY_NAMES, LOOP

_LOOP_STATE = 2  # a Loop body's first inputs: the iteration number and the condition; its first output: the condition


def step_model(act: onnx.ModelProto, outputs: list[str]) -> onnx.ModelProto:
    """The one-step model of the traced whole inference `act` (its Loops labelled; left unchanged), whose heads
    return `outputs`."""
    model = ir.serde.deserialize_model(act)
    graph = model.graph
    loops = [node for node in graph if node.op_type == "Loop" and node.metadata_props.get(LOOP) == "act"]
    if len(loops) != 1:
        raise HrmcError(f"the graph has {len(loops)} ACT Loops (Loop nodes labelled {LOOP} = act); expected one")
    loop = loops[0]
    body = loop.attributes["body"].as_graph()
    carried = len(ACT_CARRIED) + len(OUTPUT_GROUPS) * len(outputs)
    if len(body.inputs) != _LOOP_STATE + carried or len(body.outputs) != 1 + carried:
        raise HrmcError(f"ACT Loop {loop.name!r} carries {len(body.inputs) - _LOOP_STATE} values; expected {carried}")
    carry_positions = [ACT_CARRIED.index(name) for name in CARRY_NAMES]
    carry_in = [body.inputs[_LOOP_STATE + i] for i in carry_positions]
    carry_out = [body.outputs[1 + i] for i in carry_positions]
    unfrozen = list(body.outputs[1 + carried - len(outputs):])
    starts = [loop.inputs[_LOOP_STATE + i] for i in carry_positions]  # the initial carry: its types and shapes

    batch = list(graph.inputs)
    graph.outputs.clear()
    graph.remove(loop, safe=True)  # detached from its inputs, which are then unused unless the body reads them
    carry = [ir.Value(name=name, type=start.type, shape=start.shape) for name, start in zip(CARRY_NAMES, starts)]
    for old, new in zip(carry_in, carry):
        old.replace_all_uses_with(new)
    graph.inputs.clear()
    graph.inputs.extend([*carry, *batch])
    loop_state = list(body.inputs)
    body.outputs.clear()
    body.inputs.clear()
    for node in list(body):
        body.remove(node, safe=False)
        graph.append(node)
    for value, name in zip([*carry_out, *unfrozen], [*(f"{n}_next" for n in CARRY_NAMES), *outputs]):
        value.name = name
        graph.outputs.append(value)
    ir.passes.common.RemoveUnusedNodesPass()(model)

    for node in ir.traversal.RecursiveGraphIterator(graph):
        left = next((value for value in node.inputs if value in loop_state), None)
        if left is not None:
            raise HrmcError(f"node {node.name!r} of the ACT step reads the loop's {left.name!r}, not the carry")
    return ir.serde.serialize_model(model)
