"""The gate runs what ships: `--artifact` files, bound by their recorded parts, every graph they hold.

A tampered artifact fails in the default (step) mode: exit 2 where its record no longer matches
its files (the binding names the file), exit 1 where the numbers are wrong yet the record was
rewritten to match (the gate itself catches it, whole-inference graph included).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest

from hrmc.cli import main
from hrmc.lowering.artifact import bound_parts, load_proto, save_bound
from hrmc.lowering.export import step_path_for
from tests.hrmc.test_cli import assert_one_line_error


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


def tamper(path: Path, change, rebind: bool) -> None:
    """Apply `change` to the largest float weight of one ONNX file; `rebind` rewrites the set's record to match."""
    proto = load_proto(path)
    weight = largest_weight(proto)
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
    tamper(rebound, change, rebind=True)  # the record agrees with the broken file: only the numbers can tell
    code, out, _ = gate(capsys, executor, rebound)
    assert code == 1 and f"FAIL: {executor} whole vs its steps: logits from step 1" in out, out


def test_a_step_graph_from_another_export_is_refused(capsys, shipped: Path, tmp_path: Path, tiny) -> None:
    from hrmc.lowering import export_onnx

    other = tmp_path / "other"
    other.mkdir()
    export_onnx(tiny, other / "tiny.onnx", "q-halt", budget=4)
    mixed = copy_of(shipped / "tiny.onnx", tmp_path / "mixed")
    shutil.copy(other / "tiny.step.onnx", step_path_for(mixed))  # killed between two renames, say
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
    code, _, err = hrmc(capsys, "parity", "torch", "static", "--artifact", str(shipped / "tiny.static.onnx"))
    assert_one_line_error(code, err, "policy q-halt, not max-steps")
    assert_one_line_error(*gate(capsys, "chunked", shipped / "tiny.static.onnx", "--chunk", "3")[::2],
                          "--chunk 3", "2-step chunks")


def test_mlx_folder_as_shipped(capsys, shipped: Path, tmp_path: Path) -> None:
    code, out, err = gate(capsys, "mlx", shipped / "tiny-mlx")
    assert code == 0 and "shipped artifact tiny-mlx" in out and "mlx whole vs its steps" in out, out + err

    edited = tmp_path / "edited-mlx"
    shutil.copytree(shipped / "tiny-mlx", edited)
    scale_safetensors(edited / "weights.safetensors")
    assert_one_line_error(*gate(capsys, "mlx", edited)[::2], "weights.safetensors", "does not match the sha256")

    config = json.loads((edited / "config.json").read_text())  # the record rewritten to match the edited weights
    config["parts"]["weights"]["sha256"] = _sha256(edited / "weights.safetensors")
    rebound = dict(config)
    del rebound["parts"]
    config["parts"]["config"]["sha256"] = _json_sha256(rebound)
    (edited / "config.json").write_text(json.dumps(config))
    code, out, _ = gate(capsys, "mlx", edited)
    assert code == 1 and out.rstrip().splitlines()[-1].startswith("FAIL: "), out


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
