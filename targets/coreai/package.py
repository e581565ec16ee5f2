"""The `.aimodel` asset: writing it (`lower_coreai`), and reading its record and stored weights back, verified.

    NAME.aimodel/
      main.mlirb       the program: every function (init, step, chunkK, solve), each weight stored once (float32,
                       or compressed: the data and scales of blockwise_shift_scale, the packed indices and palettes
                       of lut_to_dense)
      main.hash        its sha256, as coreai-core writes it
      metadata.json    author, license, description, and hrmc's record in the custom metadata, strings under
                       `hrmc.` keys as a Core ML package holds them (hrmc's version, config, policy, budget,
                       batch, weights' sha256, where they came from, outputs, functions), hrmc.descriptions
                       (each function's inputs, outputs and state: meaning, type, shape, use, as the Core ML
                       package's) and hrmc.parts (the sha256 of main.mlirb: hrmc.binding)

The asset is written in a temporary folder beside NAME.aimodel and renamed, so it appears whole or not at all
(with its Mac check beside it, `lower --mac-check`, filled before it appears). Nothing in it names this machine:
the program is converted in release mode (no stack traces).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from hrmc import __version__
from hrmc.binding import BindingError, file_sha256, make_record, parse_record, unrecorded, verify
from hrmc.errors import InputError
from hrmc.files import atomic_folder
from hrmc.hrm_ref import HRM, Batch
from hrmc.hrm_ref.act import batch_size
from hrmc.hrm_ref.compression import Compressed, read_int8, read_lut
from hrmc.lowering.export import check_exportable, output_names, weights_sha256
from hrmc.names import PARTS, meta_key, unprefixed
from hrmc.record import Checkpoint, Record
from hrmc.targets import About
from hrmc.targets.coreai.lowering import convert, stored_as

PROGRAM, METADATA = "main.mlirb", "metadata.json"  # what coreai-core writes: the program, and its metadata


@dataclass(frozen=True)
class CoreAIAsset:
    path: Path
    functions: tuple[str, ...]


def lower_coreai(model: HRM, batch: Batch, policy: str, budget: int, checkpoint: Checkpoint, out: str | Path,
                 chunk: int | None = None, force: bool = False, about: About = About(), weights: str = "float32",
                 progress: Callable[[str], None] = lambda _: None,
                 check: Callable[[Path, Path], None] | None = None) -> CoreAIAsset:
    """Convert `model` (the ACT step, policy, budget, the batch's size and sequence length) into `out`, its weights
    stored `weights` (float32, int8, lut6, lut4: `lowering.stored_as`), atomically; an existing asset is replaced
    only if hrmc wrote it (or `force`). `check(written, out)` runs on the asset as written, before it appears (a
    Mac check filled from it: `lower --mac-check`); if it raises, nothing appears."""
    from hrmc.targets.coreai._coreai import coreai

    check_exportable(model)
    outputs = tuple(output_names(model, batch))
    program, meanings = convert(stored_as(model, weights), batch, policy, budget, outputs, chunk, progress)
    functions = tuple(meanings)  # every function converted, in order
    record = Record(__version__, dataclasses.asdict(model.config), policy, budget, model.inner.sequence_length(batch),
                    outputs, weights_sha256(model), checkpoint.rebased(Path.cwd(), Path(out).parent), kind="coreai",
                    chunk=chunk if chunk and chunk > 1 else None, batch=batch_size(batch), weights=weights)
    with atomic_folder(out, marker=METADATA, force=force) as temporary:
        metadata = coreai.runtime.AIModelAssetMetadata()
        metadata.author, metadata.license = about.author, about.license
        metadata.model_description = about.description or f"HRM ({checkpoint.describe()}), by hrmc {__version__}"
        progress("saving the asset")
        asset = program.save_asset(temporary, metadata=metadata)
        parts = make_record({"program": (temporary / PROGRAM, file_sha256(temporary / PROGRAM))}, stem="")

        def stamp(meta) -> None:  # strings, as a Core ML package's user metadata holds them
            for key, value in (record.metadata() | {"functions": json.dumps(functions),
                                                    "descriptions": json.dumps(meanings, sort_keys=True)}).items():
                meta.set_custom(meta_key(key), value)
            if about.version:
                meta.set_custom("version", about.version)
            meta.set_custom(PARTS, json.dumps(parts, sort_keys=True))

        asset.update_metadata(stamp)
        if check is not None:
            check(temporary, Path(out))
    return CoreAIAsset(Path(out), functions)


def read_metadata(asset: str | Path) -> dict:
    """hrmc's custom metadata of an asset, its program checked against the record it holds (hrmc.binding)."""
    asset = Path(asset)
    path = asset / METADATA
    if not asset.is_dir() or not path.is_file() or not (asset / PROGRAM).is_file():
        raise InputError(f"{asset} is not a Core AI asset (no {METADATA} or {PROGRAM})")
    try:
        custom = json.loads(path.read_text()).get("creatorDefinedMetadata", {})
    except (ValueError, UnicodeDecodeError, AttributeError):
        raise InputError(f"{path}: not JSON (truncated or edited by hand?)") from None
    record = parse_record(custom.get(PARTS), path)
    if record is None:
        unrecorded(asset)
        return custom
    if {role: part["suffix"] for role, part in record.items()} != {"program": PROGRAM}:
        raise BindingError(f"{path}: its record names other files than a Core AI asset's ({PROGRAM})")
    verify(record, {"program": file_sha256(asset / PROGRAM)}, {"program": asset / PROGRAM}, path)
    return custom


_NUMPY_TYPES = {"f32": np.float32, "f16": np.float16, "i64": np.int64, "i32": np.int32, "i16": np.int16,
                "i8": np.int8, "si8": np.int8, "i1": np.bool_}
_CONSTANT = re.compile(r"(%\w+) = coreai\.constant (?:dense_resource<(\w+)>|dense<(.*?)>)\s*:\s*tensor<([^>]*)>")
_DECOMPRESSING = re.compile(r"coreai\.(blockwise_shift_scale|lut_to_dense) (%\w+), (%\w+)")


def stored_weights(asset: str | Path) -> Iterator[tuple[str, np.ndarray | Compressed]]:
    """Every constant the asset's program stores (its weight resources), as numpy arrays by resource name, each
    also as the one slice it repeats along its leading axes, if it does: the converter folds a parameter read at
    every batch row or position into a broadcast copy (H_init as [B, P, D], lm_head's weight as [B, D, V]); and
    every compressed weight, as hrm_ref.compression's `Compressed` (the data and scale of a blockwise_shift_scale,
    the indices and palettes of a lut_to_dense).

    Core AI has no reader of a program's constants yet (coreai-torch's own debugging prints the module, as here):
    the program is printed with every constant as hex, each `dense_resource<NAME> : tensor<…>` gives a resource's
    type, the module's `dialect_resources` its bytes (a 4-byte alignment, then the data, sub-byte integers packed
    low bits first); a small constant is inline, `dense<"0x…"> : tensor<…>`."""
    from hrmc.targets.coreai._coreai import coreai

    module = coreai.authoring.AIModelAsset.load(Path(asset)).program._module._mlir_module
    text = module.operation.get_asm(large_elements_limit=None)
    types = dict(re.findall(r"dense_resource<(\w+)>\s*:\s*tensor<([^>]*)>", text))
    resources = {name: _array(bytes.fromhex(payload)[4:], types[name])
                 for name, payload in re.findall(r'(\w+):\s*"0x([0-9A-Fa-f]+)"', text.rpartition("dialect_resources:")[2])}
    inline = re.findall(r'dense<"0x([0-9A-Fa-f]+)">\s*:\s*tensor<([^>]*)>', text)  # small ones: no alignment
    for name, array in [*resources.items(), *((f"an inline {kind}", _array(bytes.fromhex(payload), kind))
                                              for payload, kind in inline)]:
        if array is None or array.dtype.kind != "f":
            continue
        yield name, array
        repeated = array
        while repeated.ndim > 1 and (repeated == repeated[0]).all():
            repeated = repeated[0]
        if repeated is not array:  # also the slice it repeats: a parameter [1, D] is itself such an array
            yield f"{name} (the slice it repeats)", repeated
    yield from _compressed(text, resources)


def _array(data: bytes, tensor_type: str) -> np.ndarray | None:
    """A constant's bytes as the array its type says (None: a type no weight has)."""
    *dims, element = tensor_type.split("x")
    shape = [int(d) for d in dims]
    if element in _NUMPY_TYPES:
        return np.frombuffer(data, _NUMPY_TYPES[element]).reshape(shape)
    if re.fullmatch(r"ui[1-8]", element):  # palette indices, packed
        bits, count = int(element[2:]), int(np.prod(shape))
        packed = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")[:count * bits].reshape(count, bits)
        return (packed << np.arange(bits, dtype=np.uint8)).sum(axis=1, dtype=np.uint8).reshape(shape)
    return None


def _literal(literal: str, tensor_type: str) -> np.ndarray | None:
    """An inline constant as printed: hex bytes (more than 100 elements), else its values in decimal, nested
    lists or one value for all (a special float in hex)."""
    if literal.startswith('"0x'):
        return _array(bytes.fromhex(literal.strip('"')[2:]), tensor_type)
    *dims, element = tensor_type.split("x")
    dtype = _NUMPY_TYPES.get(element)
    if dtype is None or dtype is np.bool_:
        return None
    bits = np.dtype(f"u{np.dtype(dtype).itemsize}")
    values = [np.array(int(token, 16), bits).view(dtype) if token.startswith("0x") else dtype(token)
              for token in re.findall(r"[^\[\],\s]+", literal)]
    shape = [int(d) for d in dims]
    return np.full(shape, values[0], dtype) if len(values) == 1 else np.array(values, dtype).reshape(shape)


def _compressed(text: str, arrays: dict[str, np.ndarray | None]) -> Iterator[tuple[str, Compressed]]:
    """The compressed weights the program's functions decompress, each once (functions share the resources)."""
    seen, values = set(), {}  # values: a function's SSA names of constants → (where it is stored, its array)
    for line in text.splitlines():
        if "coreai.graph @" in line:
            values = {}
        elif constant := _CONSTANT.search(line):
            name, resource, literal, tensor_type = constant.groups()
            values[name] = ((resource, arrays.get(resource)) if resource else
                            (f"an inline {tensor_type}", _literal(literal, tensor_type)))
        elif (op := _DECOMPRESSING.search(line)) and op[2] in values and values[op[2]][0] not in seen:
            (where, data), (_, table) = values[op[2]], values.get(op[3], (None, None))
            if data is None or table is None:
                continue  # not read: the weight check then finds its parameter stored nowhere
            seen.add(where)
            yield where, read_int8(data, table) if op[1] == "blockwise_shift_scale" else read_lut(data, table)


def read_asset(asset: str | Path) -> tuple[Record, tuple[str, ...]]:
    """The record of an asset hrmc wrote and the functions it holds, its program checked first (read once: the
    program is hashed, 0.1 GB for sudoku)."""
    values, where = unprefixed(read_metadata(asset)), Path(asset) / METADATA
    if "functions" not in values:
        raise InputError(f"{where}: no hrmc record: not an asset hrmc wrote")
    try:
        functions = tuple(json.loads(values["functions"]))
    except (TypeError, ValueError):
        raise InputError(f"{where}: its hrmc record's 'functions' is unreadable") from None
    return Record.parse(values, where), functions


def read_record(asset: str | Path) -> Record:
    """The record of an asset hrmc wrote, its program checked first."""
    return read_asset(asset)[0]


__all__ = ["CoreAIAsset", "METADATA", "PROGRAM", "lower_coreai", "read_asset", "read_metadata", "read_record",
           "stored_weights"]
