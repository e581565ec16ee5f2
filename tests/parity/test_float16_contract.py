"""The float16 contract (docs/design.md §4) on shipped ane packages: it passes a correct package and fails
a wrong one, through the binding (an edited file) or through the numbers (a wrong weight, record rewritten)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest

from hrmc.cli import main
from hrmc.lowering.artifact import bound_parts, load_proto
from tests.hrmc.test_cli import assert_one_line_error, hrmc
from tests.parity.test_artifacts import largest_weight, tamper


def lower_ane(structured: Path, out: Path, batch: int = 2) -> Path:
    assert main(["lower", "--target", "ane", "--policy", "q-halt", "--batch", str(batch), "--onnx-model",
                 str(structured), "-o", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def ane_package(tiny_export: Path, tmp_path_factory) -> Path:
    return lower_ane(tiny_export, tmp_path_factory.mktemp("ane") / "tiny.mlpackage")


def test_a_correct_package_passes_with_decisions_compared(capsys, ane_package: Path) -> None:
    code, out, _ = hrmc(capsys, "parity", "torch", "ane", "--policy", "q-halt", "--batch", "2", "--artifact",
                        str(ane_package), "--json")
    report = json.loads(out)
    assert code == 0 and report["passed"]
    q_rows = [row for row in report["rows"] if row["output"].startswith("q_") and row["check"] == "A vs B"]
    assert q_rows and all(row["gated"] == "abs" and 0 < row["max_abs"] <= row["limit"] for row in q_rows)
    assert report["answers"]["compared"] > 0 and report["halting"]["compared"] > 0
    assert report["task"]["samples"] == 2 and "cells_agree" in report["task"]


def test_an_edited_weight_file_is_refused_by_its_record(capsys, ane_package: Path, tmp_path: Path) -> None:
    edited = tmp_path / ane_package.name
    shutil.copytree(ane_package, edited)
    weights = edited / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    data = np.frombuffer(weights.read_bytes(), np.uint8).copy()
    data[-4096:-2048] ^= 1  # a few float16 weights off by one ulp: a 1.001-size change
    weights.write_bytes(data.tobytes())
    code, _, err = hrmc(capsys, "parity", "torch", "ane", "--policy", "q-halt", "--batch", "2", "--artifact", str(edited))
    assert_one_line_error(code, err, "weight.bin", "does not match the sha256")


@pytest.mark.heavy  # an export and an ane lowering of a wrong model: a minute
def test_a_wrong_weight_fails_the_numbers(capsys, shipped_copy: Path, tmp_path: Path) -> None:
    """A converter that got one weight 1 % wrong, its record consistent: the numbers alone must fail it."""
    tamper(shipped_copy, lambda w: w * np.float32(1.01), rebind=True)
    step = bound_parts(shipped_copy)["step"]
    tamper(step, lambda w: w * np.float32(1.01), rebind=True)
    package = lower_ane(shipped_copy, tmp_path / "wrong.mlpackage")
    code, out, _ = hrmc(capsys, "parity", "torch", "ane", "--policy", "q-halt", "--batch", "2", "--artifact",
                        str(package))
    assert code == 1 and "FAIL: " in out and "PSNR" in out.splitlines()[-1], out


@pytest.fixture
def shipped_copy(tiny_export: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "export"
    folder.mkdir()
    for part in bound_parts(tiny_export).values():
        shutil.copy(part, folder / part.name)
    return folder / tiny_export.name


def test_tamper_helper_scales_the_largest_weight(shipped_copy: Path) -> None:
    before = onnx.numpy_helper.to_array(largest_weight(load_proto(shipped_copy)))
    tamper(shipped_copy, lambda w: w * np.float32(2), rebind=True)
    after = onnx.numpy_helper.to_array(largest_weight(load_proto(shipped_copy)))
    np.testing.assert_array_equal(after, before * 2)
    assert set(bound_parts(shipped_copy)) == {"act", "step"}  # still a consistent set
