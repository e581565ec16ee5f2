"""The Core ML package: writing it (`lower_coreml`), and reading it back, verified.

`hrmc lower` writes one multifunction `.mlpackage` (Core ML 8, iOS 18 / macOS 15): a function per
graph, `inference` (the whole static graph, the default), `step` (one ACT step, carry in and out) and
`chunkK` when asked, over one weight file that coremltools' constant deduplication across functions
shares between them (as `save_multifunction` does, without its reload). It is saved reproducibly (same input, same bytes) with hrmc's metadata
(`hrmc.functions` says which graph each function is) and records the sha256 of its files under
`Data/com.hrmc/parts.json` (hrmc.binding). Packages are read from their files (`read_package`), never
through MLModel, whose handle rewrites Manifest.json on close.

hrmc 0.1 wrote one single-function package per graph (NAME.mlpackage, NAME.step.mlpackage,
NAME.chunkK.mlpackage) as a bound set; `package_functions` reads those too, so shipped 0.1 artifacts
still run and gate.
"""

from __future__ import annotations

import contextlib
import functools
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnx_ir as ir
from google.protobuf.message import DecodeError

from hrmc import __version__
from hrmc.binding import (BindingError, changed, file_sha256, json_sha256, members, parse_record, role_of, unrecorded,
                          verify)
from hrmc.errors import InputError
from hrmc.files import atomic_folder
from hrmc.hrm_ref.compression import COMPRESSIONS
from hrmc.names import CHUNK, PARTS, meta_key, unprefixed
from hrmc.record import Record, rebase
from hrmc.targets import About
from hrmc.targets.app import describe, init_graph, with_answer
from hrmc.targets.coreml._coremltools import PASS_REGISTRY, Program, ct, quiet_stderr
from hrmc.targets.coreml.lowering import FLAVOURS, build_program, plain_weights

PARTS_FILE = "com.hrmc/parts.json"  # under Data/: the package's record (hrmc.binding)
ORIGINS_FILE = "com.hrmc/origins.json"  # under Data/: the ONNX node of each MIL op, by function
VALUES_FILE = "com.hrmc/values.json"  # under Data/: the MIL value of each ONNX value, by function
HRMC_FILES = {PARTS_FILE: "sha256 of every file of this package and of its set (hrmc lower)",
              ORIGINS_FILE: "the ONNX node each op of the program computes, by the op's first output (hrmc lower)",
              VALUES_FILE: "the MIL value that holds each ONNX value the program computes (hrmc lower)"}
BOOL_OUTPUTS = "bool_outputs"  # hrmc.bool_outputs in the user metadata: outputs bool in the ONNX graph, int32 here
FUNCTIONS = "functions"  # hrmc.functions: {function: {"role", "bool_outputs", "meta"}} of a multifunction package
WHOLE = "solve"  # the function of the whole static graph, the package's default ("inference" in packages hrmc wrote before)


@dataclass(frozen=True)
class PackageFunction:
    """One graph of a lowered package, as the executors and reports need it."""

    role: str  # static (the whole inference), step or chunk
    path: Path  # the package that holds it
    name: str  # its function there ("main" in 0.1's single-function packages)
    bool_outputs: tuple[str, ...]  # bool in the ONNX graph, int32 in the package (Core ML I/O has no bool)
    meta: dict[str, str]  # hrmc's metadata of its graph, without the `hrmc.` prefix: its record

    @functools.cached_property
    def record(self) -> Record:
        return Record.parse(self.meta, self.path)

    @property
    def flavour(self) -> str:
        return self.record.flavour

    @property
    def batch(self) -> int:
        return self.record.batch


def function_name(role: str, chunk: int | None = None) -> str:
    """The function a graph of `role` becomes: solve, step, chunkK, init."""
    return {"static": WHOLE, "step": "step", "chunk": f"chunk{chunk}", "init": "init"}[role]


def app_graphs(graphs: dict[str, Path], chunk: int | None) -> tuple[dict[str, ir.Model], dict[str, str]]:
    """Each graph by its function's name, and each function's role; a package with the whole inference and the
    step also gets `init`, and its `solve` the final answer (targets/app.py)."""
    models = {function_name(role, chunk): ir.load(str(graph)) for role, graph in graphs.items()}
    roles = {function_name(role, chunk): role for role in graphs}
    if "static" in graphs and "step" in graphs:
        models[WHOLE] = with_answer(models[WHOLE])
        models["init"], roles["init"] = init_graph(models[WHOLE], models["step"]), "init"
    return models, roles


