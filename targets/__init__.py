"""Stage 4 of the pipeline: the backends, each declared once here as a `Target`.

A target names the pass pipeline whose graphs it lowers, the output it writes, the package that
does the work, the executors it gives `hrmc parity` and `hrmc bench`, the precision they compute in and
the weight storages it offers: each said once, here. Its package (imported only when used: onnxruntime,
MLX and coremltools load slowly) provides three functions, each handed its `Target`:

    check_out(target, out, chunk, force) -> list[Path]  # every output path, checked before any work
    lower(target, graphs, out, options) -> list[Path]   # the files or folders written (a target without a
                                                        # pipeline, coreai, is handed a ModelSource, not graphs)
    executor(target, name, onnx_model, chunk, artifact) -> Executor

`lower(target, out, ...)` below is `hrmc lower`: the structured export (given and checked, or exported now),
the target's pass pipeline (stage 3), then the target's own lowering.

Every backend is one folder of the same shape (`coreml/`, `mlx/`; `onnx/` runs the pass pipeline's
graphs as they are, so it has no op table and no lowering of its own; `coreai/` converts torch programs,
so it has no op table either):

    __init__.py    the three functions above, and the names other stages import
    ops.py         OPS, the op-mapping table: each ONNX op the pipeline emits, in the target's terms
    lowering.py    a static graph → the target's program or code, node by node through OPS
    package.py     the artifact written (atomically, with its record of parts) and read back, verified
    runtime.py     how a written artifact runs on this machine
    executors.py   its executors: subclasses of `base.TargetExecutor`, which does what they share
                   (not executor.py: the package's `executor` function would hide a module of that name)

Beside them, what the backends share: `executor.py` (the executor contract), `base.py` (where an
executor's graphs come from and how they are driven), `host_loop.py` (the chunk host loop) and
`_nodes.py` (reading an ONNX node, for the lowerings). Adding a backend is one folder beside these
and one line in `TARGETS`.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Callable, ContextManager, Protocol

from hrmc.errors import InputError
from hrmc.files import check_output, together
from hrmc.hrm_ref import HRM, Batch
from hrmc.record import Checkpoint, Record
from hrmc.targets.executor import Executor


FLOAT16_MAX = 65504.0  # float16's largest finite value


@dataclass(frozen=True)
class Target:
    name: str
    pipeline: str | None  # the pass pipeline (`hrmc passes`) whose graphs it lowers; None: it lowers the model
    # itself (through torch.export), and its `lower` is handed a `ModelSource` instead of graphs
    suffix: str  # its output's ("" for a folder of any name)
    module: str  # where `check_out`, `lower` and `executor` live
    executors: tuple[str, ...]  # the executor names it provides
    precision: str  # what those executors compute in: "float16" ones are judged on the float16 contract
    weights: tuple[str, ...] = ()  # how it may store weights (`lower --weights`), the default first
    mac_check: bool = False  # `lower --mac-check` can write a Mac check beside its output (a Core ML package or
    # Core AI asset)

    def backend(self) -> ModuleType:
        return importlib.import_module(self.module)

    def executor(self, name: str, onnx_model: str | Path | None = None, chunk: int | None = None,
                 artifact: str | Path | None = None) -> Executor:
        """This target's executor `name`, running the shipped `artifact` when one is named, else graphs made
        afresh (from `onnx_model`, the structured export, when given); `chunk`: steps per call of a chunked one."""
        return self.backend().executor(self, name, onnx_model, chunk, artifact)

    def weight_storage(self, asked: str | None) -> str | None:
        """How a lowering stores matmul weights: `asked` (`--weights`) if this target offers it, else its
        default; None where it offers no choice."""
        if asked is not None and asked not in self.weights:
            offered = f"stores them as {' or '.join(self.weights)}" if self.weights else "has no such choice"
            raise InputError(f"--weights {asked}: the {self.name} target {offered}")
        return asked or (self.weights[0] if self.weights else None)

    def check_storable(self, model: HRM) -> None:
        """A float16 target cannot store a weight beyond float16's range (a pair's halves become inf and −inf,
        whose sum is NaN): named before any work."""
        if self.precision != "float16":
            return
        for name, tensor in model.state_dict().items():
            largest = float(tensor.detach().abs().max()) if tensor.is_floating_point() and tensor.numel() else 0.0
            if largest > FLOAT16_MAX:
                raise InputError(f"the model's {name} holds {largest:g}, beyond float16's {FLOAT16_MAX:g}: the "
                                 f"{self.name} target stores weights in float16 (lower it for --target coreml)")


@dataclass(frozen=True)
class About:
    """What a Core ML package says of itself in Xcode and to an app (`hrmc lower --author, --license,
    --model-version, --description`); hrmc's own version is in its metadata (hrmc.version)."""
    author: str = ""
    license: str = ""
    version: str = ""
    description: str = ""


@dataclass(frozen=True)
class LowerOptions:
    """What `hrmc lower` passes on to a target's `lower`, besides the graphs and the output."""
    source: str = ""  # the structured export's name, recorded in the artifact (`lower` sets it)
    batch: int = 1  # the fixed batch of a Core ML package
    force: bool = False  # replace an output folder hrmc did not write
    weights: str | None = None  # one of the target's `weights`
    seed: int = 0  # the seeded random batch the lowering's own checks run on (the ane range check)
    progress: Callable[[str], None] = field(default=lambda _: None)
    companion: Companion | None = None  # written beside the output, with it (lower --mac-check)
    about: About = About()  # what a Core ML package says of itself


