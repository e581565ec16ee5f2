"""The Core ML package set: writing it (`lower_coreml`), and reading it back, verified.

`hrmc lower` writes one `.mlpackage` per graph (NAME.mlpackage, NAME.step.mlpackage, maybe
NAME.chunkK.mlpackage), each saved reproducibly (same input, same bytes) with hrmc's metadata, and
each recording the sha256 of its own files and of the whole set under `Data/com.hrmc/parts.json`
(hrmc.binding): all appear at once, or none. Packages are read from their files (`read_package`),
never through MLModel, whose handle rewrites Manifest.json on close.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnx_ir as ir
from google.protobuf.message import DecodeError

from hrmc import __version__
from hrmc.binding import BindingError, Record, file_sha256, json_sha256, make_record, parse_record, verify
from hrmc.errors import InputError
from hrmc.files import atomic_folder
from hrmc.names import CHUNK, PARTS, meta_key, unprefixed
from hrmc.targets import TARGETS
from hrmc.targets.coreml._coremltools import Program, ct, quiet_stderr
from hrmc.targets.coreml.lowering import FLAVOURS, build_program, plain_weights

PARTS_FILE = "com.hrmc/parts.json"  # under Data/: the package's record (hrmc.binding)
ORIGINS_FILE = "com.hrmc/origins.json"  # under Data/: the ONNX node of each MIL op, by function
HRMC_FILES = {PARTS_FILE: "sha256 of every file of this package and of its set (hrmc lower)",
              ORIGINS_FILE: "the ONNX node each op of the program computes, by the op's first output (hrmc lower)"}
BOOL_OUTPUTS = "bool_outputs"  # hrmc.bool_outputs in the user metadata: outputs bool in the ONNX graph, int32 here


@dataclass(frozen=True)
class CoreMLPackage:
    path: Path
    flavour: str
    batch: int
    bool_outputs: tuple[str, ...]  # bool in the ONNX graph, int32 in the package (Core ML I/O has no bool)
    meta: dict[str, str]  # hrmc's metadata, without the `hrmc.` prefix


def package_paths(out: str | Path, roles: list[str], chunk: int | None = None) -> dict[str, Path]:
    """Where `hrmc lower` puts each graph's package: NAME.mlpackage, NAME.step.mlpackage, NAME.chunkK.mlpackage."""
    out = Path(out)
    names = {"static": out, "step": out.with_name(f"{out.stem}.step.mlpackage"),
             "chunk": out.with_name(f"{out.stem}.chunk{chunk}.mlpackage")}
    return {role: names[role] for role in roles}


def lower_coreml(graphs: dict[str, Path], out: str | Path, flavour: str, batch: int, source: str,
                 progress: Callable[[str], None] = lambda _: None, force: bool = False,
                 weights: str | None = None, check: Callable[[Path, Path], None] | None = None) -> dict[str, Path]:
    """Build, convert and save one package per graph ({"static": …, "step": …, "chunk": …}) as a bound
    set (each records every package's files, hrmc.binding); all appear at once, or none. An existing
    folder is replaced only if hrmc wrote it (or `force`). `weights`: one of the flavour's (its default).
    `check(written, path)` runs on the whole-inference package before the set appears; what it raises
    leaves nothing behind."""
    weights = TARGETS[flavour].weight_storage(weights) or plain_weights(flavour)
    chunk = int(ir.load(str(graphs["chunk"])).metadata_props[CHUNK]) if "chunk" in graphs else None
    paths = package_paths(out, list(graphs), chunk)
    with contextlib.ExitStack() as stack:
        temporaries = {role: stack.enter_context(atomic_folder(path, marker=f"Data/{PARTS_FILE}", force=force))
                       for role, path in paths.items()}
        for role, graph in graphs.items():
            progress(f"converting the {role} graph (batch {batch})")
            _save_package(*_convert(graph, flavour, batch, source, weights), temporaries[role])
        files = {role: _package_files(temporary) for role, temporary in temporaries.items()}
        record = make_record({role: (paths[role], json_sha256(_flat(files[role]))) for role in paths})
        for role, temporary in temporaries.items():
            (temporary / "Data" / PARTS_FILE).write_text(json.dumps({"files": files[role], "set": record},
                                                                     indent=1, sort_keys=True))
        if check is not None and "static" in temporaries:
            check(temporaries["static"], paths["static"])
    return paths


