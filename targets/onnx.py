"""The onnxruntime backend: runs hrmc's ONNX models (CPU; CUDA where present).

Executors:
- `onnx`: the structured graphs of `hrmc export` (ACT and cycles as Loops).
- `static`: the same after the `default` pass pipeline (no Loop or If). Its step model is
  chunk-budget 1.
- `chunked`: a k-step static graph with the carry in and out, driven by a host loop that stops
  once every sample has halted.

Each takes `--onnx-model` as its structured source (the CI use: gate the artifact you ship),
or exports afresh.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from hrm_ref import HRM, Batch, Carry
from hrm_ref.act import initial_carry, resolve_budget
from hrmc.errors import InputError
from lowering.export import export_onnx, read_metadata, step_path_for, weights_sha256
from parity.executors import Arrays, Executor, carry_arrays
from targets.host_loop import carry_feed, run_chunks, split_step, until_steps_run


def session_options() -> ort.SessionOptions:
    """Every graph optimisation on; threads, memory pattern and spinning at onnxruntime's defaults,
    which `python -m bench.ort_options` measured as good as any change to them on the dev machine."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # ORT warns about every constant it drops; errors still show
    return options


def session(path: Path, options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), options or session_options(), providers=ort.get_available_providers())


def check_artifact(path: Path, model: HRM, policy: str, budget: int, seq_len: int) -> dict:
    """The exported file must come from these weights, with this policy, budget and length."""
    meta = read_metadata(path)
    if meta["weights_sha256"] != weights_sha256(model):
        raise InputError(f"{path} was exported from other weights than the model given (check --checkpoint/--preset)")
    for what, given, recorded in (("policy", policy, meta["policy"]), ("budget", budget, meta["budget"]),
                                  ("sequence length", seq_len, meta["seq_len"])):
        if given != recorded:
            raise InputError(f"{path} was exported with {what} {recorded}, not {given}")
    return meta


def structured_source(onnx_model: Path | None, folder: Path, model: HRM, policy: str, budget: int,
                      batch: Batch) -> Path:
    """The structured export every ONNX-based executor starts from: the given file, checked, or a fresh export."""
    seq_len = model.inner.sequence_length(batch)
    path = onnx_model
    if path is None:
        path = folder / "model.onnx"
        export_onnx(model, path, policy, budget, batch)
    check_artifact(path, model, policy, budget, seq_len)
    if not step_path_for(path).is_file():
        raise InputError(f"{step_path_for(path)} (the one-step model beside {path}) not found")
    return path


def lowered_source(onnx_model: Path | None, work: Path, model: HRM, policy: str, budget: int, batch: Batch,
                   pipeline: str, chunk: int | None = None) -> tuple[Path, dict[str, Path]]:
    """The structured source (given or exported into `work`) and its graphs after `pipeline`, for a target."""
    from passes import lower_onnx  # onnx-ir loads only when asked for

    structured = structured_source(onnx_model, work, model, policy, budget, batch)
    return structured, lower_onnx(structured, work / "static.onnx", pipeline, chunk=chunk).graphs


def run_named(graph: ort.InferenceSession, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return dict(zip([output.name for output in graph.get_outputs()], graph.run(None, feed)))


class OnnxExecutor(Executor):
    name = "onnx"
    kind = "structured graph with Loops"

    def __init__(self, onnx_model: str | Path | None = None) -> None:
        self.onnx_model = Path(onnx_model) if onnx_model else None

    def structured(self, model: HRM, policy: str, batch: Batch) -> Path:
        self._folder = tempfile.TemporaryDirectory(prefix="hrmc-onnx-")
        return structured_source(self.onnx_model, Path(self._folder.name), model, policy, self.budget, batch)

    def prepare(self, model: HRM, policy: str, budget: int | None, batch: Batch) -> None:
        self.policy, self.budget = policy, resolve_budget(model, policy, budget)
        self.open(self.structured(model, policy, batch))

    def open(self, path: Path) -> None:
        self.path = path
        self.act, self.one_step = session(path), session(step_path_for(path))
        self.chunked_step = read_metadata(step_path_for(path)).get("kind") == "chunk"

    def step(self, carry: Carry, batch: Batch) -> Arrays:
        return split_step(run_named(self.one_step, carry_feed(carry, batch)), self.chunked_step)

    def run(self, batch: Batch) -> Arrays:
        values = run_named(self.act, {name: value.numpy() for name, value in batch.items()})
        return until_steps_run(values)

    def describe(self) -> str:
        return f"{self.name} ({self.path.name}: {self.kind}, onnxruntime {ort.__version__}, CPU)"


class StaticExecutor(OnnxExecutor):
    name = "static"
    kind = "after the default pass pipeline, no Loop or If"
    chunk: int | None = None

    def prepare(self, model: HRM, policy: str, budget: int | None, batch: Batch) -> None:
        from passes import lower_onnx  # onnx-ir loads only when asked for

        self.policy, self.budget = policy, resolve_budget(model, policy, budget)
        structured = self.structured(model, policy, batch)
        self._lowered = tempfile.TemporaryDirectory(prefix="hrmc-static-")
        lowered = lower_onnx(structured, Path(self._lowered.name) / "model.onnx", chunk=self.chunk)
        self.open(lowered.static_path)
        self.lowered = lowered
        self.start = carry_arrays(initial_carry(model, batch))


class ChunkedExecutor(StaticExecutor):
    """A host loop over the k-step graph: stops as soon as every sample has halted."""

    name = "chunked"

    def __init__(self, onnx_model: str | Path | None, chunk: int) -> None:
        super().__init__(onnx_model)
        self.chunk = chunk
        self.graph_calls = 0
        self.kind = f"{chunk}-step chunks of the static graph, host loop"

    def prepare(self, model: HRM, policy: str, budget: int | None, batch: Batch) -> None:
        super().prepare(model, policy, budget, batch)
        self.chunk_graph = session(self.lowered.chunk_path) if self.lowered.chunk_path else self.one_step

    def run(self, batch: Batch) -> Arrays:
        trajectory, self.graph_calls = run_chunks(lambda feed: run_named(self.chunk_graph, feed), self.start, batch,
                                                  self.chunk)
        return trajectory
