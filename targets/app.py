"""What an app needs of a package besides the pass pipeline's graphs: the initial carry, the final answer, and
every input and output described (issue: "a package an app drives alone").

An app drives a package with the functions named for what it does:

    init   (inputs, puzzle_identifiers) → z_H, z_L, steps, halted      the carry a puzzle starts from
    step   (carry, inputs) → carry_next, outputs                       one ACT step
    chunkK (carry, inputs) → carry_next, outputs [K, …]                K steps (lower --chunk K)
    solve  (inputs) → outputs [budget, …], halted, steps, answer, halt_step   the whole fixed-budget inference

The two graphs made here, from the pipeline's whole-inference graph (ONNX, batch still symbolic):

    init_graph:  H_init [D] ─Expand([B, P, D])→ z_H       (B from Shape(inputs), P, D from the step graph's z_H)
                 L_init [D] ─Expand([B, P, D])→ z_L
                 0          ─Expand([B])→ steps,  false ─Expand([B])→ halted
    with_answer: … steps_run ─Sub(1)→ last
                 … logits [T, B, L, V] ─Gather(last)→ ArgMax(V)→ Cast(int32)→ answer [B, L]
                 … steps [T, B]       ─Gather(last)→ halt_step [B]

The fixed-budget graph stops computing once every sample has halted (rows past steps_run stay zero), and a
halted sample's carry is frozen, so the last row run is each sample's row at the step it halted: `answer` is the
argmax of the logits at each sample's halting step, and `halt_step` the steps it ran.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from hrmc.names import CARRY_NAMES

INITIAL_STATE = {"z_H": "model.inner.H_init", "z_L": "model.inner.L_init"}  # the export's names of hrm_ref's buffers
APP_OUTPUTS = ("answer", "halt_step")  # what `with_answer` adds to the whole inference
CARRY_MEANINGS = {"z_H": "the high-level state", "z_L": "the low-level state",
                  "steps": "the ACT steps each sample has run",
                  "halted": "1 where a sample has halted (its carry then stays as it is)"}


def init_graph(static: ir.Model, step: ir.Model) -> ir.Model:
    """inputs → the initial carry, H_init / L_init at every position (hrm_ref.initial_carry): the graph of `init`."""
    found = {name: static.graph.initializers.get(buffer) for name, buffer in INITIAL_STATE.items()}
    missing = [INITIAL_STATE[name] for name, value in found.items() if value is None]
    if missing:
        raise ValueError(f"the whole-inference graph holds no {', '.join(missing)}: not an hrmc export")
    carry_in = {value.name: value for value in step.graph.inputs if value.name in CARRY_NAMES}
    inputs = [ir.Value(name=value.name, type=value.type, shape=value.shape)
              for value in step.graph.inputs if value.name not in CARRY_NAMES]
    nodes, initializers = [], []

    def constant(name: str, array: np.ndarray) -> ir.Value:
        value = ir.Value(name=name, const_value=ir.tensor(array, name=name), shape=ir.Shape(array.shape),
                         type=ir.TensorType(ir.DataType.from_numpy(array.dtype)))
        initializers.append(value)
        return value

    def node(op: str, args: list[ir.Value], output: str, **attributes) -> ir.Value:
        made = ir.node(op, args, attributes=attributes, outputs=[ir.Value(name=output)])
        nodes.append(made)
        return made.outputs[0]

    rows = node("Shape", [inputs[0]], "batch_size", start=0, end=1)
    outputs = []
    for name, buffer in found.items():
        positions, width = carry_in[name].shape[1:]
        shape = node("Concat", [rows, constant(f"{name}_positions_width", np.array([positions, width], np.int64))],
                     f"{name}_shape", axis=0)
        outputs.append(node("Expand", [constant(buffer.name, buffer.const_value.numpy()), shape], name))
    outputs.append(node("Expand", [constant("no_steps", np.zeros(1, np.int32)), rows], "steps"))
    outputs.append(node("Expand", [constant("not_halted", np.zeros(1, bool)), rows], "halted"))
    for made, like in zip(outputs, (carry_in[name] for name in CARRY_NAMES)):
        made.type, made.shape = like.type, like.shape
    graph = ir.Graph(inputs, outputs, nodes=nodes, initializers=initializers, name="init",
                     opset_imports=static.graph.opset_imports)
    return ir.Model(graph, ir_version=static.ir_version, metadata_props=dict(step.metadata_props))


def with_answer(static: ir.Model) -> ir.Model:
    """The whole inference with `answer` (a model with token logits) and `halt_step` appended: the graph of `solve`."""
    graph = static.graph
    produced = {value.name: value for value in graph.outputs}
    one = ir.Value(name="one_step", const_value=ir.tensor(np.array(1, np.int64), name="one_step"),
                   shape=ir.Shape([]), type=ir.TensorType(ir.DataType.INT64))
    graph.register_initializer(one)
    last = ir.node("Sub", [produced["steps_run"], one], outputs=[ir.Value(name="last_step_run")])
    halt_step = ir.node("Gather", [produced["steps"], last.outputs[0]], attributes={"axis": 0},
                        outputs=[ir.Value(name="halt_step", type=produced["steps"].type,
                                          shape=ir.Shape(produced["steps"].shape[1:]))])
    graph.extend([last, halt_step])
    appended = [halt_step.outputs[0]]
    if "logits" in produced:
        final = ir.node("Gather", [produced["logits"], last.outputs[0]], attributes={"axis": 0},
                        outputs=[ir.Value(name="final_logits")])
        argmax = ir.node("ArgMax", [final.outputs[0]], attributes={"axis": -1, "keepdims": 0},
                         outputs=[ir.Value(name="answer_int64")])
        answer = ir.node("Cast", [argmax.outputs[0]], attributes={"to": ir.DataType.INT32},
                         outputs=[ir.Value(name="answer", type=ir.TensorType(ir.DataType.INT32),
                                           shape=ir.Shape(produced["logits"].shape[1:-1]))])
        graph.extend([final, argmax, answer])
        appended.insert(0, answer.outputs[0])
    graph.outputs.extend(appended)
    return static


def describe(name: str, function: str, dtype: str, shape: tuple) -> str:
    """What an input or output of a package function means, its type and shape, and how an app uses it."""
    dims = "[" + ", ".join(str(d) for d in shape) + "]"
    nxt = "step" if function == "step" else "call"
    carry = CARRY_MEANINGS
    if function == "solve" and name in ("halted", "steps"):
        return {"halted": f"1 from the step each sample halted, {dtype} {dims}, one row per step.",
                "steps": f"the steps each sample has run after each step, {dtype} {dims}, one row per step."}[name]
    base = name.removesuffix("_next")
    if base in carry and name != base:
        return f"{carry[base]} after this {nxt}, {dtype} {dims}: pass it back as {base} to the next step or chunk call."
    if name in carry:
        where = "from init" if function != "init" else "the carry a puzzle starts from"
        if function == "init":
            return f"{carry[name]}, {dtype} {dims}: {where}; pass it to step or chunk as {name}."
        return f"{carry[name]}, {dtype} {dims}: {where}, then the previous call's {name}_next."
    per_step = "one row per step run" if function == "solve" else "one row per step of this call"
    known = {
        "inputs": f"the puzzle, {dtype} {dims}: each position's token id in the training dataset's vocabulary.",
        "puzzle_identifiers": f"each sample's puzzle identifier, {dtype} {dims}: its row of the puzzle embedding "
                              "(0 where the dataset has none).",
        "logits": f"token logits, {per_step}, {dtype} {dims}: a sample's answer is their argmax over the last axis "
                  "at the step it halted.",
        "q_halt_logits": f"the ACT head's halt value, {per_step}, {dtype} {dims}: with policy q-halt a sample halts "
                         "where it exceeds q_continue_logits.",
        "q_continue_logits": f"the ACT head's continue value, {per_step}, {dtype} {dims}.",
        "steps_per_step": f"the steps each sample has run after each step of this call, {dtype} {dims}.",
        "halted_per_step": f"1 where a sample has halted after each step of this call, {dtype} {dims}.",
        "answer": f"the answer, {dtype} {dims}: the argmax of each sample's logits at the step it halted.",
        "halt_step": f"the steps each sample ran, {dtype} {dims}: the step it halted at, or the budget.",
        "steps_run": f"the steps the fixed-budget inference ran, {dtype} {dims} (its budget).",
    }
    return known.get(name, f"the model's {name} output, {per_step}, {dtype} {dims}.")


__all__ = ["APP_OUTPUTS", "CARRY_MEANINGS", "INITIAL_STATE", "describe", "init_graph", "with_answer"]