def _convert(graph: Path, flavour: str, batch: int, source: str, weights: str):
    """The MLModel of one static ONNX graph, with hrmc's metadata, and its ops' ONNX nodes."""
    model = ir.load(str(graph))
    chosen = FLAVOURS[flavour]
    built = build_program(model, batch, f"{source} ({graph.name})", chosen, weight_pairs=weights == "float16x2")
    with quiet_stderr(), _unprinted(built.program):
        package = ct.convert(built.program, convert_to="mlprogram", compute_precision=ct.precision.FLOAT32,
                             compute_units=chosen.compute_units, minimum_deployment_target=ct.target.iOS17,
                             pass_pipeline=ct.PassPipeline.EMPTY)
    meta = unprefixed({key: value for key, value in model.metadata_props.items() if key != PARTS})
    bools = [value.name for value in model.graph.outputs if value.dtype == ir.DataType.BOOL]
    package.short_description = (f"HRM lowered by hrmc {__version__} ({flavour}: {chosen.description}, {weights} "
                                 f"weights) from {source}")
    package.version = __version__
    ours = {"version": __version__, "flavour": flavour, "batch": str(batch), "weights": weights}
    package.user_defined_metadata.update({meta_key(k): v for k, v in (ours | meta).items()}
                                         | {meta_key(BOOL_OUTPUTS): json.dumps(bools)})
    for value in model.graph.inputs:
        package.input_description[value.name] = f"{value.name} ({value.dtype.name.lower()} in the ONNX graph)"
    for value in model.graph.outputs:
        package.output_description[value.name] = f"{value.name} ({value.dtype.name.lower()} in the ONNX graph)"
    return package, built.origins


def _save_package(package, origins: dict[str, str], folder: Path) -> None:
    package.save(str(folder))
    (folder / "Data" / ORIGINS_FILE).parent.mkdir()
    (folder / "Data" / ORIGINS_FILE).write_text(json.dumps({"main": origins}, indent=0, sort_keys=True))
    _make_reproducible(folder)


@contextlib.contextmanager
def _unprinted(program: Program):
    """coremltools formats the whole program into its debug log messages (eager f-strings) even with
    debug logging off: about 40 % of converting sudoku's unrolled program. Print nothing meanwhile."""
    cls = type(program)
    printed = cls.__str__
    cls.__str__ = lambda self: f"<MIL program, {sum(len(f.operations) for f in self.functions.values())} ops>"
    try:
        yield
    finally:
        cls.__str__ = printed


def _make_reproducible(package: Path) -> None:
    """Same input, same bytes: coremltools writes random manifest ids and protobuf maps in hash order."""
    manifest_path = package / "Manifest.json"
    manifest = json.loads(manifest_path.read_text())
    ids = {old: str(uuid.uuid5(uuid.NAMESPACE_URL, entry["path"])) for old, entry in manifest["itemInfoEntries"].items()}
    manifest["itemInfoEntries"] = {ids[old]: entry for old, entry in sorted(manifest["itemInfoEntries"].items(),
                                                                               key=lambda item: item[1]["path"])}
    manifest["rootModelIdentifier"] = ids[manifest["rootModelIdentifier"]]
    for path, description in HRMC_FILES.items():
        manifest["itemInfoEntries"][str(uuid.uuid5(uuid.NAMESPACE_URL, path))] = {
            "author": "com.hrmc", "description": description, "name": Path(path).name, "path": path}
    manifest_path.write_text(json.dumps(manifest, indent=4))
    spec_path = package / "Data" / _root_model(manifest)
    spec = ct.proto.Model_pb2.Model()
    spec.ParseFromString(spec_path.read_bytes())
    spec_path.write_bytes(spec.SerializeToString(deterministic=True))


def _package_files(package: Path) -> dict[str, str]:
    """sha256 of every file in a package but its parts record, by path inside the package."""
    return {str(path.relative_to(package)): file_sha256(path) for path in sorted(package.rglob("*"))
            if path.is_file() and path != package / "Data" / PARTS_FILE}


def _flat(files: dict[str, str]) -> Record:
    return {name: {"file": name, "sha256": digest} for name, digest in files.items()}


