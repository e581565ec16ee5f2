"""The record every artifact carries: what it was made from and how, as one typed value.

`hrmc export` writes it into each ONNX file's metadata (`hrmc.` keys), the passes and the targets carry
it on into every artifact they write (a Core ML package's user metadata, an MLX folder's config.json),
and every command reads it back through `Record.parse`, never key by key:

    version         hrmc's, that wrote it
    config          the model's HRMConfig, as a dict
    policy, budget  the ACT halting policy and step budget
    seq_len         the sequence length the graphs are fixed at
    outputs         the heads' outputs
    weights_sha256  the digest of every weight by name (`lowering.export.weights_sha256`)
    checkpoint      where the weights came from: a built-in preset by name, or a checkpoint file by its
                    name, sha256 and path relative to the artifact's folder; never an absolute path
    kind, loops, passes, chunk        the graph: act | step | static | chunk, its Loops, the passes run
    batch, flavour, weights, tf32     what a target fixed: a Core ML package's batch and flavour, how it
                                      stores its weights; whether MLX may compute float32 matmuls in TF32

A ground module: standard library only.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, MutableMapping

from hrmc.errors import InputError

PRESET_PREFIX = "preset:"  # what releases before the typed record wrote in `source` for a built-in model


@dataclass(frozen=True)
class Checkpoint:
    """The weights an artifact was made from: a preset, or a file by name, sha256 and relative path."""

    preset: str | None = None
    name: str | None = None
    sha256: str | None = None
    path: str | None = None  # '/'-separated, relative to the folder of the artifact that records it

    @classmethod
    def of_file(cls, path: Path, sha256: str, artifact_folder: Path) -> "Checkpoint":
        return cls(name=path.name, sha256=sha256, path=_relative(path, artifact_folder))

    def rebased(self, old_folder: Path, new_folder: Path) -> "Checkpoint":
        """The same checkpoint as seen by an artifact in `new_folder` rather than in `old_folder`."""
        if self.path is None:
            return self
        return dataclasses.replace(self, path=_relative(old_folder / self.path, new_folder))

    def located(self, artifact_folder: Path) -> Path | None:
        """Where the recorded path points from the artifact's folder, if a file is there."""
        if self.path is None:
            return None
        found = artifact_folder / PurePosixPath(self.path)
        return found if found.is_file() else None

    def describe(self) -> str:
        if self.preset is not None:
            return f"the built-in preset {self.preset}"
        digest = f" (sha256 {self.sha256[:12]}…)" if self.sha256 else ""
        return f"checkpoint {self.name}{digest}"

    def to_json(self) -> dict[str, str]:
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None}


def rebase(metadata: MutableMapping[str, str], key: str, old_folder: Path, new_folder: Path) -> None:
    """A record's checkpoint (under `key` in `metadata`) as seen from `new_folder`, where an artifact made from
    one in `old_folder` is written: its path stays true from wherever the artifact lies."""
    if key in metadata:
        checkpoint = _checkpoint(_json(metadata[key])).rebased(old_folder, new_folder)
        metadata[key] = json.dumps(checkpoint.to_json(), sort_keys=True)


def _relative(path: Path, folder: Path) -> str:
    return PurePosixPath(Path(os.path.relpath(Path(path).resolve(), Path(folder).resolve()))).as_posix()


@dataclass(frozen=True)
class Record:
    version: str
    config: dict[str, Any]
    policy: str
    budget: int
    seq_len: int
    outputs: tuple[str, ...]
    weights_sha256: str
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    kind: str | None = None
    loops: tuple[dict[str, Any], ...] = ()
    passes: tuple[str, ...] = ()
    chunk: int | None = None
    batch: int | None = None
    flavour: str | None = None
    weights: str | None = None
    tf32: bool | None = None

    def to_json(self) -> dict[str, Any]:
        """The record as JSON values by key (an MLX folder's config.json): the fields that are set."""
        values = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if value is not None and value != ():
                values[item.name] = value.to_json() if isinstance(value, Checkpoint) else _plain(value)
        return values

    def metadata(self) -> dict[str, str]:
        """The record as metadata strings by key (without the `hrmc.` prefix): JSON for what is not a string."""
        return {key: value if isinstance(value, str) else json.dumps(value, sort_keys=True)
                for key, value in self.to_json().items()}

    def replace(self, **changes: Any) -> "Record":
        return dataclasses.replace(self, **changes)

    @classmethod
    def parse(cls, values: Mapping[str, Any], where: Path | str) -> "Record":
        """The record of metadata strings (ONNX, Core ML) or of JSON values (an MLX folder's config.json), from
        any release: an unreadable or missing key is one line naming `where` and the key."""
        def value(key: str, parse=None, default=...):
            if key not in values or values[key] is None:
                if default is ...:
                    raise InputError(f"{where}: its hrmc record has no {key!r} (edited or corrupted)")
                return default
            raw = values[key]
            try:
                return parse(_json(raw)) if parse else raw
            except (TypeError, ValueError, KeyError, AttributeError):
                raise InputError(f"{where}: its hrmc record's {key!r} is unreadable (edited or corrupted)") from None

        return cls(version=value("version", str, None) or value("hrmc_version", str),
                   config=value("config", _mapping), policy=value("policy", str), budget=value("budget", int),
                   seq_len=value("seq_len", int), outputs=value("outputs", _strings),
                   weights_sha256=value("weights_sha256", str),
                   checkpoint=value("checkpoint", _checkpoint, None) or _from_source(value("source", str, None)),
                   kind=value("kind", str, None), loops=value("loops", tuple, ()),
                   passes=value("passes", _strings, ()), chunk=value("chunk", _optional_int, None),
                   batch=value("batch", int, None), flavour=value("flavour", str, None),
                   weights=value("weights", str, None), tf32=value("tf32", bool, None))


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _json(raw: Any) -> Any:
    """Metadata strings hold JSON (and plain strings); config.json holds the values themselves."""
    if not isinstance(raw, str):
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _mapping(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError
    return value


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise TypeError
    return tuple(value)


def _optional_int(value: Any) -> int | None:
    return None if value in (None, "None", "") else int(value)


def _checkpoint(value: Any) -> Checkpoint:
    if not isinstance(value, dict) or not all(isinstance(item, str) for item in value.values()):
        raise TypeError
    return Checkpoint(**value)


def _from_source(source: str | None) -> Checkpoint:
    """Records before the typed one named the model by `source`: `preset:NAME`, or the checkpoint as typed."""
    if source is None:
        return Checkpoint()
    if source.startswith(PRESET_PREFIX):
        return Checkpoint(preset=source.removeprefix(PRESET_PREFIX))
    return Checkpoint(name=Path(source).name)
