"""The onnxruntime backend: runs hrmc's ONNX models (CPU; CUDA where present).

Executors:
- `onnx`: the structured graphs of `hrmc export` (ACT and cycles as Loops).
- `static`: the same after the `static` pass pipeline (no Loop or If). Its step model is
  chunk-budget 1.
- `chunked`: a k-step static graph with the carry in and out, driven by a host loop that stops
  once every sample has halted.

Each runs either a shipped artifact (`--artifact`: exactly those files, checked against their
recorded parts and the model given) or graphs made afresh from `--onnx-model` or a fresh export.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np
import onnxruntime as ort

from hrmc.hrm_ref import HRM, Batch, Carry
from hrmc.hrm_ref.act import initial_carry, resolve_budget
from hrmc.errors import InputError
from hrmc.files import check_output
from hrmc.lowering.artifact import bound_parts
from hrmc.lowering.export import export_onnx, read_metadata, step_path_for, weights_sha256
from hrmc.passes import lower_onnx, structured_parts
from hrmc.targets import LowerOptions, Target
from hrmc.targets.executor import DEFAULT_CHUNK, Arrays, Executor, carry_arrays
from hrmc.targets.host_loop import carry_feed, run_chunks, split_step, until_steps_run


def session_options() -> ort.SessionOptions:
    """Every graph optimisation on; threads, memory pattern and spinning at onnxruntime's defaults,
    which `python -m hrmc.bench.ort_options` measured as good as any change to them on the dev machine."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # ORT warns about every constant it drops; errors still show
    return options


def session(path: Path, options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), options or session_options(), providers=ort.get_available_providers())


def check_source(meta: Mapping[str, object], where: Path, model: HRM | None, policy: str, budget: int,
                 seq_len: int) -> None:
    """An artifact (exported, lowered, emitted or packaged) must come from these weights (unless `model`
    is None), with this policy, budget and sequence length: `meta` is the hrmc metadata it carries."""
    if model is not None and meta.get("weights_sha256") != weights_sha256(model):
        raise InputError(f"{where} was made from other weights than the model given (check --checkpoint/--preset)")
    for what, given, recorded in (("policy", policy, meta.get("policy")), ("budget", budget, meta.get("budget")),
                                  ("sequence length", seq_len, meta.get("seq_len"))):
        if str(given) != str(recorded):
            raise InputError(f"{where} was made with {what} {recorded}, not {given} (see --policy, --budget, --seq-len)")


def structured_source(onnx_model: Path | None, folder: Path, model: HRM, policy: str, budget: int,
                      batch: Batch) -> Path:
    """The structured export every ONNX-based executor starts from: the given file, checked, or a fresh export."""
    path = onnx_model
    if path is None:
        path = folder / "model.onnx"
        export_onnx(model, path, policy, budget, batch)
    structured_parts(path)
    check_source(read_metadata(path), path, model, policy, budget, model.inner.sequence_length(batch))
    return path


def lowered_source(onnx_model: Path | None, work: Path, model: HRM, policy: str, budget: int, batch: Batch,
                   pipeline: str, chunk: int | None = None) -> tuple[Path, dict[str, Path]]:
    """The structured source (given or exported into `work`) and its graphs after `pipeline`, for a target."""
    structured = structured_source(onnx_model, work, model, policy, budget, batch)
    return structured, lower_onnx(structured, work / "static.onnx", pipeline, chunk=chunk).graphs


def shipped_graphs(artifact: Path, model: HRM, policy: str, budget: int, batch: Batch,
                   whole: str) -> dict[str, Path]:
    """The graphs of a shipped ONNX artifact by role, bound and made from this model; `whole` is the
    role its whole-inference graph must have (act: an export; static: a lowered set)."""
    parts = bound_parts(artifact, fallback={whole: artifact, "step": step_path_for(artifact)})
    meta = read_metadata(artifact)
    if whole not in parts or meta.get("kind") != whole:
        made_by = {"act": "hrmc export", "static": "hrmc lower --target onnx"}[whole]
        raise InputError(f"{artifact} is not a {whole} graph ({meta.get('kind')}): this executor runs what {made_by} "
                         "writes")
    check_source(meta, artifact, model, policy, budget, model.inner.sequence_length(batch))
    return parts


