"""The gate runs what ships: `--artifact` files, bound by their recorded parts, every graph they hold.

A tampered artifact fails in the default (step) mode: exit 2 where its record no longer matches
its files (the binding names the file), exit 1 where the numbers are wrong yet the record was
rewritten to match (the gate itself catches it, whole-inference graph included).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hrmc.binding import BindingError
from hrmc.cli import main
from hrmc.hrm_ref.checkpoint import save_checkpoint
from hrmc.lowering.artifact import bound_parts, load_proto, save_bound
from hrmc.lowering.export import step_path_for
from tests.helpers import assert_one_line_error


def hrmc(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def gate(capsys, executor: str, artifact: Path, *extra: str) -> tuple[int, str, str]:
    return hrmc(capsys, "parity", "torch", executor, "--policy", "q-halt", "--artifact", str(artifact), *extra)


@pytest.fixture(scope="module")
def shipped(tiny_export: Path, tmp_path_factory) -> Path:
    """The tiny q-halt export, lowered once: static ONNX set (with a 2-step chunk) and an MLX folder."""
    folder = tmp_path_factory.mktemp("shipped")
    for name in ("tiny.onnx", "tiny.step.onnx"):
        shutil.copy(tiny_export.parent / name, folder / name)
    assert main(["lower", "--target", "onnx", "--policy", "q-halt", "--onnx-model", str(folder / "tiny.onnx"),
                 "--chunk", "2", "-o", str(folder / "tiny.static.onnx")]) == 0
    assert main(["lower", "--target", "mlx", "--policy", "q-halt", "--onnx-model", str(folder / "tiny.onnx"),
                 "-o", str(folder / "tiny-mlx")]) == 0
    return folder


def copy_of(source: Path, into: Path) -> Path:
    """A copy of the artifact set `source` belongs to, in `into`."""
    into.mkdir(exist_ok=True)
    for part in bound_parts(source).values():
        shutil.copy(part, into / part.name)
    return into / source.name


def largest_weight(proto: onnx.ModelProto) -> onnx.TensorProto:
    return max((t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT),
               key=lambda t: np.prod(t.dims))


def rope_table(proto: onnx.ModelProto) -> onnx.TensorProto:
    """A constant of the graph's own, not a weight: a RoPE table ([positions, 1, head_dim])."""
    return next(t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 3)


def tamper(path: Path, change, rebind: bool, tensor=largest_weight) -> None:
    """Apply `change` to one float constant of one ONNX file (by default its largest weight); `rebind` rewrites
    the set's record to match."""
    proto = load_proto(path)
    weight = tensor(proto)
    weight.CopyFrom(onnx.numpy_helper.from_array(change(onnx.numpy_helper.to_array(weight)), weight.name))
    if not rebind:
        onnx.save(proto, path)
        return
    parts = bound_parts(path)
    save_bound({role: (part, proto if part == path else load_proto(part)) for role, part in parts.items()})


@pytest.mark.parametrize("executor, name", [("onnx", "tiny.onnx"), ("static", "tiny.static.onnx"),
                                            ("chunked", "tiny.static.onnx")])
def test_an_untouched_artifact_passes_and_is_named(capsys, shipped: Path, executor: str, name: str) -> None:
    code, out, err = gate(capsys, executor, shipped / name)
    assert code == 0 and out.rstrip().endswith("PASS"), out + err
    assert f"shipped artifact {name}" in out
    assert f"{executor} whole vs its steps" in out  # the whole-inference graph is checked in step mode too


@pytest.mark.parametrize("name", ["tiny.onnx", "tiny.static.onnx"])
@pytest.mark.parametrize("change", [lambda w: np.full_like(w, np.nan), lambda w: w * 1.001],
                         ids=["nan", "scaled"])
def test_a_tampered_whole_inference_graph_fails_the_default_mode(capsys, shipped: Path, tmp_path: Path, name: str,
                                                                   change) -> None:
    executor = "onnx" if name == "tiny.onnx" else "static"
    edited = copy_of(shipped / name, tmp_path / "edited")
    tamper(edited, change, rebind=False)
    code, _, err = gate(capsys, executor, edited)
    assert_one_line_error(code, err, str(edited), "does not match the sha256")

    rebound = copy_of(shipped / name, tmp_path / "rebound")
    tamper(rebound, change, rebind=True)  # the record agrees with the broken file: its weights are not the model's
    code, _, err = gate(capsys, executor, rebound)
    assert code == 1 and "is none of the model's parameters" in err, err

    table = copy_of(shipped / name, tmp_path / "table")
    tamper(table, change, rebind=True, tensor=rope_table)  # no weight changed: only the numbers can tell
    code, out, _ = gate(capsys, executor, table)
    assert code == 1 and f"FAIL: {executor} whole vs its steps: logits from step 1" in out, out


