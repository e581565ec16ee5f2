"""The Core ML executors: `coreml` and `ane` (one flavour each), and `coreml-chunked`.

Each runs the packages of its flavour, shipped (`--artifact`: a set `hrmc lower` wrote, verified)
or lowered afresh from the `fused`-pipeline graphs, one package at a time as first needed: step
mode converts no more than it runs. Packages have a fixed batch, so a shipped set runs only at the
batch it was lowered for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hrmc.hrm_ref import HRM, Batch
from hrmc.errors import InputError
from hrmc.targets import TARGETS
from hrmc.targets.base import TargetExecutor
from hrmc.targets.executor import Arrays
from hrmc.targets.coreml._coremltools import ct
from hrmc.targets.coreml.lowering import FLAVOURS, plain_weights
from hrmc.targets.coreml.package import CoreMLPackage, lower_coreml, package_info, package_set
from hrmc.targets.coreml.runtime import Predict, load, runs_with


class CoreMLExecutor(TargetExecutor):
    """Packages of one flavour, shipped (`artifact`) or lowered afresh from the `fused`-pipeline graphs, run
    with predict on macOS and replayed elsewhere. `chunked` drives the chunk (or step) package from the host loop."""

    def __init__(self, flavour: str, onnx_model: str | Path | None = None, chunked: bool = False,
                 chunk: int | None = None, artifact: str | Path | None = None) -> None:
        super().__init__(onnx_model, chunk, artifact)
        self.flavour, self.chunked = flavour, chunked
        self.name = f"{flavour}-chunked" if chunked else flavour

    def prepare(self, model: HRM, policy: str, budget: int | None, batch: Batch) -> None:
        self.size = next(iter(batch.values())).shape[0]
        self.packages: dict[str, CoreMLPackage] = {}
        self.loaded: dict[Path, Predict] = {}  # each package is loaded once (an MLModel, or its MIL program), not per call
        super().prepare(model, policy, budget, batch)

    def open_shipped(self, model: HRM, batch: Batch) -> int:
        self.paths = package_set(self.artifact)
        for role, path in self.paths.items():
            info = self.packages[role] = package_info(path)
            self.check(info.meta, path, model, batch)
            if info.flavour != self.flavour:
                raise InputError(f"{path} is a {info.flavour} package: the {self.name} executor runs "
                                 f"{self.flavour} packages")
            if info.batch != self.size:
                raise InputError(f"{path} was lowered for batch {info.batch}: run with --batch {info.batch} "
                                 f"(or inputs of {info.batch} rows)")
        if "step" not in self.paths:
            raise InputError(f"{self.artifact}: its set has no step package (lower it again with hrmc lower)")
        return int(self.packages["chunk"].meta["chunk"]) if "chunk" in self.packages else 1

    def open_fresh(self, model: HRM, batch: Batch, work: Path, chunk: int | None) -> int:
        structured, self.graphs = self.lowered(model, batch, work, chunk)
        self.source = structured.name
        return chunk if "chunk" in self.graphs else 1

    def package(self, role: str) -> CoreMLPackage:
        """Without an artifact each package is built when first needed: step mode converts no more than it runs."""
        if role not in self.packages:
            if self.artifact is not None:
                raise InputError(f"{self.artifact}: its set has no {role} package")
            out = Path(self._work.name) / f"{role}.mlpackage"
            path = lower_coreml({role: self.graphs[role]}, out, self.flavour, self.size, self.source)[role]
            self.packages[role] = package_info(path)
        return self.packages[role]

    def call(self, role: str, feed: dict[str, np.ndarray]) -> Arrays:
        """Run one package on numpy inputs; outputs come back with the ONNX graph's types (float32 for floats)."""
        package = self.package(role)
        floats = np.float16 if FLAVOURS[self.flavour].float_type == "fp16" else np.float32
        # the package's I/O: floats in its float type, everything else int32
        feed = {name: value.astype(floats if value.dtype.kind == "f" else np.int32) for name, value in feed.items()}
        if package.path not in self.loaded:
            self.loaded[package.path] = load(package.path, FLAVOURS[self.flavour].compute_units)
        values = self.loaded[package.path](feed)
        return {name: value.astype(bool) if name in package.bool_outputs
                else value.astype(np.float32) if value.dtype == np.float16 else value for name, value in values.items()}

    def graph_name(self, role: str) -> str:
        return self.paths[role].name if self.artifact is not None and role in self.paths else f"the {role} package"

    def describe(self) -> str:
        chunks = f", {self.chunk}-step chunks with a host loop" if self.chunk else ""
        return (f"{self.name} ({self.shipped()}mlprogram, {FLAVOURS[self.flavour].description}, {self.weights()} "
                f"weights{chunks}, coremltools {ct.__version__}; {runs_with()})")

    def weights(self) -> str:
        """How the packages store their weights (packages written before the key stored them plainly)."""
        if self.artifact is None:
            return TARGETS[self.flavour].weight_storage(None) or plain_weights(self.flavour)
        return next(iter(self.packages.values())).meta.get("weights", plain_weights(self.flavour))
