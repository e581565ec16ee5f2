"""Every executor on the trained fixtures, gated and with task agreement on their held-out puzzles.

Parity on random weights probes chaos; these models settle, as the ones users ship do. The float16
(ane) row must answer and halt exactly as torch float32 does on every held-out puzzle it runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hrmc import hrm_ref
from hrmc.hrm_ref.presets import TRAINED_PRESETS, test_set_path
from tests.helpers import hrmc

PUZZLES = 32  # of each held-out set: enough to show agreement, small enough for the replayed Core ML executors
EXECUTORS = ("onnx", "static", "chunked", "mlx", "mlx-chunked", "coreml", "coreml-chunked", "ane")


@pytest.fixture(scope="module", params=[name for name in TRAINED_PRESETS if test_set_path(name).is_file()])
def fixture(request, tmp_path_factory) -> tuple[str, Path, Path]:
    """(preset, its q-halt export, the first PUZZLES held-out puzzles with labels)."""
    from hrmc.lowering import export_onnx

    name = request.param
    folder = tmp_path_factory.mktemp(name)
    with np.load(test_set_path(name)) as data:
        np.savez(folder / "held-out.npz", **{key: data[key][:PUZZLES] for key in data.files})
    export_onnx(hrm_ref.build_preset(name), folder / f"{name}.onnx", "q-halt")
    return name, folder / f"{name}.onnx", folder / "held-out.npz"


@pytest.mark.heavy
@pytest.mark.parametrize("executor", EXECUTORS)
def test_every_executor_agrees_on_the_trained_fixtures(capsys, fixture, executor: str) -> None:
    name, export, held_out = fixture
    code, out, err = hrmc(capsys, "parity", "torch", executor, "--preset", name, "--policy", "q-halt",
                          "--onnx-model", str(export), "--inputs", str(held_out), "--json")
    report = json.loads(out)
    assert code == 0 and report["passed"], err[-2000:]
    task = report["task"]
    assert task["samples"] == PUZZLES and task["samples_agree"] == PUZZLES and task["cells_agree"] == 1.0
    assert task["halting_steps_agree"] == PUZZLES, task
    assert task["accuracy_a"] == task["accuracy_b"]  # the same answers, so the same accuracy against the labels
    if name == "sudoku4":
        assert task["accuracy_a"]["exact"] >= 0.9
    if executor == "ane":  # judged by the float16 rule against float64, hrm_ref float16 the yardstick
        states = [row for row in report["rows"] if row["check"] == "A vs B" and row["gated"] != "abs"]
        assert states and all(row["ratio"] is not None and row["float16_psnr"] > 60 for row in states)


# Measured on the first PUZZLES held-out puzzles (parity/compression.py): trm-sudoku4 with lut6 weights no longer solves
# puzzle 18 (30 of 32 exact against 31 uncompressed); every other fixture and compression here solves what the model does.
LOST = {("trm-sudoku4", "lut6"): 1}


@pytest.mark.heavy
@pytest.mark.parametrize("storage", ["int8", "lut6"])
def test_compressed_packages_pass_the_compilers_question_and_report_the_compressions(capsys, fixture, tmp_path,
                                                                                     storage: str) -> None:
    """`lower --weights int8|lut6`, then the shipped package gated on the held-out puzzles: against hrm_ref on its
    weights as stored (every row and decision within the float16 rule), and against the uncompressed model on
    the puzzles it solves exactly (--max-accuracy-drop, 0 by default): a lost puzzle fails, and passes where the
    drop is allowed."""
    name, export, held_out = fixture
    package = tmp_path / f"{name}-{storage}.mlpackage"
    code, _, err = hrmc(capsys, "lower", "--target", "ane", "--preset", name, "--policy", "q-halt", "--onnx-model",
                        str(export), "--batch", str(PUZZLES), "--weights", storage, "-o", str(package))
    assert code == 0, err[-2000:]
    code, out, err = hrmc(capsys, "parity", "torch", "ane", "--preset", name, "--policy", "q-halt", "--inputs",
                          str(held_out), "--artifact", str(package), "--json")
    report = json.loads(out)
    assert all(row["passed"] for row in report["rows"]), err[-2000:]  # the compiler's question
    assert not report["halting"]["mismatched"] and not report["answers"]["mismatched"]
    assert f"{storage} weights" in report["executors"][1] and storage in report["notes"][0]
    cost = report["compression"]
    assert cost["storage"] == storage and cost["gated_on"] == "exact-solved puzzles"
    lost = LOST.get((name, storage), 0)
    assert cost["exact_drop_pp"] == pytest.approx(100 * lost / PUZZLES), cost
    assert cost["passed"] == (lost == 0) and report["passed"] == (lost == 0) and code == (1 if lost else 0)
    # reported, not gated (measured on sudoku4: at least 0.9997 with int8, 0.959 with lut6, its z_L from step 4)
    assert all(0.95 < value < 1 + 1e-9 for values in cost["cosine"].values() for value in values), cost["cosine"]
    if lost:
        code, out, _ = hrmc(capsys, "parity", "torch", "ane", "--preset", name, "--policy", "q-halt", "--inputs",
                            str(held_out), "--artifact", str(package), "--max-accuracy-drop", "5")
        assert code == 0 and "a drop of 3.12 points against at most 5" in out, out[-3000:]
