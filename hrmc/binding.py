"""Artifacts bound together: every part of what `hrmc export` / `hrmc lower` writes records the
sha256 of every part, so a set whose parts do not belong together is refused before it runs.

An artifact is a few files or folders written in one go (`model.onnx` + `model.step.onnx`; an MLX
folder; a `NAME.mlpackage`, which records its own files, or hrmc 0.1's `NAME.mlpackage` +
`NAME.step.mlpackage`). Each part gets a digest: a file's sha256, or for a file that holds the
record itself, the sha256 of its content without the record. The record maps each part's role to
its digest and to how its name ends after the set's stem, and sits in every part, so any one part
names the rest relative to its own name, never by a name it was written under:

    {"act": {"suffix": ".onnx", "sha256": "41…"}, "step": {"suffix": ".step.onnx", "sha256": "9f…"}}

So a set renamed together (`HRMSolver.onnx` + `HRMSolver.step.onnx`) is the same set, two lowerings
under different names are the same bytes, and a copy is judged by its own files. Records of hrmc
0.1 name their parts (`"file": "tiny.step.onnx"`); `parse_record` reads them in the same form.

`verify` compares a record with the digests found and raises `BindingError` naming the first part
that is missing, changed or from another run (exit 2). Within `tolerating_changes()` a changed part
is noted instead (`hrmc parity --localize` runs hand-edited artifacts: that is what one localises);
within `accepting_unrecorded()` an artifact with no record at all is noted instead of refused
(`--unrecorded`: judged by its numbers alone, never passed).
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

Record = dict[str, dict[str, str]]  # role → {"suffix": its name after the set's stem, "sha256": digest}
_changes: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("changes", default=None)
_unrecorded: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("unrecorded", default=None)


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


def make_record(parts: Mapping[str, tuple[Path, str]], stem: str) -> Record:
    """{role: (path, digest)} → the record every part stores; each name is kept as what follows `stem`."""
    for path, _ in parts.values():
        if not path.name.startswith(stem):
            raise ValueError(f"{path.name} does not start with the set's stem {stem!r}")
    return {role: {"suffix": path.name[len(stem):], "sha256": digest} for role, (path, digest) in parts.items()}


def parse_record(value: Any, where: Path) -> Record | None:
    """A stored record (JSON text, or the value already parsed), or None where there is none. Records
    of hrmc 0.1, which name their parts, come back in the suffix form: the stem is the shortest name
    without its extension, where every name starts with it (else none: the files of one folder)."""
    if value is None:
        return None
    try:
        record = json.loads(value) if isinstance(value, str) else value
        if record and all(isinstance(p["sha256"], str) for p in record.values()):
            if all(isinstance(p.get("suffix"), str) for p in record.values()):
                return {role: {"suffix": p["suffix"], "sha256": p["sha256"]} for role, p in record.items()}
            return _from_names(record)
    except (ValueError, TypeError, KeyError, AttributeError):
        pass
    raise BindingError(f"{where}: its record of the artifact's parts is unreadable (edited by hand?)")


def _from_names(record: dict) -> Record:
    names = {role: part["file"] for role, part in record.items()}
    if not all(isinstance(name, str) and name for name in names.values()):
        raise TypeError
    shortest = min(names.values(), key=len)
    stem = shortest[:len(shortest) - len(Path(shortest).suffix)]
    if not all(name.startswith(stem) for name in names.values()):
        stem = ""  # the files of one folder (an MLX folder's): each suffix is the whole name
    return {role: {"suffix": name[len(stem):], "sha256": record[role]["sha256"]} for role, name in names.items()}


def role_of(record: Record, digest: str, path: Path) -> str:
    """The role of the part at `path` in its own record: the one whose digest it has. A part that matches
    none was changed: `changed` refuses it (or notes it), and its role is then the one its name ends with."""
    for role, part in record.items():
        if part["sha256"] == digest:
            return role
    named = sorted((role for role, part in record.items() if path.name.endswith(part["suffix"])),
                   key=lambda role: -len(record[role]["suffix"]))
    if not named:
        raise BindingError(f"{path}: named like no part of the set it records "
                           f"({', '.join(part['suffix'] for part in record.values())})")
    changed(f"{path}: does not match the sha256 its record holds for its {named[0]} part: changed after hrmc "
            "wrote it, or written by another run (re-run hrmc export/lower)")
    return named[0]


def members(record: Record, path: Path, role: str) -> dict[str, Path]:
    """Where every part of `path`'s set is: beside it, named by `path`'s own name and each part's suffix."""
    suffix = record[role]["suffix"]
    if not path.name.endswith(suffix) or path.name == suffix:
        raise BindingError(f"{path}: the {role} part of its set must be named NAME{suffix}, as its record says")
    stem = path.name[:len(path.name) - len(suffix)]
    return {other: path.with_name(stem + part["suffix"]) for other, part in record.items()}


def verify(record: Record, found: Mapping[str, str], where: Mapping[str, Path], reader: Path) -> None:
    """`found` maps each role to the digest computed now, `where` to its path; every recorded part must be
    there and unchanged. `reader` is the part whose record is checked, named in the message."""
    for role, part in record.items():
        if role not in found:
            raise BindingError(f"{where[role]}: missing ({reader.name} records it as its {role} part)")
        if found[role] != part["sha256"]:
            changed(f"{where[role]}: does not match the sha256 {reader.name} records for it: changed after hrmc "
                    "wrote it, or written by another run (re-run hrmc export/lower)")


def changed(message: str) -> None:
    """A part differs from its record: refused (BindingError), or noted within `tolerating_changes()`."""
    _refuse_or_note(_changes, message)


def unrecorded(path: Path) -> None:
    """An artifact with no record of its parts: hrmc did not write it as it is (or its record was removed).
    Refused, or noted within `accepting_unrecorded()`."""
    _refuse_or_note(_unrecorded, f"{path}: no record of its parts, so not an artifact as hrmc wrote it (write it "
                                 "again with hrmc, or judge it by its numbers alone: parity/inspect --unrecorded)")


def _refuse_or_note(notes: contextvars.ContextVar[list[str] | None], message: str) -> None:
    noted = notes.get()
    if noted is None:
        raise BindingError(message)
    if message not in noted:
        noted.append(message)


def noting_changes() -> bool:
    """Whether changed parts are being noted rather than refused (`tolerating_changes`)."""
    return _changes.get() is not None


def tolerating() -> bool:
    """Whether changed parts or missing records are being noted rather than refused (not a result to cache)."""
    return _changes.get() is not None or _unrecorded.get() is not None


@contextlib.contextmanager
def tolerating_changes() -> Iterator[list[str]]:
    """Within: parts that differ from their records are read as they are, each noted in the list yielded.
    A missing part is still refused."""
    with _noting(_changes) as noted:
        yield noted


@contextlib.contextmanager
def accepting_unrecorded() -> Iterator[list[str]]:
    """Within: artifacts without a record of their parts are read unverified, each noted in the list yielded."""
    with _noting(_unrecorded) as noted:
        yield noted


@contextlib.contextmanager
def _noting(notes: contextvars.ContextVar[list[str] | None]) -> Iterator[list[str]]:
    token = notes.set([])
    try:
        yield notes.get()
    finally:
        notes.reset(token)
