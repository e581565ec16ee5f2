"""Property tests: random bad option values and byte-level corruptions of every file hrmc reads end in
exit 0 with a valid result, or exit 1/2 with one line on stderr; never a traceback, never a partial output."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hrmc import hrm_ref
from hrmc.cli import main

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
        assert not out_path.exists() and not list(out_path.parent.glob(f".{out_path.name}*")), out_path


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