def lower_coreml(graphs: dict[str, Path], out: str | Path, flavour: str, batch: int, source: str,
                 progress: Callable[[str], None] = lambda _: None, force: bool = False,
                 weights: str | None = None, check: Callable[[Path, Path], None] | None = None,
                 about: About = About()) -> Path:
    """Build each graph ({"static": …, "step": …, "chunk": …}) as a function of one MIL program (and `init`),
    share the weights they hold alike, and save the package `out`; it appears whole, or not at all.
    An existing folder is replaced only if hrmc wrote it (or `force`). `weights`: one of the flavour's
    (its default). `check(written, out)` runs on the package before it appears; what it raises leaves
    nothing behind. `about`: the author, license, version and description the package shows."""
    chosen, out = FLAVOURS[flavour], Path(out)
    weights = chosen.target.weight_storage(weights) or plain_weights(flavour)
    chunk = int(ir.load(str(graphs["chunk"])).metadata_props[CHUNK]) if "chunk" in graphs else None
    models, roles = app_graphs(graphs, chunk)
    progress(f"building {', '.join(models)} (batch {batch})")
    built = build_program(models, batch, source, chosen, weight_pairs=weights == "float16x2",
                          compression=weights if weights in COMPRESSIONS else None)
    if "static" in graphs:
        built.program.default_function_name = WHOLE
    # The functions read the same weights: one blob each in the weight file (save_multifunction's way, without
    # its reload and its hundred validations of the whole program)
    PASS_REGISTRY["common::const_deduplication"]._deduplicate_const_across_functions(built.program)
    built.program.export_as_multifunction = True
    progress("converting")
    with quiet_stderr(), _converting(built.program):
        package = ct.convert(built.program, convert_to="mlprogram", compute_precision=ct.precision.FLOAT32,
                             compute_units=chosen.compute_units, minimum_deployment_target=ct.target.iOS18,
                             pass_pipeline=ct.PassPipeline.EMPTY)
    with atomic_folder(out, marker=f"Data/{PARTS_FILE}", force=force) as temporary:
        package.save(str(temporary))
        records = {name: {"role": role} | _function_record(models[name], flavour, batch, weights,
                                                           graphs.get(role, graphs.get("step")).parent, out.parent)
                   for name, role in roles.items()}
        _describe(temporary, flavour, weights, source, records, models, about, batch)
        (temporary / "Data" / ORIGINS_FILE).parent.mkdir()
        (temporary / "Data" / ORIGINS_FILE).write_text(json.dumps(built.origins, indent=0, sort_keys=True))
        (temporary / "Data" / VALUES_FILE).write_text(json.dumps(built.values, indent=0, sort_keys=True))
        _make_reproducible(temporary)
        # its own files only, by their paths inside it: a package is the same bytes whatever its name
        (temporary / "Data" / PARTS_FILE).write_text(json.dumps({"files": _package_files(temporary)}, indent=1,
                                                                sort_keys=True))
        if check is not None:
            check(temporary, out)
    return out


def _function_record(model: ir.Model, flavour: str, batch: int, weights: str, graph_folder: Path,
                     out_folder: Path) -> dict:
    """What `hrmc.functions` records of one graph: its bool outputs and its hrmc metadata (its record, the
    checkpoint's path seen from the package's folder)."""
    meta = unprefixed({key: value for key, value in model.metadata_props.items() if key != PARTS})
    rebase(meta, "checkpoint", graph_folder, out_folder)
    ours = {"version": __version__, "flavour": flavour, "batch": str(batch), "weights": weights}
    bools = [value.name for value in model.graph.outputs if value.dtype == ir.DataType.BOOL]
    return {"bool_outputs": bools, "meta": ours | meta}


def _describe(package: Path, flavour: str, weights: str, source: str, functions: dict[str, dict],
              models: dict[str, ir.Model], about: About, batch: int) -> None:
    """hrmc's metadata in a saved package's spec: what every function's graph shares at the top, each
    function's own under `hrmc.functions`; each input and output described: its meaning, type, shape and use."""
    spec_path, spec = _spec(package)
    metas = [record["meta"] for record in functions.values()]
    shared = {key: value for key, value in metas[0].items() if all(meta.get(key) == value for meta in metas)}
    for record in functions.values():
        record["meta"] = {key: value for key, value in record["meta"].items() if key not in shared}
    description = spec.description.metadata
    lowered = (f"HRM lowered by hrmc {__version__} ({flavour}: {FLAVOURS[flavour].description}, {weights} weights) "
               f"from {source}; functions {', '.join(functions)}")
    description.shortDescription = f"{about.description} ({lowered})" if about.description else lowered
    description.author, description.license, description.versionString = about.author, about.license, about.version
    for key, value in (shared | {FUNCTIONS: json.dumps(functions, sort_keys=True)}).items():
        description.userDefined[meta_key(key)] = value
    for function in spec.description.functions:
        graph = models[function.name].graph
        for features, values in ((function.input, graph.inputs), (function.output, graph.outputs)):
            shapes = {value.name: [d if isinstance(d, int) else batch for d in value.shape] for value in values}
            for feature in features:
                feature.shortDescription = describe(feature.name, function.name, _io_type(feature),
                                                    shapes[feature.name])
    spec_path.write_bytes(spec.SerializeToString(deterministic=True))


