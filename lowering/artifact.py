"""ONNX artifacts written and read as bound sets (`hrmc.binding`): the export pair, the lowered graphs.

Every file of a set holds the set's record in its model metadata (`hrmc.parts`). A file's digest is
the sha256 of its serialised model without that one entry, so the record can sit inside the files
it describes. `save_bound` writes a set atomically (all files or none); `bound_parts` reads the
record of the file it is given, finds the other parts beside it by its own name, checks every part,
and returns them by role: the file given is the one that runs, whatever it is called.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from pathlib import Path
from typing import Mapping

import onnx

from hrmc.binding import (BindingError, Record, make_record, members, parse_record, role_of, tolerating, unrecorded,
                           verify)
from hrmc.errors import InputError
from hrmc.files import atomic_output, together
from hrmc.names import PARTS, meta_key
from hrmc.record import Checkpoint


def load_proto(path: Path) -> onnx.ModelProto:
    """The model in `path`, or one line saying why it cannot be read."""
    if not path.is_file():
        raise InputError(f"ONNX model not found: {path}")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError and others for non-ONNX or truncated bytes
        raise InputError(f"cannot read {path} as ONNX: {type(err).__name__} (truncated or not an ONNX file?)") from None


def _record_text(proto: onnx.ModelProto) -> str | None:
    return next((p.value for p in proto.metadata_props if p.key == PARTS), None)


def content_sha256(proto: onnx.ModelProto) -> str:
    """sha256 of the model as serialised without its parts record."""
    kept = [p for p in proto.metadata_props if p.key != PARTS]
    if len(kept) == len(proto.metadata_props):
        return hashlib.sha256(proto.SerializeToString()).hexdigest()
    stripped = onnx.ModelProto()
    stripped.CopyFrom(proto)
    del stripped.metadata_props[:]
    stripped.metadata_props.extend(kept)
    return hashlib.sha256(stripped.SerializeToString()).hexdigest()


def save_bound(parts: Mapping[str, tuple[Path, onnx.ModelProto]]) -> None:
    """Write {role: (path, model)} as one set: each file records every file's digest; all or none. The
    shortest name (the whole graph's) without `.onnx` is the stem the parts' names are recorded after."""
    for _, proto in parts.values():
        kept = [p for p in proto.metadata_props if p.key != PARTS]
        del proto.metadata_props[:]
        proto.metadata_props.extend(kept)
    stem = min((path.name for path, _ in parts.values()), key=len).removesuffix(".onnx")
    record = make_record({role: (path, content_sha256(proto)) for role, (path, proto) in parts.items()}, stem)
    with contextlib.ExitStack() as stack:
        for path, proto in parts.values():
            proto.metadata_props.add(key=PARTS, value=json.dumps(record, sort_keys=True))
            onnx.save(proto, stack.enter_context(atomic_output(path)))


def copy_bound(parts: Mapping[str, Path], to: Mapping[str, Path], checkpoint: Checkpoint) -> None:
    """The set `parts` written as `to` (all or none), with `checkpoint` in their records: a copy that records where
    its own weights came from, seen from where it is written."""
    protos = {role: load_proto(path) for role, path in parts.items()}
    for proto in protos.values():
        for prop in proto.metadata_props:
            if prop.key == meta_key("checkpoint"):
                prop.value = json.dumps(checkpoint.to_json(), sort_keys=True)  # as Record.metadata() writes it
    with together():
        save_bound({role: (to[role], proto) for role, proto in protos.items()})


def bound_parts(path: str | Path, fallback: Mapping[str, Path] | None = None) -> dict[str, Path]:
    """{role: path} of the set `path` belongs to: `path` itself as the part whose content it holds, the
    others beside it and named as it is (its record's suffixes), every part verified.

    A file without a record is refused (`binding.unrecorded`); where that is accepted (--unrecorded),
    `fallback` names its parts, unverified. A set is verified once per process while its files stay as they were.
    """
    path = Path(path)
    fallback_parts = tuple(sorted((fallback or {}).items())) if fallback else None
    if tolerating():  # changes or missing records are noted, not refused: not a result to cache
        return dict(_verified.__wrapped__(path, _stamp(path), fallback_parts))
    return dict(_verified(path, _stamp(path), fallback_parts))


def source_parts(path: str | Path, role: str, fallback: Mapping[str, Path]) -> tuple[dict[str, Path], bool]:
    """The set of a source graph a command starts from (`lower --onnx-model`): `path` itself as `role`,
    whatever it holds, and every other part verified as `bound_parts` does. `path` may differ from the
    digest its record holds: graph tools (onnxsim) rewrite a file and keep its metadata. The flag says
    so; what such a source lowers to is judged by `hrmc parity`, as every lowering is. A part missing
    under the source's own name (`onnxsim model.onnx model.sim.onnx` leaves `model.step.onnx`) is looked
    for by its content among the folder's graphs of its kind.
    """
    path = Path(path)
    fallback_parts = tuple(sorted(fallback.items()))
    if tolerating():  # as `bound_parts`: not a result to cache
        parts, edited = _source.__wrapped__(path, role, _stamp(path), fallback_parts)
    else:  # a command checks its source where it starts and where it lowers: read and hashed once
        parts, edited = _source(path, role, _stamp(path), fallback_parts)
    return dict(parts), edited


@functools.lru_cache(maxsize=16)
def _source(path: Path, role: str, stamp: tuple, fallback: tuple) -> tuple[tuple[tuple[str, Path], ...], bool]:
    proto = load_proto(path)
    record = parse_record(_record_text(proto), path)
    if record is None:
        unrecorded(path)
        return fallback, False
    if role not in record:
        return tuple(bound_parts(path, dict(fallback)).items()), False  # its own record says what it is
    edited = content_sha256(proto) != record[role]["sha256"]
    where = members(record, path, role)
    others = [other for other in record if other != role]
    for other in others:
        if not where[other].is_file():
            where[other] = _found_by_content(path.parent, record[other]) or _missing(where[other], path, other,
                                                                                   record[other]["suffix"])
    _check_parts(record, where, others, path)
    return tuple(where.items()), edited


def _found_by_content(folder: Path, part: dict[str, str]) -> Path | None:
    """The graph in `folder` named like the part (`*.step.onnx`) whose content has the part's digest."""
    for candidate in sorted(folder.glob(f"*{part['suffix']}")):
        with contextlib.suppress(InputError):
            if content_sha256(load_proto(candidate)) == part["sha256"]:
                return candidate
    return None


def _missing(expected: Path, reader: Path, role: str, suffix: str) -> Path:
    raise BindingError(f"{expected}: missing, and no *{suffix} beside it holds the {role} graph {reader.name} "
                       "records (copy or rename its step graph with it)")


def _stamp(path: Path) -> tuple:
    """What changes when `path` or any ONNX file beside it (so any part of its set) does: names, sizes, mtimes."""
    if not path.parent.is_dir():
        return ()
    files = sorted(set(path.parent.glob("*.onnx")) | ({path} if path.is_file() else set()))
    return tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)


@functools.lru_cache(maxsize=16)
def _verified(path: Path, stamp: tuple, fallback: tuple | None) -> tuple[tuple[str, Path], ...]:
    proto = load_proto(path)
    record = parse_record(_record_text(proto), path)
    if record is None:
        unrecorded(path)
        return fallback or ()
    role = role_of(record, content_sha256(proto), path)
    where = members(record, path, role)
    _check_parts(record, where, [other for other in record if other != role], path)
    return tuple(where.items())


def _check_parts(record: Record, where: Mapping[str, Path], roles: list[str], reader: Path) -> None:
    """The parts `roles` of `reader`'s record, at `where`: each there, unchanged, and holding the same record."""
    found = {}
    for role in roles:
        part_path = where[role]
        if part_path.is_file():
            proto = load_proto(part_path)
            found[role] = content_sha256(proto)
            if parse_record(_record_text(proto), part_path) != record:
                raise BindingError(f"{part_path}: does not belong with {reader.name} (written by another run)")
    verify({role: record[role] for role in roles}, found, where, reader)
