"""Stage 3 of the pipeline: onnx-ir passes that turn the structured graph into a static one.

Passes are registered by name (`PASSES`) and composed into named pipelines (`PIPELINES`).
Entry point: `lower_onnx(structured, out, pipeline)` lowers the whole-inference graph and its
one-step sibling. The step graph also gets `chunk-budget 1` (and, on request, a k-step chunk).
`cached_lowering` is the same for what a gate makes afresh: once per source, pipeline and chunk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnx
import onnx_ir as ir
import onnxscript
from onnx_ir.passes.common import NameFixPass

from hrmc.errors import HrmcError, InputError
from hrmc.files import atomic_output, check_output, together
from hrmc.lowering import read_record, step_path_for
from hrmc.record import rebase
from hrmc.timing import phase
from hrmc.lowering.artifact import bound_parts, copy_bound, load_proto, save_bound, source_parts
from hrmc.lowering.cache import cached
from hrmc import names
from hrmc.passes._loops import COPY, PassInputError, restore_loop_labels
from hrmc.passes.act_to_masked_budget import ActToMaskedBudgetPass
from hrmc.passes.chunk_budget import ChunkBudgetPass
from hrmc.passes.cleanup import CleanupPass
from hrmc.passes.fp16 import Float16Pass
from hrmc.passes.fuse import FusePass
from hrmc.passes.strip_heads import StripHeadsPass
from hrmc.passes.unroll_cycles import UnrollCyclesPass

_CODE = ("passes", "lowering")  # hrmc's packages whose code defines a lowering (`cached_lowering` hashes their source)

PASSES: dict[str, type[ir.passes.PassBase]] = {
    "unroll-cycles": UnrollCyclesPass,
    "act-to-masked-budget": ActToMaskedBudgetPass,
    "cleanup": CleanupPass,
    "strip-heads": StripHeadsPass,
    "chunk-budget": ChunkBudgetPass,
    "fuse": FusePass,
    "fp16": Float16Pass,
}
# Named pipelines, named by the graph they produce, as ordered pass names; `strip-heads` and
# `chunk-budget` are added on request. The order is the passes' own constraints:
# - unroll-cycles before act-to-masked-budget: the ACT body is copied `budget` times, and copies of a
#   body that still holds its H/L Loops would each have to be unrolled again (innermost first, once).
# - cleanup after act-to-masked-budget and before fuse: fuse's Rope rule matches constant cos/sin tables,
#   which only cleanup's folding (fold-constant-tables) leaves constant; it also drops the ACT Loop's
#   leftovers, so fuse matches each pattern once per copy and not in dead code.
# - fp16 after fuse: fuse's patterns are float32 subgraphs (a Cast between their nodes would hide them),
#   and its fused primitives keep their float32 internals where fp16 converts the rest.
# - cleanup last again: what fuse and fp16 leave unused (the replaced nodes' constants, Casts of Casts).
PIPELINES: dict[str, tuple[str, ...]] = {
    "static": ("unroll-cycles", "act-to-masked-budget", "cleanup"),  # plain ONNX ops: what onnxruntime runs
    "fused": ("unroll-cycles", "act-to-masked-budget", "cleanup", "fuse", "cleanup"),  # float32, fused primitives
    "fused-fp16": ("unroll-cycles", "act-to-masked-budget", "cleanup", "fuse", "fp16", "cleanup"),
}
# The names of release 0.1 (`--pipeline default|mlx|ane`), still accepted: users' scripts name them.
PIPELINE_ALIASES = {"default": "static", "mlx": "fused", "ane": "fused-fp16"}
Dump = Callable[[str, ir.Model], None]


@dataclass(frozen=True)
class LoweredModel:
    static_path: Path  # the whole inference, no Loop or If
    step_path: Path  # chunk-budget 1: the one-step model every target's step parity uses
    chunk_path: Path | None  # chunk-budget k, when asked for
    seconds: float

    @property
    def graphs(self) -> dict[str, Path]:
        """{"static": …, "step": …} and "chunk" when there is one: what target lowerings take."""
        return {"static": self.static_path, "step": self.step_path} | (
            {"chunk": self.chunk_path} if self.chunk_path else {})


def describe(name: str) -> str:
    """The first line of a pass class's docstring (for `hrmc passes`)."""
    return (PASSES[name].__doc__ or "").strip().splitlines()[0]


def pipeline_passes(pipeline: str) -> tuple[str, ...]:
    """The passes of a named pipeline (or of its 0.1 alias)."""
    name = PIPELINE_ALIASES.get(pipeline, pipeline)
    if name not in PIPELINES:
        raise InputError(f"unknown pipeline {pipeline!r}: choose one of {', '.join(PIPELINES)}")
    return PIPELINES[name]