def _io_type(feature) -> str:
    """A function input's or output's Core ML type: float16, float32 or int32."""
    array = feature.type.multiArrayType
    return {array.FLOAT16: "float16", array.FLOAT32: "float32", array.INT32: "int32"}.get(array.dataType, "array")


@contextlib.contextmanager
def _converting(program: Program):
    """ct.convert of a built program, without the work that is not conversion:
    - coremltools formats the whole program into its debug log messages (eager f-strings) even with debug
      logging off: about 40 % of converting sudoku's unrolled program. Print nothing meanwhile.
    - it validates the whole program before its pipelines, after each backend pass and twice more while
      writing it (11 walks of every op, about a fifth of `lower --target ane` on sudoku): validate the program
      as built once (what hrmc wrote), not again after each of coremltools' own passes."""
    cls = type(program)
    printed, validate = cls.__str__, cls.validate
    validated = []

    def validate_once(self, *args, **kwargs):
        if not validated:
            validate(self, *args, **kwargs)
            validated.append(self)

    cls.__str__ = lambda self: f"<MIL program, {sum(len(f.operations) for f in self.functions.values())} ops>"
    cls.validate = validate_once
    try:
        yield
    finally:
        cls.__str__, cls.validate = printed, validate


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
    spec_path, spec = _spec(package)
    spec_path.write_bytes(spec.SerializeToString(deterministic=True))


def _spec(package: Path):
    """The path of a package's model spec, and the spec."""
    spec_path = package / "Data" / _root_model(json.loads((package / "Manifest.json").read_text()))
    spec = ct.proto.Model_pb2.Model()
    spec.ParseFromString(spec_path.read_bytes())
    return spec_path, spec


def _package_files(package: Path) -> dict[str, str]:
    """sha256 of every file in a package but its parts record, by path inside the package."""
    return {str(path.relative_to(package)): file_sha256(path) for path in sorted(package.rglob("*"))
            if path.is_file() and path != package / "Data" / PARTS_FILE}


def package_functions(package: str | Path) -> dict[str, PackageFunction]:
    """{role: function} of a package `hrmc lower` wrote, its files checked against its record first.
    A 0.1 package names its set: each graph is the main function of one package of it, each verified."""
    members = package_set(package)
    return read_functions(package) or {role: _single_function(role, path) for role, path in members.items()}


