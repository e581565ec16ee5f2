"""`hrmc lower --mac-check`: the folder beside the package, its stand-alone check.py, and its verdict
reproducing the Linux gate's (Core ML itself is stood in for by the MIL replay: no Mac here)."""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from hrmc import hrm_ref
from hrmc.cli import main
from hrmc.parity.gate import FLOAT16_ROUNDING, HALF_FACTOR, Q_ERROR_LIMIT
from hrmc.parity.mac_check import bundle as mac_check
from hrmc.parity.mac_check import check as check_py
from hrmc.targets.coreml.runtime import replay
from tests.helpers import assert_one_line_error, hrmc

pytestmark = pytest.mark.heavy  # lowerings of tiny with their check folders: a minute and a half

CHECK_FILES = {"check.py", "inputs.npz", "reference.npz", "record.json", "linux.json", "README.txt"}
Replayed = dict[tuple[str, str], dict[str, np.ndarray]]


def _feed_key(feed: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(feed):
        digest.update(f"{name}{feed[name].dtype}{feed[name].shape}".encode() + np.ascontiguousarray(feed[name]).tobytes())
    return digest.hexdigest()


def _role(outputs) -> str:
    return "solve" if "steps_run" in outputs else "step"


@pytest.fixture(scope="module")
def checked(tiny_export: Path, tmp_path_factory) -> tuple[Path, Replayed]:
    """tiny lowered to ane with --mac-check, and every MIL replay its Linux verdict ran, by function and feed:
    what a stand-in for Core ML returns without replaying again."""
    package = tmp_path_factory.mktemp("mac") / "t.mlpackage"
    replayed: Replayed = {}

    def recording(main_function, feed):
        outputs = replay(main_function, feed)
        replayed[_role(outputs), _feed_key(feed)] = outputs
        return outputs

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mac_check, "replay", recording)
        code = main(["lower", "--target", "ane", "--onnx-model", str(tiny_export), "--preset", "tiny", "--policy",
                     "q-halt", "--batch", "2", "-o", str(package), "--mac-check"])
    assert code == 0
    return package, replayed


def _replayed(replayed: Replayed, role: str, change: Callable | None = None) -> Callable:
    def predict(feed):
        outputs = {name: value.copy() for name, value in replayed[role, _feed_key(feed)].items()}
        return change(outputs) if change else outputs
    return predict