def run_pipeline(model: ir.Model, pipeline: str, *, strip: tuple[str, ...] = (), chunk: int | None = None,
                 dump_after: str | None = None, dump: Dump = lambda name, model: None) -> ir.Model:
    """Run the named pipeline in place, then strip-heads and chunk-budget if asked for."""
    steps: list[tuple[str, ir.passes.PassBase]] = [(name, PASSES[name]()) for name in pipeline_passes(pipeline)]
    if strip:
        steps.append(("strip-heads", StripHeadsPass(strip)))
    if chunk is not None:
        steps += [("chunk-budget", ChunkBudgetPass(chunk)), ("cleanup", CleanupPass())]
    if dump_after is not None and dump_after not in [name for name, _ in steps]:
        raise InputError(f"--dump-after {dump_after}: not a pass of this pipeline ({', '.join(n for n, _ in steps)})")
    _stamp(model, "export", set())
    for name, instance in steps:
        before = set(map(id, model.graph.all_nodes()))
        try:
            instance(model)
        except PassInputError:
            raise  # names the node and the reason itself
        except ir.passes.PreconditionError as err:
            raise PassInputError(f"{name}: {err}") from None
        _stamp(model, name, before)
        model.metadata_props[names.PASSES] = json.dumps(json.loads(model.metadata_props.get(names.PASSES, "[]")) + [name])
        if name == dump_after:
            dump(name, model)
    return model


def _stamp(model: ir.Model, made_by: str, before: set[int]) -> None:
    """Name `made_by` on every node a pass made (not among the ids `before`): each node then says which
    pass made it (what `hrmc parity --localize` reports). A copy (unroll-cycles, act-to-masked-budget and
    chunk-budget copy loop bodies) keeps its original's: its cycle or step is in its name."""
    for node in model.graph.all_nodes():
        if id(node) not in before and not (node.meta.get(COPY) and names.MADE_BY in node.metadata_props):
            node.metadata_props[names.MADE_BY] = made_by


def _load(path: Path, out_folder: Path) -> ir.Model:
    """A source graph to lower into `out_folder`: its record's checkpoint path made relative to that folder."""
    read_record(path)  # refuses files hrmc did not make
    model = ir.load(str(path))
    model.metadata_props.pop(names.PARTS, None)  # the export's record of parts: the lowered set gets its own
    rebase(model.metadata_props, names.meta_key("checkpoint"), path.parent, out_folder)
    restore_loop_labels(model, path)
    return model


def structured_parts(structured: Path, progress: Callable[[str], None] = lambda _: None) -> dict[str, Path]:
    """The export pair `structured` belongs to ({"act": …, "step": …}), checked against its record."""
    return _source_parts(structured, progress)[0]


def _source_parts(structured: Path, progress: Callable[[str], None]) -> tuple[dict[str, Path], bool]:
    """`structured_parts`, and whether `structured` was rewritten after export. It is the act graph even
    then (onnxsim rewrites files and keeps their metadata): its step graph must still be the one its
    record names, and the graph must pass ONNX's checker."""
    read_record(structured)  # first: a graph hrmc never made is named as such
    parts, edited = source_parts(structured, "act", fallback={"act": structured, "step": step_path_for(structured)})
    if edited:
        progress(f"{Path(structured).name} differs from the graph hrmc export wrote (rewritten by a graph tool?): "
                 "lowering it as it is")
        try:
            onnx.checker.check_model(load_proto(Path(structured)))
        except onnx.checker.ValidationError as err:
            first = str(err).strip().splitlines()[0]
            raise InputError(f"{structured}: not a valid ONNX graph after its rewrite: {first}") from None
    if "act" not in parts:
        raise InputError(f"{structured} is not a structured export (it holds {', '.join(parts)} graphs): "
                         "start from the model.onnx that hrmc export wrote")
    return parts, edited


@contextlib.contextmanager
def _rewritten(structured: Path, edited: bool):
    """hrmc's own exports lower or fail with a named reason; a graph rewritten after export may hold
    anything ONNX's checker lets through (odd metadata, impossible constants): one line, naming it."""
    try:
        yield
    except HrmcError:
        raise
    except Exception as err:
        if not edited:
            raise
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise InputError(f"{structured}: cannot lower this rewritten graph ({type(err).__name__}: {first})") from None


def output_paths(out: str | Path, chunk: int | None = None) -> dict[str, Path]:
    """{role: path} of the files `lower_onnx` writes: `out` (static), OUT.step.onnx and, for a chunk of more
    than one step, OUT.chunkK.onnx."""
    out = Path(out)
    chunked = {"chunk": out.with_name(f"{out.stem}.chunk{chunk}.onnx")} if chunk is not None and chunk > 1 else {}
    return {"static": out, "step": step_path_for(out)} | chunked


def copy_lowered(graphs: dict[str, Path], out: str | Path) -> dict[str, Path]:
    """The lowered set `graphs` written as `out` and its siblings (named after `out` as `lower_onnx` names them), its
    record's checkpoint seen from `out`'s folder: the bytes `lower_onnx` would have written there."""
    out = Path(out)
    stem = graphs["static"].name.removesuffix(".onnx")
    paths = {role: check_output(out.with_name(out.name.removesuffix(".onnx") + path.name.removeprefix(stem)), ".onnx")
             for role, path in graphs.items()}
    copy_bound(graphs, paths, read_record(graphs["static"]).checkpoint.rebased(graphs["static"].parent, out.parent))
    return paths


