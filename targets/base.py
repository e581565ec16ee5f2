"""What every target's executors share: where the graphs they run come from, and how they drive them.

A target's executor runs graphs by role (`static`, or the export's `act`: the whole inference;
`step`: one ACT step; `chunk`: k steps), each through its target's runtime (`call`). The rest is
the same for every target, so `TargetExecutor` does it once:
- where the graphs come from: a shipped artifact (`--artifact`), checked against the model, policy,
  budget and sequence length it records and against `--chunk`, or graphs made afresh in a temporary
  folder from the structured export (`--onnx-model`, checked, or a fresh export);
- how they are driven: `step` calls the step graph on the given carry; `run` calls the
  whole-inference graph, or, in a chunked executor, the chunk graph (the step graph for 1-step
  chunks) from the host loop until every sample has halted.
"""

from __future__ import annotations

import abc
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from hrmc.hrm_ref import HRM, Batch, Carry
from hrmc.hrm_ref.act import initial_carry, resolve_budget
from hrmc.binding import changed, noting_changes
from hrmc.errors import GateFailure, InputError
from hrmc.files import work_folder
from hrmc.lowering.cache import cached_export, export_onnx
from hrmc.lowering.export import read_record, weights_sha256
from hrmc.record import Checkpoint, Record
from hrmc.passes import cached_lowering, structured_parts
from hrmc.targets import Target
from hrmc.targets.app import APP_OUTPUTS
from hrmc.targets.executor import DEFAULT_CHUNK, Arrays, Executor, Trace, carry_arrays
from hrmc.targets.host_loop import carry_feed, run_chunks, split_step, until_steps_run
from hrmc.targets.weights import check_weights
from hrmc.timing import phase


def check_source(record: Record, where: Path, model: HRM | None, policy: str, budget: int, seq_len: int) -> None:
    """An artifact (exported, lowered, emitted or packaged) must come from these weights (unless `model`
    is None), with this policy, budget and sequence length: `record` is what it records."""
    if model is not None and record.weights_sha256 != weights_sha256(model):
        raise InputError(f"{where} was made from other weights than the model given ({record.checkpoint.describe()}; "
                         "check --checkpoint/--preset)")
    for what, given, recorded in (("policy", policy, record.policy), ("budget", budget, record.budget),
                                  ("sequence length", seq_len, record.seq_len)):
        if str(given) != str(recorded):
            raise InputError(f"{where} was made with {what} {recorded}, not {given} (see --policy, --budget, --seq-len)")


def structured_source(onnx_model: Path | None, work: Path, model: HRM | None, policy: str | None, budget: int | None,
                      batch: Batch | None, origin: Checkpoint | None = None,
                      progress: Callable[[str], None] = lambda _: None) -> Path:
    """The structured export graphs are made from, the one answer to "given and checked, or exported now": the
    given file, checked against `model` (None: taken as it is), `policy`, `budget` and the batch's sequence length
    (each None: as it records); else `model`'s export, from the export cache (lowering/cache.py: an executor's
    graphs, made once per model, policy, budget and length), or, with `origin`, exported into `work` recording
    where the weights came from (`hrmc lower`: what it ships records it)."""
    path = onnx_model
    if path is None and origin is not None:
        progress("exporting the structured graph first")
        path = export_onnx(model, work / "model.onnx", policy, budget, batch, origin, progress).act_path
    elif path is None:
        with phase("export (or the export cache)"):
            path = cached_export(model, policy, budget, batch, work)
    structured_parts(path)
    record = read_record(path)
    seq_len = model.inner.sequence_length(batch) if model is not None and batch is not None else record.seq_len
    check_source(record, path, model, policy or record.policy, budget or record.budget, seq_len)
    return path


def lowered_source(onnx_model: Path | None, work: Path, model: HRM, policy: str, budget: int, batch: Batch,
                   pipeline: str, chunk: int | None = None) -> tuple[Path, dict[str, Path]]:
    """The structured source (given or exported into `work`) and its graphs after `pipeline`, for a target: made
    once per source, pipeline and chunk (`cached_lowering`), so read them, never change them."""
    structured = structured_source(onnx_model, work, model, policy, budget, batch)
    return structured, cached_lowering(structured, work, "static.onnx", pipeline, chunk)