def package_set(package: str | Path) -> dict[str, Path]:
    """{role: path} of the packages `hrmc lower` wrote together with `package`, each file of each
    checked against the records they hold. Packages written before hrmc recorded parts: the package
    alone, unverified."""
    package = Path(package)
    record_path = package / "Data" / PARTS_FILE
    if not record_path.is_file():
        read_package(package)  # names what is wrong with a package that is not one
        return {"static": package}
    own = _read_parts(record_path)
    for role, part in own["set"].items():
        sibling = package.parent / part["file"]
        parts = own if sibling == package else _read_parts(sibling / "Data" / PARTS_FILE, package)
        if parts["set"] != own["set"]:
            raise BindingError(f"{sibling}: does not belong with {package.name} (written by another run)")
        verify(_flat(parts["files"]), _package_files(sibling), sibling, sibling / "Data" / PARTS_FILE)
        if json_sha256(_flat(parts["files"])) != part["sha256"]:
            raise BindingError(f"{sibling}: not the package {package.name} was written with (another run)")
    return {role: package.parent / part["file"] for role, part in own["set"].items()}


def _read_parts(path: Path, reader: Path | None = None) -> dict:
    if not path.is_file():
        what = f" ({reader.name} records it as part of its set)" if reader else ""
        raise BindingError(f"{path.parent.parent}: missing or not written by hrmc lower{what}")
    try:
        parts = json.loads(path.read_text())
        parse_record(parts["set"], path)
        if not all(isinstance(v, str) for v in parts["files"].values()):
            raise TypeError
        return parts
    except (ValueError, KeyError, TypeError, AttributeError):
        raise BindingError(f"{path}: its record of the package's parts is unreadable (edited by hand?)") from None


def _root_model(manifest: dict) -> str:
    """The spec's path under the package's Data folder, as its manifest names it."""
    return manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]["path"]


def read_package(package: str | Path):
    """The spec and the weights folder of a saved package, read from its files. Not through
    MLModel, whose package handle rewrites Manifest.json on close: reading must not change the file."""
    path = Path(package)
    manifest_path = path / "Manifest.json"
    if not manifest_path.is_file():
        raise InputError(f"{path} is not an .mlpackage (no Manifest.json)")
    try:
        manifest = json.loads(manifest_path.read_text())
        root = _root_model(manifest)
    except (ValueError, KeyError) as error:
        raise InputError(f"{manifest_path}: not a Core ML package manifest ({error})") from None
    spec_path = path / "Data" / root
    if not spec_path.is_file():
        raise InputError(f"{spec_path} (the model spec {manifest_path} names) not found")
    spec = ct.proto.Model_pb2.Model()
    try:
        spec.ParseFromString(spec_path.read_bytes())
    except DecodeError:
        raise InputError(f"{spec_path}: not a Core ML model spec") from None
    return spec, spec_path.parent / "weights"


def main_block(package: str | Path):
    """The spec, the main function's block and the weights folder of a saved mlprogram package."""
    spec, weights = read_package(package)
    if spec.WhichOneof("Type") != "mlProgram":
        raise InputError(f"{package} is not an mlprogram package")
    function = spec.mlProgram.functions["main"]
    return spec, function.block_specializations[function.opset], weights


def origins(package: str | Path, function: str = "main") -> dict[str, str]:
    """The ONNX node each op of a package's function computes, by the op's first output name; empty
    for packages written before hrmc recorded origins."""
    path = Path(package) / "Data" / ORIGINS_FILE
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text())[function])
    except (ValueError, KeyError, TypeError):
        raise InputError(f"{path}: unreadable (edited by hand?)") from None


def op_counts(package: str | Path) -> dict[str, int]:
    """How many ops of each type the saved package's main function has."""
    return count_ops(main_block(package)[1])


def count_ops(block) -> dict[str, int]:
    counts: dict[str, int] = {}
    for op in block.operations:
        counts[op.type] = counts.get(op.type, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def package_info(path: Path) -> CoreMLPackage:
    """What the executor needs to know of a saved package: flavour, batch, bool outputs, hrmc's metadata."""
    spec = read_package(path)[0]
    meta = unprefixed(dict(spec.description.metadata.userDefined))
    if "flavour" not in meta or "batch" not in meta:
        raise InputError(f"{path} was not written by hrmc lower (no hrmc metadata)")
    if BOOL_OUTPUTS in meta:
        bools = tuple(json.loads(meta[BOOL_OUTPUTS]))
    else:  # packages written before the key: their output descriptions say it
        bools = tuple(o.name for o in spec.description.output if o.shortDescription.endswith("(bool in the ONNX graph)"))
    return CoreMLPackage(path, meta["flavour"], int(meta["batch"]), bools, meta)