def test_a_step_graph_from_another_export_is_refused(capsys, tiny, shipped: Path, tmp_path: Path) -> None:
    # another export: the same weights from a checkpoint file, whose record names it (the trace, from the cache)
    save_checkpoint(tiny, tmp_path / "tiny.safetensors")
    other = tmp_path / "other" / "tiny.onnx"
    other.parent.mkdir()
    assert hrmc(capsys, "export", "--checkpoint", str(tmp_path / "tiny.safetensors"), "--policy", "q-halt",
                "-o", str(other))[0] == 0
    assert step_path_for(other).read_bytes() != (shipped / "tiny.step.onnx").read_bytes()
    mixed = copy_of(shipped / "tiny.onnx", tmp_path / "mixed")
    shutil.copy(step_path_for(other), step_path_for(mixed))  # killed between two renames, say
    code, _, err = gate(capsys, "onnx", mixed)
    assert_one_line_error(code, err, "tiny.step.onnx")
    code, _, err = hrmc(capsys, "lower", "--target", "onnx", "--policy", "q-halt", "--onnx-model", str(mixed),
                        "-o", str(tmp_path / "never.onnx"))
    assert_one_line_error(code, err, "tiny.step.onnx")
    assert not (tmp_path / "never.onnx").exists()


def test_truncated_and_missing_parts_are_named(capsys, shipped: Path, tmp_path: Path) -> None:
    truncated = copy_of(shipped / "tiny.static.onnx", tmp_path / "truncated")
    step = step_path_for(truncated)
    step.write_bytes(step.read_bytes()[:1000])
    assert_one_line_error(*gate(capsys, "static", truncated)[::2], str(step), "cannot read")
    step.unlink()
    assert_one_line_error(*gate(capsys, "static", truncated)[::2], str(step), "missing")


def test_an_artifact_of_the_wrong_kind_or_model_is_refused(capsys, shipped: Path) -> None:
    assert_one_line_error(*gate(capsys, "static", shipped / "tiny.onnx")[::2], "not a static graph")
    code, _, err = hrmc(capsys, "parity", "torch", "static", "--policy", "q-halt", "--preset", "nibble",
                        "--artifact", str(shipped / "tiny.static.onnx"))
    assert_one_line_error(code, err, "other weights")
    code, _, err = hrmc(capsys, "parity", "torch", "static", "--policy", "max-steps", "--artifact",
                        str(shipped / "tiny.static.onnx"))  # without --policy, the recorded one is taken
    assert_one_line_error(code, err, "--policy max-steps", "was made with policy q-halt")
    assert_one_line_error(*gate(capsys, "chunked", shipped / "tiny.static.onnx", "--chunk", "3")[::2],
                          "--chunk 3", "2-step chunks")


def test_mlx_folder_as_shipped(capsys, shipped: Path, tmp_path: Path) -> None:
    code, out, err = gate(capsys, "mlx", shipped / "tiny-mlx")
    assert code == 0 and "shipped artifact tiny-mlx" in out and "mlx whole vs its steps" in out, out + err

    edited = tmp_path / "edited-mlx"
    shutil.copytree(shipped / "tiny-mlx", edited)
    scale_safetensors(edited / "weights.safetensors")
    assert_one_line_error(*gate(capsys, "mlx", edited)[::2], "weights.safetensors", "does not match the sha256")

    # a module that would end the gate if imported: weights are checked before any code of the folder runs
    (edited / "hrm_mlx.py").write_text("raise SystemExit('imported')\n")
    config = json.loads((edited / "config.json").read_text())  # the record rewritten to match the edits
    for role, name in (("weights", "weights.safetensors"), ("module", "hrm_mlx.py")):
        config["parts"][role]["sha256"] = _sha256(edited / name)
    rebound = dict(config)
    del rebound["parts"]
    config["parts"]["config"]["sha256"] = _json_sha256(rebound)
    (edited / "config.json").write_text(json.dumps(config))
    code, _, err = gate(capsys, "mlx", edited)
    assert code == 1 and "is none of the model's parameters" in err, err