def dump_path(out: str | Path, name: str) -> Path:
    """Where `--dump-after NAME` writes the graph: OUT.after-NAME.onnx, beside the output `out`."""
    out = Path(out)
    return out.with_name(f"{out.name.removesuffix('.onnx')}.after-{name}.onnx")


def _save(model: ir.Model, path: Path) -> None:
    """A graph dumped between passes (--dump-after): one file, not part of the lowered set."""
    with atomic_output(path) as temporary:
        onnx.save(_checked_proto(model), temporary)


def _checked_proto(model: ir.Model) -> onnx.ModelProto:
    NameFixPass()(model)  # a graph dumped between passes may still repeat names across scopes
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto)
    return proto


def lower_onnx(structured: str | Path, out: str | Path, pipeline: str = "static", *, strip: tuple[str, ...] = (),
               chunk: int | None = None, dump_after: str | None = None, dump_beside: str | Path | None = None,
               progress: Callable[[str], None] = lambda _: None) -> LoweredModel:
    """Lower `structured` (and its .step.onnx) to `out` (static), `out.step.onnx` and maybe `out.chunkK.onnx`.
    `dump_after`: also the graph after that pass, named after `dump_beside` (default `out`), kept only with
    the rest (within `hrmc.files.together`, only with everything the group writes)."""
    started = time.perf_counter()
    structured = Path(structured)
    paths = {role: check_output(path, ".onnx") for role, path in output_paths(out, chunk).items()}
    dumped = check_output(dump_path(dump_beside or out, dump_after), ".onnx") if dump_after else None
    parts, edited = _source_parts(structured, progress)
    with together(), phase(f"pass pipeline {pipeline}"):
        folder = paths["static"].parent
        with _rewritten(structured, edited):
            static = run_pipeline(_load(parts["act"], folder), pipeline, strip=strip, dump_after=dump_after,
                                  dump=lambda name, model: _save(model, dumped))
            static_proto = _checked_proto(static)
        protos = {"static": static_proto, "step": _checked_proto(run_pipeline(_load(parts["step"], folder), pipeline,
                                                                              strip=strip, chunk=1))}
        if "chunk" in paths:
            protos["chunk"] = _checked_proto(run_pipeline(_load(parts["step"], folder), pipeline, strip=strip,
                                                          chunk=chunk))
        save_bound({role: (paths[role], proto) for role, proto in protos.items()})
    return LoweredModel(paths["static"], paths["step"], paths.get("chunk"), time.perf_counter() - started)


def cached_lowering(structured: str | Path, work: Path, name: str, pipeline: str = "static", chunk: int | None = None,
                    strip: tuple[str, ...] = (), progress: Callable[[str], None] = lambda _: None) -> dict[str, Path]:
    """The graphs `lower_onnx(structured, work / name, pipeline, …)` writes, by role, where they are an
    intermediate (a gate's executor, a package's source): from the cache (lowering/cache.py) where the same
    source went through the same passes before (tiny's `fused` pipeline is 2 s, most of a gate's own work;
    sudoku's about a minute). The key is the source pair's bytes and where its recorded checkpoint lies (the
    graphs record it relative to their folder). A source rewritten after export is lowered into `work`, not kept.
    Entries are shared: read them, never change them."""
    structured = Path(structured)
    parts, edited = _source_parts(structured, progress)
    if edited:
        return lower_onnx(structured, work / name, pipeline, strip=strip, chunk=chunk).graphs
    digest = hashlib.sha256()
    for role, path in sorted(parts.items()):
        digest.update(role.encode())
        digest.update(path.read_bytes())
    checkpoint = read_record(structured).checkpoint.path
    defined = {"source": digest.hexdigest(), "name": name, "passes": pipeline_passes(pipeline), "chunk": chunk,
               "strip": strip, "checkpoint": checkpoint and str((structured.parent / checkpoint).resolve()),
               "onnx": onnx.__version__, "onnx_ir": ir.__version__, "onnxscript": onnxscript.__version__}
    with phase(f"pass pipeline {PIPELINE_ALIASES.get(pipeline, pipeline)} (or the cache)"):
        return bound_parts(cached("lowered", defined, _CODE, lambda folder: lower_onnx(
            structured, folder / name, pipeline, strip=strip, chunk=chunk).static_path, bound_parts, work, progress,
            "these graphs: the passes did not run again"))


__all__ = ["PASSES", "PIPELINES", "PIPELINE_ALIASES", "LoweredModel", "cached_lowering", "copy_lowered", "describe",
           "dump_path", "lower_onnx", "output_paths", "pipeline_passes", "run_pipeline"]