def read_functions(package: str | Path) -> dict[str, PackageFunction]:
    """{role: function} as a multifunction package's metadata says, unverified; {} for a 0.1 package."""
    package = Path(package)
    spec, meta = _hrmc_meta(package)
    if FUNCTIONS not in meta:
        return {}
    try:
        functions = json.loads(meta.pop(FUNCTIONS))
        return {record["role"]: PackageFunction(record["role"], package, name, tuple(record["bool_outputs"]),
                                                meta | record["meta"]) for name, record in functions.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise InputError(f"{package}: its hrmc.functions metadata is unreadable (edited by hand?)") from None


def read_record(package: str | Path) -> Record:
    """The record of a package (of its step function: every function records the same model and how it was
    lowered; their graphs differ), read from its files, not yet verified."""
    package = Path(package)
    functions = read_functions(package) or {"step": _single_function("step", package)}
    return (functions.get("step") or next(iter(functions.values()))).record


def _single_function(role: str, path: Path) -> PackageFunction:
    """A graph of a 0.1 package set: the main function of its own package."""
    spec, meta = _hrmc_meta(path)
    if BOOL_OUTPUTS in meta:
        bools = tuple(json.loads(meta.pop(BOOL_OUTPUTS)))
    else:  # packages written before the key: their output descriptions say it
        bools = tuple(o.name for o in spec.description.output if o.shortDescription.endswith("(bool in the ONNX graph)"))
    return PackageFunction(role, path, "main", bools, meta)


def _hrmc_meta(package: Path):
    """A package's spec and hrmc's metadata in it (without the `hrmc.` prefix); one hrmc lower wrote."""
    spec = read_package(package)[0]
    meta = unprefixed(dict(spec.description.metadata.userDefined))
    if "flavour" not in meta or "batch" not in meta:
        raise InputError(f"{package} was not written by hrmc lower (no hrmc metadata)")
    return spec, meta


def package_set(package: str | Path) -> dict[str, Path]:
    """{role: path} of what `hrmc lower` wrote together with `package` ({"package": package} for a
    multifunction package), every file of each checked against the record it holds: the package given,
    whatever its name, and for a 0.1 set the packages beside it named as it is (NAME.step.mlpackage).
    A package without a record is refused (`binding.unrecorded`), or where that is accepted read alone."""
    package = Path(package)
    record_path = package / "Data" / PARTS_FILE
    if not record_path.is_file():
        read_package(package)  # names what is wrong with a package that is not one
        unrecorded(package)
        return {"static": package}
    own = _read_parts(record_path)
    _verify_files(own, package)
    if "set" not in own:
        return {"package": package}
    record = parse_record(own["set"], record_path)
    role = role_of(record, _set_digest(own["files"]), package)
    where = members(record, package, role)
    for other, sibling in where.items():
        if other == role:
            continue
        parts = _read_parts(sibling / "Data" / PARTS_FILE, package)
        if parse_record(parts["set"], sibling) != record:
            raise BindingError(f"{sibling}: does not belong with {package.name} (written by another run)")
        _verify_files(parts, sibling)
        if _set_digest(parts["files"]) != record[other]["sha256"]:
            raise BindingError(f"{sibling}: not the package {package.name} was written with (another run)")
    return where


def _set_digest(files: dict[str, str]) -> str:
    """A package's digest in the set records of earlier releases: of its file list, in the form they wrote."""
    return json_sha256({name: {"file": name, "sha256": digest} for name, digest in files.items()})


def _verify_files(parts: dict, package: Path) -> None:
    """Every file of `package` as its record (`parts["files"]`) lists it, and no file it does not list."""
    files = parts["files"]
    found = _package_files(package)
    extra = sorted(set(found) - set(files))
    if extra:
        changed(f"{package / extra[0]}: not among the files {package.name} records (added after hrmc wrote it)")
    for name in (f"Data/{file}" for file in HRMC_FILES if file != PARTS_FILE):
        if name in files and found.get(name) != files[name]:  # hrmc's own maps: never read changed, even by --localize
            raise BindingError(f"{package / name}: does not match the sha256 {package.name} records for it (hrmc's "
                               "map of the program: lower the package again)")
    verify({name: {"sha256": digest} for name, digest in files.items()}, found,
           {name: package / name for name in files}, package / "Data" / PARTS_FILE)


def _read_parts(path: Path, reader: Path | None = None) -> dict:
    if not path.is_file():
        what = f" ({reader.name} records it as part of its set)" if reader else ""
        raise BindingError(f"{path.parent.parent}: missing or not written by hrmc lower{what}")
    try:
        parts = json.loads(path.read_text())
        if "set" in parts:  # the set records of earlier releases
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


def function_block(package: str | Path, function: str | None = None):
    """The spec, one function's block (by default the package's default function) and the weights
    folder of a saved mlprogram package."""
    spec, weights = read_package(package)
    if spec.WhichOneof("Type") != "mlProgram":
        raise InputError(f"{package} is not an mlprogram package")
    function = function or default_function(spec)
    if function not in spec.mlProgram.functions:
        raise InputError(f"{package} has no function {function!r} (it has {', '.join(spec.mlProgram.functions)})")
    chosen = spec.mlProgram.functions[function]
    return spec, chosen.block_specializations[chosen.opset], weights


def default_function(spec) -> str:
    """The function a package runs when none is named: `inference` in hrmc's, `main` in 0.1's."""
    return spec.description.defaultFunctionName or "main"


def origins(package: str | Path, function: str) -> dict[str, str]:
    """The ONNX node each op of a package's function computes, by the op's first output name; empty
    for packages written before hrmc recorded origins."""
    return _function_map(package, ORIGINS_FILE, function)


def value_vars(package: str | Path, function: str) -> dict[str, str]:
    """The MIL value that holds each ONNX value a package's function computes; empty for packages written
    before hrmc recorded them."""
    return _function_map(package, VALUES_FILE, function)


def _function_map(package: str | Path, file: str, function: str) -> dict[str, str]:
    path = Path(package) / "Data" / file
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text())[function])
    except (ValueError, KeyError, TypeError):
        raise InputError(f"{path}: unreadable (edited by hand?)") from None


def op_counts(package: str | Path, function: str | None = None) -> dict[str, int]:
    """How many ops of each type one function (by default the default one) of a saved package has."""
    return count_ops(function_block(package, function)[1])


def count_ops(block) -> dict[str, int]:
    counts: dict[str, int] = {}
    for op in block.operations:
        counts[op.type] = counts.get(op.type, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))
