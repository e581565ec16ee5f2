"""Property tests: random bad option values and byte-level corruptions of every file hrmc reads end in
exit 0 with a valid result, or exit 1/2 with one line on stderr; never a traceback, never a partial output."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hrmc import hrm_ref
from hrmc.cli import main
from hrmc.hrm_ref.presets import test_set_path
from tests.conftest import upstream_arch, write_upstream_checkpoint

# each example runs the CLI in-process; tiny runs in a fraction of a second
FAST = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))  # an uncaught exception here fails the test with its traceback
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_clean_ending(code: int, err: str, out_path: Path | None = None) -> None:
    """exit 0, or exit 1 (a gate) / 2 (bad input) with exactly one non-progress line on stderr."""
    assert "Traceback" not in err, err
    if code == 0:
        return
    lines = [line for line in err.splitlines() if not line.startswith("  ")]  # progress lines are indented
    assert code in (1, 2) and len(lines) == 1 and lines[0].startswith("hrmc: error: "), (code, err)
    if out_path is not None:  # a failed command leaves no output, and no hidden partial one
        assert not out_path.exists() and not list(out_path.parent.glob(".hrmc-*")), out_path  # hrmc.files' temporaries


def corrupt(data: bytes, edits: list[tuple[float, int]], cut: float | None) -> bytes:
    """`edits` overwrite bytes at relative positions; `cut` truncates at a relative position."""
    buffer = bytearray(data)
    for where, value in edits:
        buffer[min(int(where * len(buffer)), len(buffer) - 1)] = value
    return bytes(buffer[:int(cut * len(buffer))] if cut is not None else buffer)


EDITS = st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=4)
CUTS = st.none() | st.floats(0, 1)


@pytest.fixture(scope="module")
def originals(tiny_export: Path, tmp_path_factory) -> dict[str, Path]:
    """One good file of each kind hrmc reads: a checkpoint, an inputs npz, the export pair, an ane package."""
    from hrmc.passes import lower_onnx
    from hrmc.targets.coreml import lower_coreml

    folder = tmp_path_factory.mktemp("originals")
    model = hrm_ref.build_preset("tiny")
    hrm_ref.save_checkpoint(model, folder / "tiny.safetensors")
    batch = hrm_ref.random_batch(model.config, 2, seed=0)
    np.savez(folder / "inputs.npz", **{name: value.numpy() for name, value in batch.items()})
    (folder / "lowered").mkdir()
    step = lower_onnx(tiny_export, folder / "lowered" / "t.onnx", "fused").step_path
    package = lower_coreml({"step": step}, folder / "t.mlpackage", "ane", 2, "t.onnx", weights="float16")
    return {"checkpoint": folder / "tiny.safetensors", "inputs": folder / "inputs.npz", "export": tiny_export,
            "package": package}


VALUES = st.one_of(st.text(max_size=12), st.integers(-2**70, 2**70).map(str),
                   st.floats(allow_nan=True, allow_infinity=True).map(str))


@FAST
@given(option=st.sampled_from(["--budget", "--batch", "--seed", "--seq-len", "--policy", "--preset", "--depth"]),
       value=VALUES)
def test_random_option_values_run_or_end_in_one_line(capsys, option: str, value: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "o.npz"
        code, _, err = run_cli(capsys, "run", "--batch", "2", "--budget", "2", option, value, "-o", str(out))
        assert_clean_ending(code, err, out)
        if code == 0:
            with np.load(out) as data:
                assert np.isfinite(data["logits"]).all()


@FAST
@given(option=st.sampled_from(["--batch", "--seq-len"]), value=VALUES)
@example(option="--batch", value="300")  # more than the held-out set's 256 puzzles
@example(option="--seq-len", value="20")  # not the task's 16
@example(option="--seq-len", value="16")
def test_a_trained_preset_honours_its_options_or_refuses_them(capsys, option: str, value: str) -> None:
    """Exit 0 means the option was honoured (the batch asked for, the length asked for), never ignored."""
    code, out, err = run_cli(capsys, "run", "--preset", "sudoku4", "--budget", "1", option, value, "--json")
    assert_clean_ending(code, err)
    if code == 0:
        report = json.loads(out)
        assert report["batch" if option == "--batch" else "seq_len"] == int(value)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """tiny in upstream's layout: a step_N the arch yamls of the property below describe."""
    return write_upstream_checkpoint(hrm_ref.build_preset("tiny"), tmp_path_factory.mktemp("upstream") / "run")


ARCH_KEYS = ["halt_max_steps", "H_cycles", "L_cycles", "H_layers", "L_layers", "hidden_size", "num_heads", "expansion",
             "puzzle_emb_ndim", "pos_encodings", "rms_norm_eps", "rope_theta", "mlp_t", "no_ACT_continue",
             "puzzle_emb_len", "forward_dtype"]
# small integers only: a valid yaml may ask for a million cycles, which would run (slowly), not fail
ARCH_VALUES = st.one_of(st.integers(-3, 40), st.booleans(), st.none(), st.text(max_size=6),
                        st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["64", "yes", "true", "1e-5"]))


