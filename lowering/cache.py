"""Export once per model: the structured export, cached by what defines it.

`hrmc export`, every `hrmc lower` without `--onnx-model`, every `hrmc parity` without `--artifact` and every
`hrmc bench` start from the structured export, and tracing it (`torch.export`: `export.trace_onnx`) takes
20 s or more whatever the model's size, most of a tiny gate's time. `export_onnx` traces a model once and
copies its pair thereafter, each copy recording where its own weights came from (the one field of the record that
is not the model's).

The export depends only on the model's weights and config, the policy, the budget, the sequence length and the
code that traces it (hrmc's export and hrm_ref, torch, onnx): those, hashed, name an entry

    CACHE/exports/KEY/model.onnx, model.step.onnx      (the pair `trace_onnx` writes, bound by their record)

The same machinery (`cached`) keeps what else a gate without `--artifact` makes again and again: the graphs of a
pass pipeline (passes.cached_lowering), keyed by the structured graphs they are lowered from, a Core ML
executor's packages (targets/coreml/executors.py), keyed by the graph they are converted from, and, as named numpy
arrays (`cached_arrays`), the reference's runs and steps every gate of a model on the same inputs reads
(parity/gate.py `Reference`): a gate (or the other executors' gates that follow it) runs B, not hrm_ref again.

CACHE is $HRMC_CACHE, else $XDG_CACHE_HOME/hrmc, else ~/.cache/hrmc; HRMC_CACHE=off turns the cache off. An
entry appears whole (written in a temporary folder, renamed) or not at all; one whose files no longer match their
record is removed and made again, never used. Runs asking for one entry at once make it once: the others wait
on its lock file (CACHE/KIND/.KEY.lock), then read it. The most recently used ENTRIES stay; older ones, unused for an
hour, are removed.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch

from hrmc import __version__
from hrmc.hrm_ref import HRM, Batch
from hrmc.hrm_ref.act import resolve_budget
from hrmc.files import on_their_own, work_folder
from hrmc.lowering.artifact import bound_parts, copy_bound
from hrmc.lowering.export import (ExportedModel, check_exportable, example_batch, export_paths, exported_model,
                                  trace_onnx, weights_sha256)
from hrmc.record import Checkpoint

ENTRIES = 8  # exports kept: sudoku's pair is 0.2 GB
IN_USE_SECONDS = 3600  # an entry used this recently is never pruned
OFF = "off"
_CODE = ("lowering", "hrm_ref")  # hrmc's packages whose code defines an export
_MADE = "made"  # an entry's file naming what `make` returned, inside the entry


def cache_folder() -> Path | None:
    """Where exports are cached, or None when HRMC_CACHE=off."""
    chosen = os.environ.get("HRMC_CACHE")
    if chosen == OFF:
        return None
    if chosen:
        return Path(chosen)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hrmc"


def cached_export(model: HRM, policy: str, budget: int, batch: Batch, work: Path,
                  progress: Callable[[str], None] = lambda _: None) -> Path:
    """The structured export of `model` (policy, budget, the batch's sequence length): from the cache when an
    intact entry holds it, else exported (into the cache, or into `work` when the cache is off or unwritable)."""
    defined = {"torch": torch.__version__, "onnx": onnx.__version__, "weights": weights_sha256(model),
               "config": dataclasses.asdict(model.config), "policy": policy, "budget": budget,
               "seq_len": model.inner.sequence_length(batch)}
    return cached("exports", defined, _CODE, lambda folder: trace_onnx(model, folder / "model.onnx", policy, budget,
                                                                       batch, progress=progress).act_path,
                  bound_parts, work)


def export_onnx(model: HRM, out: str | Path, policy: str = "max-steps", budget: int | None = None,
                batch: Batch | None = None, checkpoint: Checkpoint = Checkpoint(),
                progress: Callable[[str], None] = lambda _: None) -> ExportedModel:
    """`hrmc export`: write `out` (the whole ACT inference) and its `.step.onnx` sibling, both or neither, recording
    `checkpoint` (where the weights came from; a file's path relative to the current folder, kept relative to
    `out`). The model is traced once (`trace_onnx`); its pair comes from the cache thereafter, the same graphs
    with this export's own record of where the weights came from."""
    out, step_out = export_paths(out)
    check_exportable(model)
    budget = resolve_budget(model, policy, budget)
    if cache_folder() is None:
        return trace_onnx(model, out, policy, budget, batch, checkpoint, progress)
    started, traced = time.perf_counter(), []

    def tracing(line: str) -> None:  # called only while the model is traced (not found in the cache)
        traced.append(line)
        progress(line)

    with work_folder("export") as work:  # where the trace goes when the cache cannot be written
        source = cached_export(model, policy, budget, example_batch(model, batch), Path(work), tracing)
        if not traced:
            progress(f"the export cache ({cache_folder()}) holds this model's trace: not traced again")
        copy_bound(bound_parts(source), {"act": out, "step": step_out}, checkpoint.rebased(Path.cwd(), out.parent))
    return exported_model(model, out, step_out, started, traced=bool(traced))


def cached(kind: str, defined: dict, code: tuple[str, ...], make: Callable[[Path], Path],
           read_back: Callable[[Path], object], work: Path, progress: Callable[[str], None] = lambda _: None,
           held: str | None = None) -> Path:
    """What `make(folder)` writes into a folder (the path it returns), cached as CACHE/KIND/KEY, KEY the hash of
    `defined`, hrmc's version and the source of hrmc's packages `code`. An entry is used when `read_back(path)`
    accepts it, made again when it raises; made in `work` when the cache is off or cannot be written. `held`: what
    the entry is, for the progress line that says an intact one was used (`the cache (CACHE) holds HELD`)."""
    root = cache_folder()
    if root is None:
        return make(work)
    entry = root / kind / _key(defined, code)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        lock = open(_lock_path(entry), "a")
    except OSError:
        return make(work)
    with lock:
        # one maker per entry: a second run (or test worker) asking for it meanwhile waits, then reads it
        fcntl.flock(lock, fcntl.LOCK_EX)
        said = (lambda: progress(f"the cache ({root}) holds {held}")) if held is not None else (lambda: None)
        return _read_or_make(entry, make, read_back, work, said)


def _read_or_make(entry: Path, make: Callable[[Path], Path], read_back: Callable[[Path], object], work: Path,
                  said: Callable[[], None]) -> Path:
    """The entry read back (`said` then says so), or made."""
    if entry.is_dir():
        try:
            path = entry / (entry / _MADE).read_text()
            read_back(path)
            os.utime(entry)  # recently used
            said()
            return path
        except Exception:  # noqa: BLE001 (any failure to read it back is damage: made again below, never used)
            shutil.rmtree(entry, ignore_errors=True)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".hrmc-{entry.parent.name}-", dir=entry.parent))
    except OSError:
        return make(work)
    try:
        with on_their_own():  # an entry is renamed into place: a failure after it must not undo its files
            made = make(staging).relative_to(staging)
        (staging / _MADE).write_text(str(made))
        try:
            staging.rename(entry)
        except OSError:  # another run cached it meanwhile: theirs is as good
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _prune(entry.parent)
    return entry / made if entry.is_dir() else make(work)