def run_named(graph: ort.InferenceSession, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return dict(zip([output.name for output in graph.get_outputs()], graph.run(None, feed)))


class OnnxExecutor(Executor):
    name = "onnx"
    kind = "structured graph with Loops"
    whole_role = "act"

    def __init__(self, onnx_model: str | Path | None = None, artifact: str | Path | None = None) -> None:
        self.onnx_model = Path(onnx_model) if onnx_model else None
        self.artifact = Path(artifact) if artifact else None

    def prepare(self, model: HRM, policy: str, budget: int | None, batch: Batch) -> None:
        self.policy, self.budget = policy, resolve_budget(model, policy, budget)
        self.start = carry_arrays(initial_carry(model, batch))
        if self.artifact is not None:
            self.open(shipped_graphs(self.artifact, model, policy, self.budget, batch, self.whole_role))
        else:
            self._work = tempfile.TemporaryDirectory(prefix=f"hrmc-{self.name}-")
            self.open(self.fresh_graphs(model, policy, batch, Path(self._work.name)))

    def fresh_graphs(self, model: HRM, policy: str, batch: Batch, work: Path) -> dict[str, Path]:
        """No artifact given: the graphs this executor runs, made from `--onnx-model` or a fresh export."""
        return structured_parts(structured_source(self.onnx_model, work, model, policy, self.budget, batch))

    def open(self, graphs: dict[str, Path]) -> None:
        self.graphs = graphs
        self.whole, self.one_step = session(graphs[self.whole_role]), session(graphs["step"])
        self.chunked_step = read_metadata(graphs["step"]).get("kind") == "chunk"

    def step(self, carry: Carry, batch: Batch) -> Arrays:
        return split_step(run_named(self.one_step, carry_feed(carry, batch)), self.chunked_step)

    def run(self, batch: Batch) -> Arrays:
        values = run_named(self.whole, {name: value.numpy() for name, value in batch.items()})
        return until_steps_run(values)

    def whole_graph(self) -> str:
        return self.graphs[self.whole_role].name

    def describe(self) -> str:
        shipped = "shipped artifact " if self.artifact else ""
        return f"{self.name} ({shipped}{self.graphs[self.whole_role].name}: {self.kind}, onnxruntime {ort.__version__}, CPU)"


class StaticExecutor(OnnxExecutor):
    name = "static"
    kind = "after the static pass pipeline, no Loop or If"
    whole_role = "static"
    chunk: int | None = None

    def fresh_graphs(self, model: HRM, policy: str, batch: Batch, work: Path) -> dict[str, Path]:
        structured = structured_source(self.onnx_model, work, model, policy, self.budget, batch)
        return lower_onnx(structured, work / "model.static.onnx", chunk=self.chunk).graphs


class ChunkedExecutor(StaticExecutor):
    """A host loop over the k-step graph: stops as soon as every sample has halted."""

    name = "chunked"

    def __init__(self, onnx_model: str | Path | None = None, chunk: int | None = None,
                 artifact: str | Path | None = None) -> None:
        super().__init__(onnx_model, artifact)
        self.chunk, self.graph_calls = chunk, 0

    def fresh_graphs(self, model: HRM, policy: str, batch: Batch, work: Path) -> dict[str, Path]:
        self.chunk = self.chunk or DEFAULT_CHUNK
        return super().fresh_graphs(model, policy, batch, work)

    def open(self, graphs: dict[str, Path]) -> None:
        super().open(graphs)
        self.chunk = chunk_of(graphs, self.chunk, self.artifact)
        self.kind = f"{self.chunk}-step chunks of the static graph, host loop"
        self.chunk_graph = session(graphs["chunk"]) if "chunk" in graphs else self.one_step

    def run(self, batch: Batch) -> Arrays:
        trajectory, self.graph_calls = run_chunks(lambda feed: run_named(self.chunk_graph, feed), self.start, batch,
                                                  self.chunk)
        return trajectory

    def whole_graph(self) -> str:
        return f"{self.graphs.get('chunk', self.graphs['step']).name} in a host loop"


def chunk_of(graphs: dict[str, Path], asked: int | None, artifact: Path | None) -> int:
    """Steps per call of the chunk graph among `graphs` (1: the step graph); `asked` (--chunk) must agree."""
    steps = int(read_metadata(graphs["chunk"])["chunk"]) if "chunk" in graphs else 1
    if artifact is not None and asked is not None and asked != steps:
        raise InputError(f"--chunk {asked}: {artifact} was lowered with {steps}-step chunks")
    return steps


def executor(name: str, onnx_model: str | Path | None, chunk: int | None, artifact: str | Path | None) -> Executor:
    if name == "chunked":
        return ChunkedExecutor(onnx_model, chunk, artifact)
    return {"onnx": OnnxExecutor, "static": StaticExecutor}[name](onnx_model, artifact)


def lower(target: Target, graphs: dict[str, Path], out: str | Path, options: LowerOptions) -> list[Path]:
    """The pass pipeline's graphs are this target's output: already written to `out`."""
    return list(graphs.values())


def check_out(target: Target, out: str | Path, chunk: int | None, force: bool) -> None:
    check_output(out, target.suffix)
