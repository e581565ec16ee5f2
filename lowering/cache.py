"""Export once per model: the structured export an executor starts from, cached by what defines it.

Every `hrmc parity` without `--artifact` and every `hrmc bench` makes its executors' graphs afresh from the
structured export, and tracing it (`torch.export`, twice) is most of a tiny gate's time and a minute of sudoku's.
The export depends only on the model's weights and config, the policy, the budget, the sequence length and the
code that traces it (hrmc's export and hrm_ref, torch, onnx): those, hashed, name an entry

    CACHE/exports/KEY/model.onnx, model.step.onnx      (the pair `export_onnx` writes, bound by their record)

The same machinery (`cached`) keeps what else a gate without `--artifact` makes again and again: a Core ML
executor's packages (targets/coreml/executors.py), keyed by the graph they are lowered from.

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

import onnx
import torch

from hrmc import __version__
from hrmc.hrm_ref import HRM, Batch
from hrmc.lowering.artifact import bound_parts
from hrmc.lowering.export import export_onnx, weights_sha256

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


def cached_export(model: HRM, policy: str, budget: int, batch: Batch, work: Path) -> Path:
    """The structured export of `model` (policy, budget, the batch's sequence length): from the cache when an
    intact entry holds it, else exported (into the cache, or into `work` when the cache is off or unwritable)."""
    defined = {"torch": torch.__version__, "onnx": onnx.__version__, "weights": weights_sha256(model),
               "config": dataclasses.asdict(model.config), "policy": policy, "budget": budget,
               "seq_len": model.inner.sequence_length(batch)}
    return cached("exports", defined, _CODE, lambda folder: export_onnx(model, folder / "model.onnx", policy, budget,
                                                                        batch).act_path, bound_parts, work)


def cached(kind: str, defined: dict, code: tuple[str, ...], make: Callable[[Path], Path],
           read_back: Callable[[Path], object], work: Path) -> Path:
    """What `make(folder)` writes into a folder (the path it returns), cached as CACHE/KIND/KEY, KEY the hash of
    `defined`, hrmc's version and the source of hrmc's packages `code`. An entry is used when `read_back(path)`
    accepts it, made again when it raises; made in `work` when the cache is off or cannot be written."""
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
        return _read_or_make(entry, make, read_back, work)


def _read_or_make(entry: Path, make: Callable[[Path], Path], read_back: Callable[[Path], object], work: Path) -> Path:
    if entry.is_dir():
        try:
            path = entry / (entry / _MADE).read_text()
            read_back(path)
            os.utime(entry)  # recently used
            return path
        except Exception:  # noqa: BLE001 (any failure to read it back is damage: made again below, never used)
            shutil.rmtree(entry, ignore_errors=True)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".hrmc-{entry.parent.name}-", dir=entry.parent))
    except OSError:
        return make(work)
    try:
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


__all__ = ["cache_folder", "cached", "cached_export"]