class Companion(Protocol):
    """Something written beside a target's output and together with it: both appear, or neither. Made by
    a higher layer (`lower --mac-check`: hrmc.parity.mac_check.bundle), run by the target's `lower`."""

    def path(self, out: Path) -> Path:
        """Where it goes, beside `out`."""

    def writing(self, out: Path, force: bool) -> ContextManager[Callable[[Path, Path], None]]:
        """A context in which the target writes `out`; what it yields fills the companion from the output
        as written (its temporary path, and `out`) before the output appears."""


TARGETS: dict[str, Target] = {target.name: target for target in (
    Target("onnx", "static", ".onnx", "hrmc.targets.onnx", ("onnx", "static", "chunked"), "float32"),
    Target("mlx", "fused", "", "hrmc.targets.mlx", ("mlx", "mlx-chunked"), "float32"),
    Target("coreml", "fused", ".mlpackage", "hrmc.targets.coreml", ("coreml", "coreml-chunked"), "float32",
           ("float32", "int8", "lut6", "lut4"), mac_check=True),
    Target("ane", "fused", ".mlpackage", "hrmc.targets.coreml", ("ane",), "float16",
           ("float16", "float16x2", "int8", "lut6", "lut4"), mac_check=True),
    Target("coreai", None, ".aimodel", "hrmc.targets.coreai", ("coreai",), "float32", ("float32", "int8", "lut6", "lut4"),
           mac_check=True),
)}
TARGET_OF_EXECUTOR = {executor: target for target in TARGETS.values() for executor in target.executors}


def artifact_record(executor: str, artifact: str | Path) -> Record:
    """The record of a shipped artifact of `executor`'s kind (an ONNX set, an MLX folder, a Core ML package):
    what it was made from and how. Read here; its executor verifies every part before it runs."""
    if not Path(artifact).exists():
        raise InputError(f"--artifact: {artifact} not found")
    return TARGET_OF_EXECUTOR[executor].backend().read_record(Path(artifact))


@dataclass(frozen=True)
class ModelSource:
    """What a target without a pass pipeline (coreai) lowers: the model itself, with what the structured export
    would have recorded."""
    model: HRM
    policy: str
    budget: int
    batch: Batch
    origin: Checkpoint  # where the weights came from
    chunk: int | None = None


@dataclass(frozen=True)
class Lowered:
    written: list[Path]
    seconds: float


def check_outputs(target: Target, out: str | Path, chunk: int | None = None, force: bool = False,
                  weights: str | None = None, dump_after: str | None = None) -> list[Path]:
    """Every path `hrmc lower` will write, and its options, checked before any work; the paths."""
    from hrmc.passes import dump_path

    target.weight_storage(weights)
    dumped = [check_output(dump_path(out, dump_after), ".onnx")] if dump_after else []
    return target.backend().check_out(target, out, chunk, force) + dumped


def lower(target: Target, out: str | Path, work: Path, *, structured: Path | None, model: HRM | None,
          policy: str | None, budget: int | None, batch: Batch | None, origin: Checkpoint | None, pipeline: str,
          options: LowerOptions, strip: tuple[str, ...] = (), chunk: int | None = None,
          dump_after: str | None = None) -> Lowered:
    """`hrmc lower`: the structured export (`structured`, given and checked, or `model` exported now into `work`
    recording `origin`), its graphs after `pipeline` (stage 3), then the target's own lowering (stage 4). The
    outputs, the companion (`options.companion`) and the --dump-after graph replace their old ones together, or
    none does."""
    from hrmc import passes
    from hrmc.hrm_ref.act import resolve_budget
    from hrmc.targets.base import structured_source

    started, progress = time.perf_counter(), options.progress
    if target.pipeline is None:
        policy = policy or "max-steps"
        source = ModelSource(model, policy, resolve_budget(model, policy, budget), batch, origin or Checkpoint(), chunk)
        with together():
            return Lowered(target.backend().lower(target, source, out, options), time.perf_counter() - started)
    structured = structured_source(structured, work, model, policy, budget, batch, origin, progress)
    options = dataclasses.replace(options, source=structured.name)
    progress(f"running pipeline {pipeline}")
    with together():
        if dump_after:  # a graph between two passes is written beside the output: the pipeline runs here
            graphs = passes.lower_onnx(structured, work / "static.onnx", pipeline, strip=strip, chunk=chunk,
                                       dump_after=dump_after, dump_beside=out, progress=progress).graphs
        else:  # what the target lowers from: made once per source and pipeline
            graphs = passes.cached_lowering(structured, work, "static.onnx", pipeline, chunk, strip, progress)
        if target.suffix != ".onnx":
            progress(f"lowering to {target.name}")
        written = target.backend().lower(target, graphs, out, options)
    return Lowered(written, time.perf_counter() - started)


__all__ = ["About", "Companion", "Lowered", "ModelSource", "TARGETS", "artifact_record", "TARGET_OF_EXECUTOR", "LowerOptions",
           "Target", "check_outputs", "lower"]
