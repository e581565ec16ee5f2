"""Inline iterations of an ONNX Loop body in front of the Loop node: what the unrolling passes share.

An ONNX Loop node has inputs (M, cond, v_initial…) and a body with inputs (iteration, cond_in,
v_in…) and outputs (cond_out, v_out…). Our exporter emits no scan outputs. One inlined
iteration clones the body's nodes with the body's inputs bound to given values. Weights and
other outer-scope values are referenced, never copied.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnx_ir import _cloner

from hrmc.errors import HrmcError
from hrmc.names import LOOP, LOOPS, TRIP_COUNT

COPY = "hrmc.copy"  # in a node's in-memory `meta` (never saved): a copy of a loop body's node, made here


class PassInputError(HrmcError, ir.passes.PreconditionError):
    """The graph is not one this pass can transform (named node, reason). A precondition error to onnx-ir too:
    raised by a pass's `requires`, it comes out of the pass as it is, not wrapped in onnx-ir's own."""


@dataclass
class Iteration:
    cond: ir.Value  # the body's cond_out
    values: list[ir.Value]  # the body's v_out, one per loop-carried value


def loop_kind(node: ir.Node) -> str:
    """The kind hrmc's exporter recorded on a Loop node; an error for a Loop without it."""
    if LOOP not in node.metadata_props:
        raise PassInputError(f"Loop node {node.name!r} has no hrmc metadata: was it made by hrmc export?")
    return node.metadata_props[LOOP]


def restore_loop_labels(model: ir.Model, source: object) -> None:
    """Put back the Loop labels a graph tool dropped (onnxsim keeps model metadata, not node metadata):
    by node name from the export's `hrmc.loops` list, else by nesting depth, which fixes each kind."""
    listed = json.loads(model.metadata_props.get(LOOPS, "[]"))
    by_name = {entry["node"]: entry for entry in listed}
    by_depth = {depth: [e for e in listed if e["depth"] == depth] for depth in {e["depth"] for e in listed}}
    for depth, node in _loops_with_depth(model.graph):
        if LOOP in node.metadata_props:
            continue
        entry = by_name.get(node.name)
        if entry is None and len(by_depth.get(depth, [])) == 1:  # renamed: one Loop per depth in an HRM export
            entry = by_depth[depth][0]
        if entry is None:
            raise PassInputError(f"{source}: Loop node {node.name!r} has no hrmc label and the model's hrmc.loops "
                                 "does not name it: was it made by hrmc export?")
        node.metadata_props[LOOP] = entry["kind"]
        node.metadata_props[TRIP_COUNT] = "" if entry["trip_count"] is None else str(entry["trip_count"])


def _loops_with_depth(graph: ir.Graph, depth: int = 0) -> list[tuple[int, ir.Node]]:
    found = []
    for node in graph:
        if node.op_type == "Loop":
            found.append((depth, node))
        for attribute in node.attributes.values():
            if attribute.type == ir.AttributeType.GRAPH:
                found += _loops_with_depth(attribute.as_graph(), depth + 1)
    return found


def loops_of_kind(graph: ir.Graph, kinds: tuple[str, ...]) -> list[ir.Node]:
    """Loop nodes of the given kinds anywhere in `graph`, innermost first."""
    found = _loops_with_depth(graph)
    for _, node in found:
        loop_kind(node)
        if len(node.outputs) != len(node.inputs) - 2:
            raise PassInputError(f"Loop node {node.name!r} has scan outputs, which hrmc's passes do not handle")
    return [node for _, node in sorted(found, key=lambda pair: -pair[0]) if node.metadata_props[LOOP] in kinds]


def constant(graph: ir.Graph, before: ir.Node, value: np.ndarray, name: str) -> ir.Value:
    node = ir.node("Constant", [], {"value": ir.tensor(value, name=name)}, name=name)
    graph.insert_before(before, node)
    return node.outputs[0]


def _short(name: str | None) -> str:
    """The exporter's name without its `_while_loop_body_graph_0…` scope suffixes."""
    return (name or "").split("_while_loop")[0]


def clone_nodes(nodes: list[ir.Node], value_map: dict[ir.Value, ir.Value | None], tag: str) -> list[ir.Node]:
    """Copies of `nodes` reading `value_map`'s values, named `tag/…`; other inputs (weights) are shared."""
    cloner = _cloner.Cloner(attr_map={}, value_map=value_map, metadata_props={}, allow_outer_scope_values=True)
    copies = [cloner.clone_node(node) for node in nodes]
    for index, copy in enumerate(copies):
        copy.meta[COPY] = True
        copy.name = f"{tag}/{_short(copy.name) or f'{copy.op_type}_{index}'}"
        for output in copy.outputs:
            output.name = f"{tag}/{_short(output.name)}"
    return copies


def inline_iteration(loop: ir.Node, iteration: int, cond: ir.Value, values: list[ir.Value]) -> Iteration:
    """Insert one copy of `loop`'s body before it, with the body inputs bound as given."""
    graph = loop.graph
    body = loop.attributes["body"].as_graph()
    tag = f"{loop.metadata_props[LOOP][0]}{iteration}"  # a3, h1, l0: short, names add up over 10k nodes
    counter = constant(graph, loop, np.array(iteration, dtype=np.int64), f"{tag}.iteration")
    value_map: dict[ir.Value, ir.Value | None] = dict(zip(body.inputs, [counter, cond, *values]))
    graph.insert_before(loop, clone_nodes(list(body), value_map, tag))
    cond_out, *values_out = (value_map[output] for output in body.outputs)
    return Iteration(cond_out, values_out)


def replace_loop(loop: ir.Node, final_values: list[ir.Value]) -> None:
    """Let the Loop's users read `final_values` instead, then drop the Loop and detach its body from the
    values it read: weights would otherwise keep the dropped body's nodes as users, and outlive their
    last real reader (`cleanup`'s unused-node removal keeps a value anything uses)."""
    for output, value in zip(loop.outputs, final_values):
        was_output = output.is_graph_output()
        name = output.name
        output.replace_all_uses_with(value, replace_graph_outputs=True)
        if was_output:  # keep output names stable: peer tools match by name
            output.name, value.name = f"{name}.replaced", name
    body = loop.attributes["body"].as_graph()
    loop.graph.remove(loop, safe=True)
    for node in body.all_nodes():
        for index in range(len(node.inputs)):
            node.replace_input_with(index, None)
