"""The onnxruntime executors `onnx`, `static` and `chunked` (the package's docstring says what each
runs): one onnxruntime session per graph they call, the step graph's outputs read as the graph
says it stacks them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from hrmc.hrm_ref import HRM, Batch
from hrmc.lowering.export import read_record
from hrmc.passes import cached_lowering, lower_onnx, structured_parts
from hrmc.targets.base import TargetExecutor
from hrmc.targets.executor import Arrays, Trace
from hrmc.targets.onnx.package import chunk_steps, shipped_graphs, stored_weights
from hrmc.targets.onnx.runtime import run_every_value, run_named, session


class OnnxExecutor(TargetExecutor):
    """The structured export, Loops and all: its whole graph and its step graph, one session each."""

    name = "onnx"
    kind = "structured graph with Loops"
    whole_role = "act"

    def open_shipped(self, model: HRM, batch: Batch) -> int:
        graphs, record = shipped_graphs(self.artifact, self.whole_role)
        self.check(record, self.artifact, model, batch)
        self.check_stored_weights(stored_weights(graphs.values()), model, batch, record.outputs)
        return self.open(graphs)

    def open_fresh(self, model: HRM, batch: Batch, work: Path, chunk: int | None) -> int:
        return self.open(self.fresh_graphs(self.structured(model, batch, work), work, chunk))

    def fresh_graphs(self, structured: Path, work: Path, chunk: int | None) -> dict[str, Path]:
        """No artifact given: the graphs this executor runs, made from the structured export."""
        return structured_parts(structured)

    def open(self, graphs: dict[str, Path]) -> int:
        self.graphs, self.unrolled = graphs, None
        roles = [self.whole_role, "step"] + (["chunk"] if "chunk" in graphs else [])
        self.sessions = {role: session(graphs[role]) for role in roles}
        self.chunked_step = read_record(graphs["step"]).kind == "chunk"
        return chunk_steps(graphs)

    def call(self, role: str, feed: dict[str, np.ndarray]) -> Arrays:
        return run_named(self.sessions[role], feed)

    def trace(self, feed: dict[str, np.ndarray], batch: Batch) -> Trace:
        graph = self.traced_graph()
        return Trace(graph, run_every_value(graph, feed), f"{graph.name}, every node output marked (onnxruntime)")

    def traced_graph(self) -> Path:
        """The step graph itself; the structured one's Loops hide their values: its static lowering instead."""
        if self.unrolled is None:
            self.unrolled = lower_onnx(self.graphs["act"], self.work() / "unrolled.onnx").step_path
        return self.unrolled

    def graph_name(self, role: str) -> str:
        return self.graphs.get(role, self.graphs["step"]).name

    def describe(self) -> str:
        shipped = "shipped artifact " if self.artifact else ""
        return f"{self.name} ({shipped}{self.graphs[self.whole_role].name}: {self.kind}, onnxruntime {ort.__version__}, CPU)"


class StaticExecutor(OnnxExecutor):
    name = "static"
    kind = "after the static pass pipeline, no Loop or If"
    whole_role = "static"

    def fresh_graphs(self, structured: Path, work: Path, chunk: int | None) -> dict[str, Path]:
        return cached_lowering(structured, work, "model.static.onnx", chunk=chunk)

    def traced_graph(self) -> Path:
        return self.graphs["step"]


class ChunkedExecutor(StaticExecutor):
    """A host loop over the k-step graph: stops as soon as every sample has halted."""

    name = "chunked"
    chunked = True

    def open(self, graphs: dict[str, Path]) -> int:
        steps = super().open(graphs)
        self.kind = f"{steps}-step chunks of the static graph, host loop"
        return steps
