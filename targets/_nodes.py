"""What the MLX and Core ML lowerings share: reading an ONNX node's constants and attributes, and refusing a graph.

Each target walks the static graph node by node through its own op table; `NodeReader` is the
part of that walk that does not depend on the target.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from hrmc.errors import InputError

INT64_MAX = 2**62  # ONNX writes "to the end" of a Slice as INT64_MAX
CONTROL_FLOW = ("Loop", "If", "Scan")


class LowerError(InputError):
    """A graph a target lowering cannot take: names the node and the op."""


def op_key(node: ir.Node) -> str:
    """The op-table key: `Add` for the default domain, `hrmc.RMSNorm` for our fused functions."""
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"


def require_static(graph: ir.Graph, source: str, target: str) -> None:
    for node in graph:
        if node.op_type in CONTROL_FLOW:
            raise LowerError(f"{source}: node {node.name!r} is a {node.op_type}: the {target} lowering takes a static "
                             "graph (lower with a pass pipeline first)")


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's array if it is an initializer or a Constant node's output, else None."""
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and "value" in producer.attributes:
        return producer.attributes["value"].value.numpy()
    return None


class NodeReader:
    """The node being lowered, and how to read its optional inputs, constants and attributes."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.node: ir.Node | None = None

    def fail(self, message: str) -> LowerError:
        return LowerError(f"{self.source}: node {self.node.name!r} ({self.node.op_type}): {message}")

    def const(self, value: ir.Value | None) -> np.ndarray | None:
        return constant_array(value)

    def ints(self, value: ir.Value | None, what: str) -> list[int]:
        array = self.const(value)
        if array is None:
            raise self.fail(f"{what} must be a constant")
        return [int(v) for v in np.ravel(array)]

    def attr(self, name: str, default=None):
        attribute = self.node.attributes.get(name)
        return default if attribute is None else attribute.value

    @staticmethod
    def optional(node: ir.Node, index: int) -> ir.Value | None:
        """Input `index`, or None where the node leaves it out."""
        return node.inputs[index] if len(node.inputs) > index else None

    def slice_arguments(self, node: ir.Node) -> list[tuple[int, int | None, int, int]]:
        """Slice's (start, end or None for "to the end", axis, step) per sliced axis; all must be constants."""
        starts, ends = self.ints(node.inputs[1], "starts"), self.ints(node.inputs[2], "ends")
        axes, steps = self.optional(node, 3), self.optional(node, 4)
        axes = self.ints(axes, "axes") if axes is not None else list(range(len(starts)))
        steps = self.ints(steps, "steps") if steps is not None else [1] * len(starts)
        return [(start, None if abs(end) >= INT64_MAX else end, axis, step)
                for start, end, axis, step in zip(starts, ends, axes, steps)]