class TargetExecutor(Executor, abc.ABC):
    """Base class of the targets' executors, each made for its `Target`: subclasses set `name` (and `chunked`,
    `whole_role`) and implement `open_shipped`, `open_fresh`, `call`, `graph_name` and `trace`."""

    chunked = False  # `run` drives the chunk graph from the host loop
    whole_role = "static"  # the role of the whole-inference graph
    chunked_step = True  # the step graph is a 1-step chunk graph (outputs stacked [1, …])

    def __init__(self, target: Target, onnx_model: str | Path | None = None, chunk: int | None = None,
                 artifact: str | Path | None = None) -> None:
        self.target = target
        self.onnx_model = Path(onnx_model) if onnx_model else None
        self.artifact = Path(artifact) if artifact else None
        self.chunk, self.graph_calls = chunk, 0  # chunk: as asked (--chunk), then as run (None: not chunked)

    @property
    def precision(self) -> str:
        return self.target.precision

    def prepare(self, model: HRM, policy: str, budget: int | None, batch: Batch) -> None:
        self.policy, self.budget = policy, resolve_budget(model, policy, budget)
        self.source_model, self.start = model, carry_arrays(initial_carry(model, batch))
        self._work: tempfile.TemporaryDirectory | None = None
        self.pipeline_graphs: dict[str, Path] = {}  # the target's pipeline graphs, once made
        if self.artifact is not None:
            with phase("verify and open the artifact"):
                steps = self.open_shipped(model, batch)
            if self.chunked and self.chunk not in (None, steps):
                raise InputError(f"--chunk {self.chunk}: {self.artifact} was lowered with {steps}-step chunks")
        else:
            chunk = (self.chunk or DEFAULT_CHUNK) if self.chunked else None
            with phase("make the graphs afresh"):
                steps = self.open_fresh(model, batch, self.work(), chunk)
        self.chunk, self.chunk_steps = (steps if self.chunked else None), steps

    def work(self) -> Path:
        """A temporary folder of this executor's own, for graphs it makes."""
        if self._work is None:
            self._work = work_folder(self.name)
        return Path(self._work.name)

    @abc.abstractmethod
    def open_shipped(self, model: HRM, batch: Batch) -> int:
        """Check and open the shipped artifact (`self.artifact`); returns the steps of its chunk graph (1: none)."""

    @abc.abstractmethod
    def open_fresh(self, model: HRM, batch: Batch, work: Path, chunk: int | None) -> int:
        """Make the graphs afresh in `work`, with `chunk`-step chunks where not None, and open them;
        returns the steps of the chunk graph (1: none)."""

    @abc.abstractmethod
    def call(self, role: str, feed: dict) -> Arrays:
        """Run the graph of `role` on numpy inputs; outputs with the ONNX graph's names and types."""

    @abc.abstractmethod
    def graph_name(self, role: str) -> str:
        """The graph of `role`, as reports name it."""

    def structured(self, model: HRM, batch: Batch, work: Path) -> Path:
        """The structured export graphs made afresh start from: `--onnx-model`, checked, or a fresh export into `work`."""
        return structured_source(self.onnx_model, work, model, self.policy, self.budget, batch)

    def lowered(self, model: HRM, batch: Batch, work: Path, chunk: int | None) -> tuple[Path, dict[str, Path]]:
        """The structured source and its graphs after its target's pass pipeline, made in `work`."""
        structured, self.pipeline_graphs = lowered_source(self.onnx_model, work, model, self.policy, self.budget,
                                                          batch, self.target.pipeline, chunk)
        return structured, self.pipeline_graphs

    def pipeline_graph(self, role: str, batch: Batch) -> Path:
        """The graph of `role` after the target's pass pipeline: the one this executor lowered afresh, or,
        for a shipped artifact, the one it was lowered from, made again (export and passes are
        deterministic): the graph whose value names a trace uses."""
        if role not in self.pipeline_graphs:
            self.lowered(self.source_model, batch, self.work(), None)
        return self.pipeline_graphs[role]

    def trace_step(self, carry: Carry, batch: Batch) -> Trace:
        return self.trace(carry_feed(carry, batch), batch)

    @abc.abstractmethod
    def trace(self, feed: dict, batch: Batch) -> Trace:
        """The step graph on numpy inputs, every intermediate value kept (`Executor.trace_step`)."""

    def check(self, record: Record, where: Path, model: HRM, batch: Batch) -> None:
        """What an artifact records must match the model, policy, budget and sequence length run."""
        check_source(record, where, model, self.policy, self.budget, model.inner.sequence_length(batch))

    def check_stored_weights(self, stored: Iterable[tuple[str, np.ndarray]], model: HRM, batch: Batch,
                             outputs: tuple[str, ...], storage: str | None = None, folded: bool = False) -> None:
        """Every weight the shipped artifact stores is the model's, as its storage keeps it (targets/weights.py),
        before anything of it runs; `outputs`: the head outputs it records; `storage`: how it records storing them;
        `folded`: its converter folds constants (`check_weights`)."""
        try:
            self.weights_checked = check_weights(stored, model, self.artifact, outputs, batch, storage,
                                                 folded).describe()
        except GateFailure as failure:
            if not noting_changes():  # --localize runs changed artifacts: finding the change is its job
                raise
            changed(str(failure))

    def step(self, carry: Carry, batch: Batch) -> Arrays:
        return split_step(self.call("step", carry_feed(carry, batch)), self.chunked_step)

    def run(self, batch: Batch) -> Arrays:
        if self.chunk is None:
            values = self.call(self.whole_role, {name: value.numpy() for name, value in batch.items()})
            app = {name: values.pop(name) for name in APP_OUTPUTS if name in values}
            run = until_steps_run(values)
            self.check_app_outputs(app, run)
            return run
        role = "chunk" if self.chunk > 1 else "step"  # a chunk graph is lowered only for chunks of 2 steps or more
        trajectory, self.graph_calls = run_chunks(lambda feed: self.call(role, feed), self.start, batch, self.chunk)
        return trajectory

    def check_app_outputs(self, app: Arrays, run: Arrays) -> None:
        """A whole-inference function's `answer` and `halt_step` (targets/app.py) must be what its own run says:
        the argmax of the logits at each sample's halting step, and the steps it ran."""
        expected = {"halt_step": run["steps"][-1]} | ({"answer": run["logits"][-1].argmax(-1)} if "logits" in run else {})
        for name, value in app.items():
            if not np.array_equal(value, expected[name]):
                raise GateFailure(f"{self.graph_name(self.whole_role)}: its {name} is not what its own outputs say "
                                  f"({int((value != expected[name]).sum())} values differ)")

    def check_initial_carry(self, initial: Arrays, floats: type) -> None:
        """An `init` function (targets/app.py) must give the model's initial carry, in the artifact's float type."""
        for name, value in self.start.items():
            expected = value.astype(floats) if value.dtype.kind == "f" else value
            if not np.array_equal(initial[name], expected):
                raise GateFailure(f"{self.graph_name('init')}: its {name} is not the model's initial carry "
                                  "(hrm_ref.initial_carry)")

    def whole_graph(self) -> str:
        if self.chunk is None:
            return self.graph_name(self.whole_role)
        return f"{self.graph_name('chunk')} in a host loop"

    def other_runs(self, batch: Batch) -> dict[str, Arrays]:
        """The chunk graph a non-chunked executor holds (a shipped artifact lowered with --chunk), run in the
        host loop: `run` never calls it, yet it ships."""
        if self.chunked or self.chunk_steps <= 1:
            return {}
        trajectory, _ = run_chunks(lambda feed: self.call("chunk", feed), self.start, batch, self.chunk_steps)
        return {f"{self.graph_name('chunk')} in a host loop": trajectory}

    def shipped(self) -> str:
        """The start of `describe`'s parenthesis: the shipped artifact's name, if one runs."""
        return f"shipped artifact {self.artifact.name}, " if self.artifact else ""