def cached_arrays(kind: str, defined: dict, code: tuple[str, ...], compute: Callable[[], dict[str, dict]],
                  progress: Callable[[str], None] = lambda _: None, what: str = "these arrays") -> dict[str, dict]:
    """Groups of named numpy arrays (`compute()`: {group: {name: array}}), cached as one .npz like any entry
    (`cached`); every array is read back whole, so a damaged file (its zip checksums) is made again, never used.
    `progress` says when the cache held them (`what` they are)."""
    if cache_folder() is None:
        return compute()
    computed, read = [], []

    def make(folder: Path) -> Path:
        computed.append(compute())
        arrays = {f"{group}/{name}": value for group, named in computed[0].items() for name, value in named.items()}
        np.savez(folder / "arrays.npz", **arrays)
        return folder / "arrays.npz"

    def read_back(path: Path) -> None:
        groups: dict[str, dict] = {}
        with np.load(path) as data:
            for key in data.files:
                group, name = key.split("/", 1)
                groups.setdefault(group, {})[name] = data[key]
        read.append(groups)

    with work_folder(kind) as work:
        cached(kind, defined, code, make, read_back, Path(work), progress, f"{what}: not computed again")
    return computed[0] if computed else read[-1]


def _lock_path(entry: Path) -> Path:
    return entry.with_name(f".{entry.name}.lock")


def _key(defined: dict, code: tuple[str, ...]) -> str:
    defined = defined | {"hrmc": __version__, "code": _code_digest(code)}
    return hashlib.sha256(json.dumps(defined, sort_keys=True, default=str).encode()).hexdigest()[:32]


@functools.lru_cache(maxsize=None)
def _code_digest(code: tuple[str, ...]) -> str:
    """The source of the code that makes an entry: changed code never reads an old entry."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent.parent
    for part in code:
        for source in sorted((package / part).rglob("*.py")):
            digest.update(source.read_bytes())
    return digest.hexdigest()


def _prune(exports: Path) -> None:
    """Keep the ENTRIES most recently used entries, and any used within the hour (another run may be reading it)."""
    entries = sorted((p for p in exports.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[ENTRIES:]:
        if old.stat().st_mtime < time.time() - IN_USE_SECONDS:
            shutil.rmtree(old, ignore_errors=True)
            _lock_path(old).unlink(missing_ok=True)


__all__ = ["cache_folder", "cached", "cached_arrays", "cached_export", "export_onnx"]
