"""Artifacts bound together: every part of what `hrmc export` / `hrmc lower` writes records the
sha256 of every part, so a set whose parts do not belong together is refused before it runs.

An artifact is a few files or folders written in one go (`model.onnx` + `model.step.onnx`; an MLX
folder; a `NAME.mlpackage`, which records its own files, or hrmc 0.1's `NAME.mlpackage` +
`NAME.step.mlpackage`). Each part gets a digest: a file's sha256, or for
a file that holds the record itself, the sha256 of its content without the record. The record maps
each part's role to its name and digest, and sits in every part, so any one part names the rest:

    {"step": {"file": "model.step.onnx", "sha256": "9f…"}, "act": {"file": "model.onnx", "sha256": "41…"}}

`verify` compares a record with the digests found and raises `BindingError` naming the first part
that is missing, changed or from another run (exit 2). Within `tolerating_changes()` a changed part
is noted instead (`hrmc parity --localize` runs hand-edited artifacts: that is what one localises).
This module is a ground layer: standard library only, so every stage can use it.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
from pathlib import Path
from typing import Any, Iterator, Mapping

from hrmc.errors import InputError

Record = dict[str, dict[str, str]]  # role → {"file": name beside the first part, "sha256": digest}
_changes: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("changes", default=None)


class BindingError(InputError):
    """An artifact whose parts do not match their recorded digests: mixed, truncated or edited."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def json_sha256(value: Any) -> str:
    """The digest of a JSON value, independent of key order and formatting."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def make_record(parts: Mapping[str, tuple[Path, str]]) -> Record:
    """{role: (path, digest)} → the record every part stores."""
    return {role: {"file": path.name, "sha256": digest} for role, (path, digest) in parts.items()}


def parse_record(value: Any, where: Path) -> Record | None:
    """A stored record (JSON text, or the value already parsed), or None where there is none: the
    artifact predates binding (written before hrmc recorded parts)."""
    if value is None:
        return None
    try:
        record = json.loads(value) if isinstance(value, str) else value
        if record and all(isinstance(p["file"], str) and isinstance(p["sha256"], str) for p in record.values()):
            return record
    except (ValueError, TypeError, KeyError, AttributeError):
        pass
    raise BindingError(f"{where}: its record of the artifact's parts is unreadable (edited by hand?)")


def verify(record: Record, found: Mapping[str, str], folder: Path, reader: Path) -> None:
    """`found` maps each role to the digest computed now; every recorded part must be there and unchanged.

    `reader` is the part whose record is checked, named in the message with the part at fault.
    """
    for role, part in record.items():
        path = folder / part["file"]
        if role not in found:
            raise BindingError(f"{path}: missing ({reader.name} records it as its {role} part)")
        if found[role] != part["sha256"]:
            changed(f"{path}: does not match the sha256 {reader.name} records for it: changed after hrmc wrote it, "
                    "or written by another run (re-run hrmc export/lower)")


def changed(message: str) -> None:
    """A part differs from its record: refused (BindingError), or noted within `tolerating_changes()`."""
    noted = _changes.get()
    if noted is None:
        raise BindingError(message)
    if message not in noted:
        noted.append(message)


def tolerating() -> bool:
    """Whether changed parts are being noted rather than refused (`tolerating_changes`)."""
    return _changes.get() is not None


@contextlib.contextmanager
def tolerating_changes() -> Iterator[list[str]]:
    """Within: parts that differ from their records are read as they are, each noted in the list yielded.
    A missing part is still refused."""
    token = _changes.set([])
    try:
        yield _changes.get()
    finally:
        _changes.reset(token)