def scale_safetensors(path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    weights = load_file(str(path))
    name = max(weights, key=lambda key: weights[key].size if weights[key].dtype == np.float32 else 0)
    weights[name] = weights[name] * np.float32(1.001)
    save_file(weights, str(path))


def _sha256(path: Path) -> str:
    from hrmc.binding import file_sha256

    return file_sha256(path)


def _json_sha256(value) -> str:
    from hrmc.binding import json_sha256

    return json_sha256(value)


def renamed_set(source: Path, into: Path, name: str) -> Path:
    """The set `source` belongs to, copied into `into` under the whole graph's new name `name` (NAME.onnx …)."""
    into.mkdir(exist_ok=True)
    stem = source.name.removesuffix(".onnx")
    for part in bound_parts(source).values():
        shutil.copy(part, into / (name + part.name[len(stem):]))
    return into / f"{name}.onnx"


def test_an_edited_copy_beside_its_untouched_original_fails(capsys, shipped: Path, tmp_path: Path) -> None:
    """The files given are the files checked and run, never those their record names."""
    folder = tmp_path / "ship"
    original = copy_of(shipped / "tiny.static.onnx", folder)
    edited = renamed_set(original, folder, "X")
    tamper(edited, lambda w: np.full_like(w, np.nan), rebind=False)
    assert_one_line_error(*gate(capsys, "static", edited)[::2], str(edited), "does not match the sha256")
    assert gate(capsys, "static", original)[0] == 0  # the original beside it is untouched


def test_a_renamed_set_passes_as_itself_and_a_part_left_behind_is_named(capsys, shipped: Path, tmp_path: Path) -> None:
    renamed = renamed_set(shipped / "tiny.static.onnx", tmp_path / "app", "HRMSolver")
    code, out, err = gate(capsys, "chunked", renamed)
    assert code == 0 and "shipped artifact HRMSolver.onnx" in out and out.rstrip().endswith("PASS"), out + err
    (tmp_path / "app" / "HRMSolver.step.onnx").rename(tmp_path / "app" / "tiny.static.step.onnx")
    assert_one_line_error(*gate(capsys, "static", renamed)[::2], str(tmp_path / "app" / "HRMSolver.step.onnx"),
                          "missing")


def test_two_lowerings_to_different_names_are_the_same_bytes(shipped: Path, tmp_path: Path) -> None:
    for name in ("a.onnx", "HRMSolver.onnx"):
        assert main(["lower", "--target", "onnx", "--policy", "q-halt", "--onnx-model", str(shipped / "tiny.onnx"),
                     "--chunk", "2", "-o", str(tmp_path / name)]) == 0
        assert main(["lower", "--target", "mlx", "--policy", "q-halt", "--onnx-model", str(shipped / "tiny.onnx"),
                     "-o", str(tmp_path / name.replace(".onnx", "-mlx"))]) == 0
    for suffix in (".onnx", ".step.onnx", ".chunk2.onnx"):
        assert (tmp_path / f"a{suffix}").read_bytes() == (tmp_path / f"HRMSolver{suffix}").read_bytes()
    for file in ("hrm_mlx.py", "weights.safetensors", "config.json", "README.md"):
        data = (tmp_path / "HRMSolver-mlx" / file).read_bytes()
        assert (tmp_path / "a-mlx" / file).read_bytes() == data and str(tmp_path).encode() not in data


def strip_record(path: Path) -> None:
    proto = load_proto(path)
    kept = [p for p in proto.metadata_props if p.key != "hrmc.parts"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    onnx.save(proto, path)


def test_an_artifact_without_its_record_is_refused_unless_unrecorded(capsys, shipped: Path, tmp_path: Path) -> None:
    bare = copy_of(shipped / "tiny.static.onnx", tmp_path / "bare")
    for part in bound_parts(bare).values():
        strip_record(part)
    assert_one_line_error(*gate(capsys, "static", bare)[::2], str(bare), "no record of its parts")
    code, out, _ = gate(capsys, "static", bare, "--unrecorded")
    lines = out.rstrip().splitlines()
    assert code == 1 and lines[0].startswith(f"UNRECORDED: {bare}") and lines[-1].startswith("UNRECORDED: "), out
    code, out, _ = gate(capsys, "static", bare, "--unrecorded", "--json")
    assert code == 1 and next(iter(json.loads(out))) == "unrecorded" and not json.loads(out)["passed"]

    folder = tmp_path / "mlx"
    shutil.copytree(shipped / "tiny-mlx", folder)
    config = json.loads((folder / "config.json").read_text())
    del config["parts"]
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "hrm_mlx.py").write_text("raise SystemExit('imported')\n")  # never imported without --unrecorded
    assert_one_line_error(*gate(capsys, "mlx", folder)[::2], "no record of its parts")


def test_a_graph_tools_rewrite_of_an_export_is_not_the_export(capsys, shipped: Path, tmp_path: Path) -> None:
    onnxsim = pytest.importorskip("onnxsim")
    folder = tmp_path / "sim"
    export = copy_of(shipped / "tiny.onnx", folder)
    simplified, ok = onnxsim.simplify(onnx.load(str(export)))  # keeps the model's metadata, the record with it
    assert ok
    weight = largest_weight(simplified)
    weight.CopyFrom(onnx.numpy_helper.from_array(np.full_like(onnx.numpy_helper.to_array(weight), np.nan),
                                                 weight.name))
    onnx.save(simplified, str(folder / "tiny.sim.onnx"))
    code, _, err = gate(capsys, "onnx", folder / "tiny.sim.onnx")
    assert_one_line_error(code, err, "tiny.sim.onnx", "does not match the sha256")


def test_every_graph_an_artifact_holds_is_gated(capsys, shipped: Path, tmp_path: Path) -> None:
    """The static executor runs its whole graph: the chunk graph it ships is gated too, and --localize fails
    where the gate fails even when no step graph does."""
    chunk = copy_of(shipped / "tiny.static.onnx", tmp_path / "chunk")
    tamper(chunk.with_name("tiny.static.chunk2.onnx"), lambda w: w * 1.01, rebind=True, tensor=rope_table)
    code, out, _ = gate(capsys, "static", chunk)
    assert code == 1 and "FAIL: static chunk graph vs its steps" in out, out

    whole = copy_of(shipped / "tiny.static.onnx", tmp_path / "whole")
    tamper(whole, lambda w: w * 1.01, rebind=True, tensor=rope_table)
    code, out, _ = gate(capsys, "static", whole, "--localize")
    assert code == 1 and "FAIL: not in a step graph: tiny.static.onnx (static whole vs its steps)" in out, out


def test_json_reports_are_standard_json(capsys, shipped: Path) -> None:
    code, out, _ = gate(capsys, "static", shipped / "tiny.static.onnx", "--json")

    def refuse(constant: str):
        raise AssertionError(f"{constant} is not JSON")
    report = json.loads(out, parse_constant=refuse)
    assert code == 0 and report["passed"] and report["halting"]["smallest_clear_margin"] == "Infinity"


# What a user or an attacker may do to a shipped set, and whether its content stays what hrmc wrote.
UNTOUCHED = {"copy": True, "rename": True, "rename-one": False, "drop-record": False, "edit": False,
             "edit-rebound": False, "edit-table-rebound": False}


def apply(operation: str, artifact: Path, work: Path, index: int) -> Path:
    """One operation on the files of the set whose whole graph is `artifact`, done as a user does it (file by
    file, whatever their records say); returns the whole graph to gate after it."""
    stem = artifact.name.removesuffix(".onnx")
    files = sorted(artifact.parent.glob(f"{stem}.*onnx"))
    if operation in ("copy", "rename"):
        into = work / f"{operation}{len(list(work.iterdir()))}"
        into.mkdir()
        name = stem if operation == "copy" else f"app{index}"
        for file in files:
            shutil.copy(file, into / (name + file.name[len(stem):]))
        return into / f"{name}.onnx"
    if operation == "rename-one":
        return artifact.rename(artifact.with_name(f"other{index}.onnx"))
    part = files[index % len(files)]
    if operation == "drop-record":
        strip_record(part)
    else:
        tensor = rope_table if operation == "edit-table-rebound" else largest_weight
        try:
            tamper(part, lambda w: w * 1.001, operation != "edit", tensor)
        except BindingError:  # a set already broken cannot be rebound: the edit alone
            tamper(part, lambda w: w * 1.001, False, tensor)
    return artifact


@settings(max_examples=15, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=st.lists(st.sampled_from(sorted(UNTOUCHED)), min_size=1, max_size=3), index=st.integers(0, 5))
def test_only_untouched_content_passes(capsys, shipped: Path, operations: list[str], index: int) -> None:
    """Copies, renames, records removed and edits, in any order: exit 0 only where every file is as hrmc wrote it
    (the name given aside), else a refusal (2) or a failure (1), never a traceback."""
    with tempfile.TemporaryDirectory() as work:
        artifact = copy_of(shipped / "tiny.static.onnx", Path(work) / "start")
        for operation in operations:
            artifact = apply(operation, artifact, Path(work), index)
        code, out, err = gate(capsys, "static", artifact)
    untouched = all(UNTOUCHED[operation] for operation in operations)
    assert code in ((0,) if untouched else (1, 2)), (operations, out + err)
