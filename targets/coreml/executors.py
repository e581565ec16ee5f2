"""The Core ML executors: `coreml` and `ane` (one flavour each), and `coreml-chunked`.

Each runs the functions of a package of its flavour, shipped (`--artifact`: a package `hrmc lower`
wrote, verified; or a 0.1 package set) or lowered afresh from the `fused`-pipeline graphs, one graph
at a time as first needed: step mode converts no more than it runs. Packages have a fixed batch, so a
shipped one runs only at the batch it was lowered for.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from hrmc.hrm_ref import HRM, Batch
from hrmc.hrm_ref.compression import COMPRESSIONS
from hrmc.errors import InputError
from hrmc.lowering.cache import cached
from hrmc.targets import Target
from hrmc.targets.base import TargetExecutor
from hrmc.targets.executor import Arrays, Trace
from hrmc.targets.coreml._coremltools import ct
from hrmc.targets.coreml.lowering import FLAVOURS, plain_weights
from hrmc.targets.coreml.package import PackageFunction, lower_coreml, package_functions, value_vars
from hrmc.targets.coreml.runtime import LABEL, Predict, load, program_constants, replay_kept, runs_with
from hrmc.timing import phase


_CODE = ("targets",)  # hrmc's code that lowers a graph to a package


def _sha256(graph: Path) -> str:
    """A pipeline graph's bytes: what its package is made from."""
    return hashlib.sha256(graph.read_bytes()).hexdigest()


class CoreMLExecutor(TargetExecutor):
    """Package functions of one flavour, shipped (`artifact`) or lowered afresh from the `fused`-pipeline
    graphs, run with predict on macOS and replayed elsewhere. `chunked` drives the chunk (or step)
    function from the host loop."""

    def __init__(self, target: Target, onnx_model: str | Path | None = None, chunked: bool = False,
                 chunk: int | None = None, artifact: str | Path | None = None) -> None:
        super().__init__(target, onnx_model, chunk, artifact)
        self.flavour, self.chunked = target.name, chunked  # a package's flavour is its target's name
        self.name = f"{self.flavour}-chunked" if chunked else self.flavour
        self.floats = np.float16 if target.precision == "float16" else np.float32  # its inputs' and outputs'
        self.spec = FLAVOURS[self.flavour]

    def prepare(self, model: HRM, policy: str, budget: int | None, batch: Batch) -> None:
        self.size = next(iter(batch.values())).shape[0]
        self.functions: dict[str, PackageFunction] = {}
        self.loaded: dict[str, Predict] = {}  # each function is loaded once (an MLModel, or its MIL program), not per call
        super().prepare(model, policy, budget, batch)

    def open_shipped(self, model: HRM, batch: Batch) -> int:
        self.functions = package_functions(self.artifact)
        for function in self.functions.values():
            self.check(function.record, function.path, model, batch)
            if function.flavour != self.flavour:
                raise InputError(f"{function.path} is a {function.flavour} package: the {self.name} executor runs "
                                 f"{self.flavour} packages")
            if function.batch != self.size:
                raise InputError(f"{function.path} was lowered for batch {function.batch}: run with --batch "
                                 f"{function.batch} (or inputs of {function.batch} rows)")
        if "step" not in self.functions:
            raise InputError(f"{self.artifact}: it has no step function (lower it again with hrmc lower)")
        packages = dict.fromkeys(function.path for function in self.functions.values())  # 0.1's sets: several
        stored = (weight for package in packages for weight in program_constants(package))
        self.check_stored_weights(stored, model, batch, self.functions["step"].record.outputs, self.weights())
        if "init" in self.functions:
            inputs = {name: value.numpy() for name, value in batch.items()}
            self.check_initial_carry(self.call("init", inputs), self.floats)
        return self.functions["chunk"].record.chunk if "chunk" in self.functions else 1

    def open_fresh(self, model: HRM, batch: Batch, work: Path, chunk: int | None) -> int:
        structured, graphs = self.lowered(model, batch, work, chunk)
        self.source = structured.name
        return chunk if "chunk" in graphs else 1

    def function(self, role: str) -> PackageFunction:
        """Without an artifact each graph is converted when first needed (step mode converts no more than it runs),
        or read from the cache (lowering/cache.py) where the same graph was converted before."""
        if role not in self.functions:
            if self.artifact is not None:
                raise InputError(f"{self.artifact}: it has no {role} function")
            graph = self.pipeline_graphs[role]
            defined = {"graph": _sha256(graph), "role": role, "flavour": self.flavour, "batch": self.size,
                       "source": self.source, "coremltools": ct.__version__}

            def convert(folder: Path) -> Path:
                return lower_coreml({role: graph}, folder / f"{role}.mlpackage", self.flavour, self.size, self.source)
            with phase(f"lower the {role} graph to Core ML (or the cache)"):
                package = cached("coreml", defined, _CODE, convert, package_functions, self.work())
            self.functions[role] = package_functions(package)[role]
        return self.functions[role]

    def call(self, role: str, feed: dict[str, np.ndarray]) -> Arrays:
        """Run one function on numpy inputs; outputs come back with the ONNX graph's types (float32 for floats)."""
        function = self.function(role)
        if role not in self.loaded:
            self.loaded[role] = load(function.path, function.name, self.spec.compute_units)
        values = self.loaded[role](self.package_feed(feed))
        return {name: value.astype(bool) if name in function.bool_outputs
                else value.astype(np.float32) if value.dtype == np.float16 else value for name, value in values.items()}

    def trace(self, feed: dict[str, np.ndarray], batch: Batch) -> Trace:
        function = self.function("step")
        holders = value_vars(function.path, function.name)
        if not holders:
            raise InputError(f"{function.path}: it records no map from its values to the ONNX graph (written before "
                             "hrmc recorded one): lower it again to localise in it")
        values = replay_kept(function.path, function.name, self.package_feed(feed), set(holders.values()))
        graph = self.pipeline_graph("step", batch)
        return Trace(graph, {name: values[var] for name, var in holders.items() if var in values},
                     f"the {function.name} function of {function.path.name} replayed ({LABEL}), every value kept, "
                     "named as in its pass pipeline's step graph")

    def package_feed(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The package's I/O: floats in its float type, everything else int32."""
        return {name: value.astype(self.floats if value.dtype.kind == "f" else np.int32) for name, value in feed.items()}

    def graph_name(self, role: str) -> str:
        if self.artifact is None or role not in self.functions:
            return f"the {role} package"
        function = self.functions[role]
        return f"{function.path.name} ({function.name})" if function.name != "main" else function.path.name

    def describe(self) -> str:
        chunks = f", {self.chunk}-step chunks with a host loop" if self.chunk else ""
        return (f"{self.name} ({self.shipped()}mlprogram, {self.spec.description}, {self.weights()} "
                f"weights{chunks}, coremltools {ct.__version__}; {runs_with()})")

    def compression(self) -> str | None:
        weights = self.weights()
        return weights if weights in COMPRESSIONS else None

    def weights(self) -> str:
        """How the packages store their weights (packages written before the key stored them plainly)."""
        if self.artifact is None:
            return self.target.weight_storage(None) or plain_weights(self.flavour)
        return next(iter(self.functions.values())).record.weights or plain_weights(self.flavour)