@FAST
@given(key=st.sampled_from(ARCH_KEYS), value=ARCH_VALUES)
@example(key="halt_max_steps", value=5000)
@example(key="hidden_size", value=10**400)
@example(key="rms_norm_eps", value=1e300)
@example(key="rope_theta", value=1e-45)
@example(key="expansion", value=1e300)
def test_random_arch_values_run_or_end_in_one_line(capsys, tiny_run: Path, key: str, value) -> None:
    """Whatever one key of the yaml holds: a run with finite logits, or one line."""
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "arch.yaml"
        config.write_text(yaml.dump(upstream_arch(hrm_ref.build_preset("tiny")) | {key: value}))
        out = Path(folder) / "o.npz"
        code, _, err = run_cli(capsys, "run", "--checkpoint", str(tiny_run), "--config", str(config), "--seq-len", "16",
                               "--batch", "2", "--budget", "2", "-o", str(out))
        assert_clean_ending(code, err, out)
        if code == 0:
            with np.load(out) as data:
                assert np.isfinite(data["logits"]).all()


@FAST
@given(labels=st.lists(st.integers(-101, 8) | st.just(-100), min_size=32, max_size=32))
def test_random_labels_are_scored_or_end_in_one_line(capsys, labels: list[int]) -> None:
    """Labels in the vocabulary or -100: an accuracy in [0, 1]; any other label: one line naming it."""
    with np.load(test_set_path("sudoku4")) as data:
        arrays = {key: data[key][:2] for key in data.files}
    with tempfile.TemporaryDirectory() as folder:
        np.savez(Path(folder) / "in.npz", **arrays | {"labels": np.array(labels).reshape(2, 16)})
        code, out, err = run_cli(capsys, "run", "--preset", "sudoku4", "--budget", "1", "--json",
                                 "--inputs", str(Path(folder) / "in.npz"))
    assert_clean_ending(code, err)
    scorable = all(0 <= label < 6 or label == -100 for label in labels) and set(labels) != {-100}
    assert (code == 0) == scorable, err
    if code == 0:
        assert all(0 <= share <= 1 for share in json.loads(out)["accuracy"].values())


@FAST
@given(option=st.sampled_from(["--atol", "--rtol", "--psnr", "--chunk", "--mode", "--artifact"]), value=VALUES)
def test_random_parity_option_values_end_in_one_line_before_any_work(capsys, option: str, value: str) -> None:
    # an executor name no registry has, so a value that passes its check still stops before work
    code, _, err = run_cli(capsys, "parity", "torch", "no-such-executor", option, value)
    assert_clean_ending(code, err)
    assert code == 2


@FAST
@given(kind=st.sampled_from(["checkpoint", "inputs"]), edits=EDITS, cut=CUTS)
@example(kind="checkpoint", edits=[(0.16796875, 127)], cut=None)  # found by a hunt: a finite weight near 1e38
def test_corrupted_checkpoints_and_inputs_run_or_end_in_one_line(capsys, originals: dict[str, Path], kind: str,
                                                                 edits, cut) -> None:
    with tempfile.TemporaryDirectory() as folder:
        bad = Path(folder) / originals[kind].name
        bad.write_bytes(corrupt(originals[kind].read_bytes(), edits, cut))
        out = Path(folder) / "o.npz"
        source = ["--checkpoint", str(bad)] if kind == "checkpoint" else ["--inputs", str(bad)]
        code, _, err = run_cli(capsys, "run", "--budget", "2", *source, "-o", str(out))
        assert_clean_ending(code, err, out)
        if code == 0:
            with np.load(out) as data:
                assert np.isfinite(data["logits"]).all()  # a corrupted weight that runs must not run as NaN


@FAST
@given(part=st.sampled_from(["act", "step"]), edits=EDITS, cut=CUTS)
@example(part="act", edits=[(0.9986747851603133, 135)], cut=None)  # found by a hunt: bytes in a metadata key
def test_corrupted_exports_are_refused_by_lower(capsys, originals: dict[str, Path], part: str, edits, cut) -> None:
    from hrmc.lowering import step_path_for

    with tempfile.TemporaryDirectory() as folder:
        export = Path(folder) / originals["export"].name
        shutil.copy(originals["export"], export)
        shutil.copy(step_path_for(originals["export"]), step_path_for(export))
        target = export if part == "act" else step_path_for(export)
        target.write_bytes(corrupt(target.read_bytes(), edits, cut))
        out = Path(folder) / "low.onnx"
        code, _, err = run_cli(capsys, "lower", "--policy", "q-halt", "--onnx-model", str(export), "-o", str(out))
        assert_clean_ending(code, err, out)


PACKAGE_FILES = ["Manifest.json", "Data/com.apple.CoreML/model.mlmodel", "Data/com.apple.CoreML/weights/weight.bin",
                 "Data/com.hrmc/parts.json"]


@FAST
@given(part=st.sampled_from(PACKAGE_FILES), edits=EDITS, cut=CUTS)
def test_corrupted_packages_are_refused_by_inspect(capsys, originals: dict[str, Path], part: str, edits, cut) -> None:
    with tempfile.TemporaryDirectory() as folder:
        package = Path(folder) / originals["package"].name
        shutil.copytree(originals["package"], package)
        target = package / part
        original = target.read_bytes()
        target.write_bytes(corrupt(original, edits, cut))
        code, _, err = run_cli(capsys, "inspect", str(package))
        assert_clean_ending(code, err)
        if target.read_bytes() != original:
            assert code == 2  # every part is bound: any change is found
