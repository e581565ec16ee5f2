"""What an app drives: a package's `init`, `step` and `solve` (targets/app.py), through the MIL replay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hrmc import hrm_ref
from hrmc.hrm_ref.presets import test_set_path
from hrmc.parity.mac_check import check as check_py
from hrmc.targets import coreml
from hrmc.targets.coreml.package import _spec
from hrmc.targets.coreml.runtime import load
from tests.helpers import assert_one_line_error, hrmc

BATCH = 4


def _lowered(export: Path, out: Path, batch: int, *about: str) -> Path:
    from hrmc.cli import main
    assert main(["lower", "--target", "ane", "--onnx-model", str(export), "--policy", "q-halt", "--batch", str(batch),
                 *about, "-o", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def package(tiny_export: Path, tmp_path_factory) -> Path:
    return _lowered(tiny_export, tmp_path_factory.mktemp("app") / "Solver.mlpackage", BATCH, "--chunk", "3",
                    "--author", "Ada", "--license", "MIT", "--model-version", "2.1", "--description",
                    "Solves tiny puzzles")


def _predict(package: Path, function: str):
    """A Core ML predict stand-in: the function replayed under MIL's semantics, as check.py's loop calls it."""
    return load(package, function, coreml.FLAVOURS["ane"].compute_units)


def _solved(package: Path, inputs: dict[str, np.ndarray], budget: int, loop: str = "step") -> tuple[dict, dict]:
    """What `solve` returns, and what the app loop (init, then `loop` until every sample halted) returns."""
    solved = _predict(package, "solve")(inputs)
    looped = check_py.app_loop(_predict(package, "init"), _predict(package, loop), inputs, budget)
    return solved, looped


def test_the_app_loop_gives_what_solve_gives(package: Path, tiny) -> None:
    batch = hrm_ref.random_batch(tiny.config, BATCH, seed=3)
    inputs = {name: value.numpy().astype(np.int32) for name, value in batch.items()}
    for loop in ("step", "chunk3"):  # a chunk's rows are its steps: samples halt within a call too
        solved, looped = _solved(package, inputs, 8, loop)
        assert np.array_equal(looped["answer"], solved["answer"]), loop
        assert np.array_equal(looped["halt_step"], solved["halt_step"]), loop
    assert len(set(solved["halt_step"].tolist())) > 1  # samples halt at different steps: the loop's masking is seen


@pytest.mark.heavy
def test_on_a_trained_model_the_app_loop_solves_as_hrm_ref_does(exported, tmp_path: Path) -> None:
    """sudoku4, trained: the package's app loop and its solve give hrm_ref's answers and halting steps on
    held-out puzzles (a trained model settles: no close calls for float16 to flip)."""
    model = hrm_ref.build_preset("sudoku4")
    with np.load(test_set_path("sudoku4")) as data:
        held_out = {key: data[key][:16] for key in data.files if key != "labels"}
    package = _lowered(exported("sudoku4"), tmp_path / "s.mlpackage", 16)
    solved, looped = _solved(package, held_out, budget=model.config.halt_max_steps)
    reference = hrm_ref.run(model, hrm_ref.make_batch(model.config, held_out, "held-out"), "q-halt")
    for run in (solved, looped):
        assert np.array_equal(run["halt_step"], reference["steps"][-1].numpy())
        assert np.array_equal(run["answer"], reference["logits"][-1].argmax(-1).numpy())


def test_init_is_the_models_initial_carry(package: Path, tiny) -> None:
    batch = hrm_ref.random_batch(tiny.config, BATCH, seed=0)
    start = hrm_ref.initial_carry(tiny, batch)
    initial = _predict(package, "init")({name: value.numpy().astype(np.int32) for name, value in batch.items()})
    assert np.array_equal(initial["z_H"], start.z_H.numpy().astype(np.float16))
    assert np.array_equal(initial["z_L"], start.z_L.numpy().astype(np.float16))
    assert not initial["steps"].any() and not initial["halted"].any()


def test_every_input_and_output_says_what_it_is_for(package: Path) -> None:
    _, spec = _spec(package)
    about = spec.description.metadata
    assert (about.author, about.license, about.versionString) == ("Ada", "MIT", "2.1")
    assert about.shortDescription.startswith("Solves tiny puzzles (HRM lowered by hrmc")
    assert {f.name for f in spec.description.functions} == {"init", "step", "chunk3", "solve"}
    for function in spec.description.functions:
        for feature in [*function.input, *function.output]:
            text = feature.shortDescription
            assert not text.startswith(feature.name) and "[" in text and len(text) > 40, (function.name, text)


def test_a_package_whose_solve_disagrees_with_itself_fails(package: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from hrmc.targets.base import TargetExecutor
    real = TargetExecutor.check_app_outputs
    monkeypatch.setattr(TargetExecutor, "check_app_outputs",
                        lambda self, app, run: real(self, app | {"halt_step": app["halt_step"] + 1}, run))
    code, out, err = hrmc(capsys, "parity", "torch", "ane", "--artifact", str(package))
    assert code == 1 and "its halt_step is not what its own outputs say" in out + err


def test_only_core_ml_packages_take_an_author(capsys, tiny_export: Path, tmp_path: Path) -> None:
    code, _, err = hrmc(capsys, "lower", "--target", "mlx", "--onnx-model", str(tiny_export), "--author", "Ada",
                        "-o", str(tmp_path / "m"))
    assert_one_line_error(code, err, "--author", "Core ML package", "--target mlx")
    assert list(tmp_path.iterdir()) == []