def _plus_one_on_a_row(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """logits + 1.0 on one row (sample 0, position 0): the argmax stays, the values do not."""
    if "z_H_next" in outputs:
        outputs["logits"][0, 0, 0] += 1.0
    return outputs


def _check_script(package: Path) -> Path:
    return package.with_suffix(".check") / "check.py"


def test_the_folder_holds_the_script_the_inputs_and_the_reference(checked, tiny) -> None:
    package, _ = checked
    folder = package.with_suffix(".check")
    assert {p.name for p in folder.iterdir()} == CHECK_FILES
    assert _check_script(package).read_text() == Path(check_py.__file__).read_text()  # verbatim
    record = json.loads((folder / "record.json").read_text())
    parts = json.loads((package / "Data" / "com.hrmc" / "parts.json").read_text())
    assert record["files"] == parts["files"] == check_py.package_files(package)
    assert record["package"] == "t.mlpackage" and record["float_type"] == "float16" and record["batch"] == 2
    inputs = check_py.load_arrays(folder / "inputs.npz")
    batch = hrm_ref.random_batch(tiny.config, 2, 0, 16)  # lower's --seed (0) at the package's batch
    assert inputs.keys() == batch.keys() and all(np.array_equal(inputs[k], v.numpy()) for k, v in batch.items())
    reference = check_py.load_arrays(folder / "reference.npz")
    steps = reference["carry.steps"].shape[0]
    assert reference["carry.z_H"].shape == (steps, 2, 18, 64) and reference["step.logits"].shape == (steps, 2, 16, 11)
    assert (reference["carry.steps"][0] == 0).all() and (reference["step.answers_band"] > 0).all()
    # the float16 rule's yardstick: torch float16's RMSE against the float64 outputs, per step
    assert reference["exact.logits"].shape == reference["step.logits"].shape and reference["exact.z_H"].dtype == np.float64
    assert reference["float16_error.z_H"].shape == (steps,) and (reference["float16_error.z_H"] > 0).all()
    np.testing.assert_allclose(reference["exact.z_H"], reference["step.z_H"], atol=1e-4)
    q_scale = max(np.abs(reference["step.q_halt_logits"]).max(), np.abs(reference["step.q_continue_logits"]).max())
    assert record["gates"]["logits"] == record["gates"]["z_H"] == {"gate": "float16", "factor": HALF_FACTOR,
                                                                   "rounding": FLOAT16_ROUNDING}
    assert record["gates"]["q_halt_logits"]["gate"] == "abs"
    assert record["gates"]["q_halt_logits"]["limit"] == pytest.approx(Q_ERROR_LIMIT * q_scale, rel=0.05)
    readme = (folder / "README.txt").read_text().splitlines()
    assert len(readme) == 2 and "python3 t.check/check.py" in readme[0] and "pip install coremltools numpy" in readme[1]


def test_check_py_needs_nothing_but_numpy_and_apples_runtime() -> None:
    """numpy, and coremltools for a Core ML package or coreai-core for a Core AI asset."""
    source = Path(check_py.__file__).read_text()
    tree = ast.parse(source, feature_version=(3, 9))  # macOS's own python3 is 3.9
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported - set(sys.stdlib_module_names) == {"numpy", "coremltools", "coreai"}, imported


def test_on_linux_check_py_says_it_needs_macos(checked) -> None:
    result = subprocess.run([sys.executable, str(_check_script(checked[0]))], capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == "", result
    assert len(result.stderr.splitlines()) == 1 and "needs macOS" in result.stderr and "linux.json" in result.stderr


def test_check_py_refuses_a_package_whose_weights_were_edited(checked, tmp_path: Path) -> None:
    edited = shutil.copytree(checked[0], tmp_path / "t.mlpackage")
    weights = edited / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    result = subprocess.run([sys.executable, str(_check_script(checked[0])), str(edited)], capture_output=True,
                            text=True)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result
    assert "weight.bin does not match its recorded sha256" in result.stderr


def test_the_verdict_on_the_replay_is_the_linux_gates_and_a_perturbed_output_fails(capsys, checked) -> None:
    package, replayed = checked
    folder = package.with_suffix(".check")
    code, out, _ = hrmc(capsys, "parity", "torch", "ane", "--artifact", str(package), "--preset", "tiny", "--policy",
                        "q-halt", "--batch", "2", "--json")
    gate = json.loads(out)
    assert code == 0 and gate["passed"]
    linux = json.loads((folder / "linux.json").read_text())["verdict"]
    assert linux["passed"] and not linux["failures"]
    for row in linux["outputs"]:  # the same replay from the same carries, against the same float64: the same errors
        rows = [r for r in gate["rows"] if r["output"] == row["output"] and r["check"] == "A vs B"]
        assert row["max_abs"] == pytest.approx(max(r["max_abs"] for r in rows), rel=1e-6), row["output"]
        assert row["ratio"] == pytest.approx(max(r["ratio"] for r in rows), rel=1e-6), row["output"]
    assert linux["decisions"]["halting decisions, per step"]["compared"] == gate["halting"]["compared"]
    assert linux["decisions"]["answers, per step"]["compared"] == gate["answers"]["compared"]
    record = json.loads((folder / "record.json").read_text())
    reference, inputs = (check_py.load_arrays(folder / name) for name in ("reference.npz", "inputs.npz"))
    runs = check_py.run_functions(_replayed(replayed, "step"), _replayed(replayed, "solve"), record, inputs, reference)
    assert check_py.judge(record, reference, runs) == linux
    runs["steps"][0]["logits"][0, 0] += 1.0
    perturbed = check_py.judge(record, reference, runs)
    assert not perturbed["passed"] and len(perturbed["failures"]) == 1
    assert perturbed["failures"][0].startswith("logits: RMSE") and "at step 1" in perturbed["failures"][0]
    assert "x torch float16's" in perturbed["failures"][0]
    assert check_py.format_verdict("CPU_ONLY", perturbed, linux)[-1].startswith("  FAIL: logits")


def test_on_a_mac_each_compute_unit_is_judged(capsys, checked, monkeypatch) -> None:
    """check.py's own main, with Core ML stood in for by the replay and macOS by its name: one compute unit
    returning logits + 1 on a row fails, the others pass."""
    package, replayed = checked
    loaded = []

    class MLModel:
        def __init__(self, path: str, compute_units: str, function_name: str) -> None:
            loaded.append((Path(path), compute_units, function_name))
            wrong = compute_units == "CPU_AND_NE"
            self.predict = _replayed(replayed, function_name, _plus_one_on_a_row if wrong else None)

    units = types.SimpleNamespace(**{unit: unit for unit in check_py.UNITS})
    fake = types.SimpleNamespace(__version__="9.0", ComputeUnit=units, models=types.SimpleNamespace(MLModel=MLModel))
    monkeypatch.setitem(sys.modules, "coremltools", fake)
    monkeypatch.setattr("platform.system", lambda: "Darwin")
    monkeypatch.setattr("platform.mac_ver", lambda: ("15.1", ("", "", ""), "arm64"))
    spec = importlib.util.spec_from_file_location("check", _check_script(package))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([]) == 1
    out = capsys.readouterr().out
    assert "Core ML predict on this Mac (macOS 15.1" in out and "Linux replay said: PASS" in out
    assert [line.split() for line in out.splitlines() if line.split()[:1] in (["CPU_ONLY"], ["CPU_AND_NE"])] == [
        ["CPU_ONLY", "PASS"], ["CPU_AND_NE", "FAIL"]]
    assert "overall: FAIL" in out and "FAIL: logits: RMSE" in out and "worst ratio" in out
    assert {unit for _, unit, _ in loaded} == set(check_py.UNITS) and {f for *_, f in loaded} == {"step", "solve"}
    assert all(path != package and path.name == package.name for path, *_ in loaded)  # a copy runs, not the package
    assert script.main(["--units", "cpu_only,ALL"]) == 0 and "overall: PASS" in capsys.readouterr().out
    monkeypatch.setattr("platform.mac_ver", lambda: ("14.6", ("", "", ""), "arm64"))
    assert script.main([]) == 2 and "needs macOS 15" in capsys.readouterr().err


def test_mac_check_is_refused_off_core_ml_and_without_the_model(capsys, tiny_export: Path, tmp_path: Path) -> None:
    code, _, err = hrmc(capsys, "lower", "--target", "onnx", "--preset", "tiny", "-o", str(tmp_path / "t.onnx"),
                        "--mac-check")
    assert_one_line_error(code, err, "--mac-check: only for a Core ML package or a Core AI asset")
    code, _, err = hrmc(capsys, "lower", "--target", "ane", "--onnx-model", str(tiny_export), "--policy", "q-halt",
                        "-o", str(tmp_path / "t.mlpackage"), "--mac-check")
    assert_one_line_error(code, err, "--mac-check with --onnx-model: name its model too")
    assert list(tmp_path.iterdir()) == []


def test_a_failing_check_leaves_neither_the_package_nor_its_folder(tiny_export: Path, tmp_path: Path,
                                                                  monkeypatch) -> None:
    def broken(*_):
        raise RuntimeError("replay broke")

    monkeypatch.setattr(mac_check, "linux_verdict", broken)
    with pytest.raises(RuntimeError, match="replay broke"):
        main(["lower", "--target", "coreml", "--onnx-model", str(tiny_export), "--preset", "tiny", "--policy",
              "q-halt", "--batch", "2", "-o", str(tmp_path / "c.mlpackage"), "--mac-check"])
    assert list(tmp_path.iterdir()) == []


def test_float32_packages_are_held_to_the_mac_tolerance(tiny) -> None:
    """coreml: every output within 1e-4 + 1e-4·|b|, decisions close within twice that of a tie."""
    reference, gates = mac_check.reference_trajectory(tiny, "q-halt", 8, hrm_ref.random_batch(tiny.config, 2, 0, 16),
                                                      half=False)
    assert set(gates) == {"logits", "q_halt_logits", "q_continue_logits", "z_H", "z_L"}
    assert all(gate == {"gate": "tolerance", "atol": 1e-4, "rtol": 1e-4} for gate in gates.values())
    top = np.sort(reference["step.logits"], axis=-1)[..., -1]
    np.testing.assert_allclose(reference["step.answers_band"], 2 * (1e-4 + 1e-4 * np.abs(top)), rtol=1e-6)
    np.testing.assert_allclose(reference["step.halting_band"],
                               2 * (1e-4 + 1e-4 * np.abs(reference["step.q_halt_logits"])), rtol=1e-6)
    assert (reference["run.answers_band"] >= 2e-4).all() and np.isfinite(reference["run.answers_band"]).all()
