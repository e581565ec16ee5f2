"""The MLX executors: `mlx` (the whole-inference module and the step module) and `mlx-chunked`.

Each runs an emitted folder, shipped (`--artifact`, checked against its record) or emitted afresh
from the `fused`-pipeline graphs, loaded and compiled, on MLX's default device; `mlx-chunked`
drives the chunk module (or the step module) from the host loop.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir

from hrmc.hrm_ref import HRM, Batch
from hrmc.targets import Target
from hrmc.targets.base import TargetExecutor
from hrmc.targets.executor import Arrays, Trace
from hrmc.targets.mlx.lowering import CLASSES, identifiers, module_name
from hrmc.record import Record
from hrmc.targets.mlx.package import lower_mlx, read_record, stored_weights
from hrmc.targets.mlx.runtime import call_uncompiled, load_package, run


class MlxExecutor(TargetExecutor):
    """The emitted folder (shipped, or emitted afresh), loaded and compiled, on MLX's default device.
    `chunked` drives the chunk module (or the step module) from the host loop."""

    def __init__(self, target: Target, onnx_model: str | Path | None = None, chunked: bool = False,
                 chunk: int | None = None, artifact: str | Path | None = None) -> None:
        super().__init__(target, onnx_model, chunk, artifact)
        self.chunked = chunked
        self.name = "mlx-chunked" if chunked else "mlx"

    def open_shipped(self, model: HRM, batch: Batch) -> int:
        """Its record, metadata and weights checked before its module is imported: no code of a changed folder runs."""
        record = read_record(self.artifact)
        self.check(record, self.artifact, model, batch)
        self.check_stored_weights(stored_weights(self.artifact).items(), model, batch, record.outputs)
        steps = self.open(self.artifact, model, batch)
        if module_name("init") in self.graphs:
            self.check_initial_carry(self.call("init", {name: value.numpy() for name, value in batch.items()}),
                                     np.float32)
        return steps

    def open_fresh(self, model: HRM, batch: Batch, work: Path, chunk: int | None) -> int:
        structured, graphs = self.lowered(model, batch, work, chunk)
        return self.open(lower_mlx(graphs, work / "mlx", structured.name).folder, model, batch)

    def open(self, folder: Path, model: HRM, batch: Batch) -> int:
        self.folder = folder
        config, self.graphs = load_package(folder)
        record = Record.parse(config, folder)
        self.check(record, folder, model, batch)
        return record.chunk or 1

    def call(self, role: str, feed: dict[str, np.ndarray]) -> Arrays:
        return run(self.graphs[module_name(role)], feed)

    def trace(self, feed: dict[str, np.ndarray], batch: Batch) -> Trace:
        graph = self.pipeline_graph("step", batch)
        named = identifiers(ir.load(str(graph)), graph.name)
        values = call_uncompiled(self.folder, CLASSES["step"][0], feed)
        return Trace(graph, {named[identifier]: value for identifier, value in values.items() if identifier in named},
                     f"the step module of {self.folder.name} called uncompiled, its locals read as it returns, "
                     "named as in its pass pipeline's step graph")

    def graph_name(self, role: str) -> str:
        return f"the {module_name(role)} module"

    def describe(self) -> str:
        from hrmc.targets.mlx import _mlx

        how = f"{self.chunk}-step chunks, host loop" if self.chunk else "whole inference"
        return (f"{self.name} ({self.shipped()}pipeline {self.target.pipeline}, emitted module, mx.compile, {how}; "
                f"mlx {_mlx.mx.__version__}, {_mlx.mx.default_device()}, {_mlx.describe()})")
