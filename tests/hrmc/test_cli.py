"""`hrmc run` as a user drives it: outputs, reports, and one-line errors with exit code 2."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from hrmc import cli, lowering
from hrmc import hrm_ref
from hrmc import files
from tests.conftest import write_upstream_checkpoint
from tests.helpers import assert_one_line_error, hrmc


def test_run_writes_every_step(capsys, tmp_path: Path) -> None:
    code, out, err = hrmc(capsys, "run", "--policy", "q-halt", "--batch", "6", "-o", str(tmp_path / "o.npz"))
    assert code == 0 and "263,682 parameters" in out and "step 1/8" in err
    with np.load(tmp_path / "o.npz") as data:
        steps = data["steps"].shape[0]
        assert data["logits"].shape == (steps, 6, 16, 11) and data["logits"].dtype == np.float32
        assert data["q_halt_logits"].shape == data["q_continue_logits"].shape == (steps, 6)
        assert data["halted"].dtype == bool and data["halted"][-1].all()
        assert data["steps"].dtype == np.int32 and data["steps"][-1].max() == steps
        assert data["inputs"].shape == (6, 16) and data["puzzle_identifiers"].shape == (6,)


def test_run_is_bit_identical_across_runs(capsys, tmp_path: Path) -> None:
    for name in ("a", "b"):
        assert hrmc(capsys, "run", "--seed", "3", "-o", str(tmp_path / f"{name}.npz"))[0] == 0
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


def test_run_in_float16(capsys) -> None:
    """`--dtype float16`: the model as PyTorch runs it in float16, the float16 gate's yardstick."""
    code, out, _ = hrmc(capsys, "run", "--preset", "sudoku4", "--dtype", "float16", "--batch", "8", "--json")
    report = json.loads(out)
    assert code == 0 and report["dtype"] == "float16" and report["accuracy"]["exact"] == 1.0


def test_run_json_report_and_budget(capsys) -> None:
    code, out, _ = hrmc(capsys, "run", "--budget", "2", "--batch", "3", "--json")
    report = json.loads(out)
    assert code == 0 and report["steps_run"] == 2 and report["halting_steps"] == [2, 2, 2]
    assert report["parameters"] == 263_682 and report["model"] == "preset:tiny"


def test_run_from_an_upstream_checkpoint_and_inputs(capsys, tiny, tmp_path: Path) -> None:
    checkpoint = write_upstream_checkpoint(tiny, tmp_path / "run")
    np.savez(tmp_path / "in.npz", inputs=np.ones((2, 81), np.int64), puzzle_identifiers=np.array([1, 2]))
    code, out, _ = hrmc(capsys, "run", "--checkpoint", str(checkpoint), "--inputs", str(tmp_path / "in.npz"), "--json")
    assert code == 0 and json.loads(out)["seq_len"] == 81  # RoPE: any length


@pytest.mark.parametrize("preset", ["trm-tiny", "trm-tiny-mlp-t"])
def test_run_from_an_upstream_trm_checkpoint_is_that_model(capsys, tmp_path: Path, preset: str) -> None:
    """A TRM `step_N` with upstream's `all_config.yaml` runs unchanged: the preset, its H_init / L_init
    in bfloat16 as upstream saves them, halting by TRM's rule."""
    model = hrm_ref.build_preset(preset)
    checkpoint = write_upstream_checkpoint(model, tmp_path / "run")
    length = [] if model.config.mlp_t else ["--seq-len", "16"]  # mlp_t's weights fix it; RoPE takes any
    code, _, _ = hrmc(capsys, "run", "--checkpoint", str(checkpoint), *length, "--policy", "q-halt", "--batch", "4",
                      "-o", str(tmp_path / "o.npz"))
    for name in ("H_init", "L_init"):
        getattr(model.inner, name).copy_(getattr(model.inner, name).to(torch.bfloat16))
    expected = hrm_ref.run(model, hrm_ref.random_batch(model.config, 4, seed=0), "q-halt")
    written = np.load(tmp_path / "o.npz")
    heads = [name for name in expected if name not in ("z_H", "z_L")]  # run writes outputs, not the carry
    assert code == 0 and set(written.files) >= set(heads) and written["halted"][-1].all()
    assert all(np.array_equal(written[name], expected[name].numpy()) for name in heads)


@pytest.mark.parametrize("argv, fragments", [
    (["run", "--checkpoint", "no/such/step_1"], ["checkpoint not found: no/such/step_1"]),
    (["run", "--preset", "huge"], ["'huge' is not one of"]),
    (["run", "--checkpoint", "x", "--preset", "tiny"], ["either --checkpoint or --preset"]),
    (["run", "--policy", "sometimes"], ["--policy"]),
    (["run", "--budget", "0"], ["--budget", "0 is not in the range 1<=x<=1024"]),
    (["run", "--budget", "2147483648"], ["--budget", "not in the range 1<=x<=1024"]),
    (["run", "--budget", "99999999999999999999999"], ["--budget", "not in the range"]),
    (["run", "--seq-len", "0"], ["--seq-len", "0 is not in the range 1<=x<=4096"]),
    (["run", "--seed", "-1"], ["--seed", "-1 is not in the range"]),
    (["inspect", "x.mlpackage", "--ranges", "--seed", "-1"], ["--seed", "-1 is not in the range 0<=x<=4294967295"]),
    (["run", "--batch", "0"], ["--batch", "0 is not in the range 1<=x<=65536"]),
    (["lower", "--chunk", "0", "-o", "x.onnx"], ["--chunk", "0 is not in the range"]),
    (["lower", "--target", "ane", "--batch", "-3", "-o", "x.mlpackage"], ["--batch", "-3 is not in the range"]),
    (["lower", "--target", "mlx", "--weights", "float16", "-o", "m"], ["--weights float16: the mlx target has no such choice"]),
    (["lower", "--target", "coreml", "--weights", "float16", "-o", "x.mlpackage"],
     ["--weights float16: the coreml target stores them as float32 or int8 or lut6 or lut4"]),
    (["lower", "--target", "onnx", "--weights", "int8", "-o", "x.onnx"], ["--weights int8: the onnx target has no such"]),
    (["parity", "torch", "onnx", "--max-accuracy-drop", "-1"], ["--max-accuracy-drop", "finite number of at least 0"]),
    (["parity", "torch", "onnx", "--chunk", "-1"], ["--chunk", "-1 is not in the range"]),
    (["parity", "torch", "onnx", "--atol", "-1"], ["--atol", "finite number of at least 0"]),
    (["parity", "torch", "onnx", "--atol", "nan"], ["--atol", "nan must be a finite number"]),
    (["parity", "torch", "onnx", "--rtol", "inf"], ["--rtol", "inf must be a finite number"]),
    (["parity", "torch", "onnx", "--psnr", "-5"], ["--psnr", "-5 must be a finite number of at least 1"]),
    (["bench", "--runs", "0"], ["--runs", "0 is not in the range x>=1"]),
    (["run", "-o", "no/such/folder/o.npz"], ["output folder does not exist: no/such/folder"]),
    (["run", "-o", "o.txt"], ["must end in .npz"]),
    (["frobnicate"], ["No such command 'frobnicate'"]),
])
def test_usage_errors_are_one_line(capsys, argv: list[str], fragments: list[str]) -> None:
    assert_one_line_error(*hrmc(capsys, *argv)[::2], *fragments)


@pytest.mark.parametrize("arrays, fragment", [
    ({"inputs": np.full((2, 16), 12), "puzzle_identifiers": np.zeros(2, int)}, "token id 12 at inputs[0, 0]"),
    ({"inputs": np.zeros((2, 16), int), "puzzle_identifiers": np.array([9, 0])}, "puzzle id 9 at puzzle_identifiers[0]"),
    ({"x": np.zeros(2)}, "missing key 'inputs'"),
])
def test_bad_inputs_leave_no_output(capsys, tmp_path: Path, arrays: dict, fragment: str) -> None:
    np.savez(tmp_path / "in.npz", **arrays)
    code, _, err = hrmc(capsys, "run", "--inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / "o.npz"))
    assert_one_line_error(code, err, str(tmp_path / "in.npz"), fragment)
    assert list(tmp_path.iterdir()) == [tmp_path / "in.npz"]


def test_a_controller_runs_from_llm_states_and_names_bad_ones(capsys, tmp_path: Path) -> None:
    states = np.random.default_rng(0).standard_normal((2, 6, 96)).astype(np.float32)
    np.savez(tmp_path / "in.npz", hidden=states, prompt_mask=np.array([[1, 1, 1, 0, 0, 0], [1] * 6], bool))
    code, out, _ = hrmc(capsys, "run", "--preset", "controller-cab", "--inputs", str(tmp_path / "in.npz"), "--json",
                        "-o", str(tmp_path / "o.npz"))
    assert code == 0 and json.loads(out)["seq_len"] == 6
    with np.load(tmp_path / "o.npz") as data:
        assert data["conditioned"].shape == (4, 2, 6, 96) and data["vocab_bias"].shape == (4, 2, 128)
    np.savez(tmp_path / "bad.npz", hidden=states, prompt_mask=np.array([[1, 1, 1, 0, 0, 0], [0] * 6]))
    code, _, err = hrmc(capsys, "run", "--preset", "controller-cab", "--inputs", str(tmp_path / "bad.npz"))
    assert_one_line_error(code, err, "bad.npz", "prompt_mask row 1 has no prompt token")
    np.savez(tmp_path / "wide.npz", hidden=np.zeros((2, 6, 128), np.float32), prompt_mask=np.ones((2, 6)))
    code, _, err = hrmc(capsys, "run", "--preset", "controller-grb", "--inputs", str(tmp_path / "wide.npz"))
    assert_one_line_error(code, err, "wide.npz", "'hidden' has width 128, the model's d_model is 96")


def test_bad_checkpoint_keys_are_one_line(capsys, tiny, tmp_path: Path) -> None:
    checkpoint = write_upstream_checkpoint(tiny, tmp_path / "run", prefix="encoder.")
    assert_one_line_error(*hrmc(capsys, "run", "--checkpoint", str(checkpoint))[::2], "does not start with")


def test_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with files.atomic_output(tmp_path / "o.npz") as temporary:
            temporary.write_text("half")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_console_script_prints_no_traceback(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("hrmc")
    result = subprocess.run([str(script), "run", "--checkpoint", str(tmp_path / "missing")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr == f"hrmc: error: checkpoint not found: {tmp_path / 'missing'}\n"


def test_console_script_ends_with_its_output_whole_and_its_exit_functions_run(capsys, tmp_path: Path) -> None:
    """`hrmc.cli.run` ends the process without the interpreter's teardown: the output through a pipe still arrives
    whole, the exit code is the command's, and a temporary folder still open at the end is removed."""
    program = ("import sys, tempfile; from hrmc.cli import run; "
               f"kept = tempfile.TemporaryDirectory(dir={str(tmp_path)!r}); print(kept.name, flush=True); "
               "sys.argv = ['hrmc', 'passes']; run()")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    folder, listing = result.stdout.split("\n", 1)
    assert cli.main(["passes"]) == 0 and result.returncode == 0 and Path(folder).parent == tmp_path
    assert listing == capsys.readouterr().out
    assert not Path(folder).exists()
    failed = subprocess.run([sys.executable, "-c", "from hrmc.cli import run; import sys; "
                             "sys.argv = ['hrmc', 'run', '--preset', 'no-such']; run()"], capture_output=True, text=True)
    assert failed.returncode == 2 and failed.stderr.startswith("hrmc: error:")


def test_main_collects_less_often_and_leaves_the_collector_as_it_was(monkeypatch) -> None:
    seen = []
    monkeypatch.setattr(cli, "_main", lambda argv: seen.append(gc.get_threshold()) or 0)
    before = gc.get_threshold()
    assert cli.main(["passes"]) == 0
    assert seen == [cli.COLLECTOR_THRESHOLDS] and gc.get_threshold() == before != cli.COLLECTOR_THRESHOLDS


@pytest.mark.heavy
def test_sudoku_preset_runs_and_reports_its_size(capsys) -> None:
    code, out, err = hrmc(capsys, "run", "--preset", "sudoku", "--policy", "max-steps", "--batch", "1")
    assert code == 0 and "27,275,266 parameters" in out and "step 16/16" in err


@pytest.mark.parametrize("preset, outputs", [("nibble", {"free_energy"}), ("hex", {"hex_logits"}),
                                             ("nxt", {"probs"}), ("denoiser", {"eps", "sample", "x_t", "t"})])
def test_every_variant_runs_bit_identically(capsys, tmp_path: Path, preset: str, outputs: set[str]) -> None:
    for name in ("a", "b"):
        assert hrmc(capsys, "run", "--preset", preset, "--batch", "2", "-o", str(tmp_path / f"{name}.npz"))[0] == 0
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with np.load(tmp_path / "a.npz") as data:
        assert outputs <= set(data.files)
        if preset == "denoiser":
            assert data["sample"].shape == data["x_t"].shape == (2, 16, 64)


def test_depth_option_changes_the_reasoning(capsys, tmp_path: Path) -> None:
    for depth in ("fast", "extreme"):
        assert hrmc(capsys, "run", "--preset", "nxt", "--depth", depth, "-o", str(tmp_path / f"{depth}.npz"))[0] == 0
    with np.load(tmp_path / "fast.npz") as fast, np.load(tmp_path / "extreme.npz") as extreme:
        assert not np.array_equal(fast["logits"], extreme["logits"])


@pytest.mark.parametrize("argv, fragment", [
    (["--preset", "denoiser", "--ddim-steps", "2000"], "DDIM steps must be in [1, 1000]"),
    (["--preset", "nxt", "--policy", "q-halt"], "no ACT q head"),
    (["--depth", "bottomless"], "'bottomless' is not one of"),
])
def test_bad_variant_options_are_one_line(capsys, argv: list[str], fragment: str) -> None:
    assert_one_line_error(*hrmc(capsys, "run", *argv)[::2], fragment)


def test_parity_profile_prints_each_phase_after_the_verdict(capsys, tiny_export: Path) -> None:
    """(tiny_export: the session's export cache holds tiny's export, so the gate's own costs nothing.)"""
    code, out, _ = hrmc(capsys, "parity", "torch", "static", "--policy", "q-halt", "--batch", "2", "--profile")
    verdict, timings = out.split("\nPASS\ntime by phase (wall, ")
    assert code == 0 and "s in all):" in timings
    for phase in ("load the model and inputs", "prepare B (static)", "  make the graphs afresh",
                  "    export (or the export cache)", "    pass pipeline static (or the cache)", "whole run A (torch)",
                  "step graphs from the reference's carry"):
        assert f"\n  {phase}" in timings, timings


@pytest.mark.parametrize("argv, fragment", [
    (["--policy", "max-steps"], "was made with policy q-halt, not max-steps"),
    (["--preset", "nibble"], "made from other weights"),
    (["--seq-len", "20"], "was made with sequence length 16, not 20"),
])
def test_parity_refuses_an_artifact_that_does_not_fit(capsys, tiny_export: Path, argv: list[str], fragment: str) -> None:
    assert_one_line_error(*hrmc(capsys, "parity", "torch", "onnx", "--onnx-model", str(tiny_export),
                                "--policy", "q-halt", *argv)[::2], fragment)


def test_parity_usage_errors(capsys, tmp_path: Path) -> None:
    assert_one_line_error(*hrmc(capsys, "parity", "torch", "abacus")[::2], "'abacus' is not one of")
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [])), tmp_path / "other.onnx")
    assert_one_line_error(*hrmc(capsys, "parity", "torch", "onnx", "--onnx-model", str(tmp_path / "other.onnx"))[::2],
                          "not made by hrmc export")
    assert_one_line_error(*hrmc(capsys, "export", "-o", str(tmp_path / "no" / "m.onnx"))[::2],
                          "output folder does not exist")
    assert list(tmp_path.iterdir()) == [tmp_path / "other.onnx"]


def test_passes_lists_passes_and_pipelines(capsys) -> None:
    code, out, _ = hrmc(capsys, "passes")
    assert code == 0 and "unroll-cycles" in out and "static                unroll-cycles → act-to-masked-budget" in out
    assert "the 0.1 names still work: default = static, mlx = fused, ane = fused-fp16" in out


@pytest.mark.parametrize("argv, fragment", [
    (["--target", "tpu"], "'--target': 'tpu' is not one of"),
    (["--pipeline", "turbo"], "unknown pipeline 'turbo'"),
    (["--dump-after", "fuse"], "--dump-after fuse: not a pass of this pipeline"),
    (["--strip", "halted"], "is the carry or a halting decision"),
])
def test_lower_errors_are_one_line(capsys, tiny_export: Path, tmp_path: Path, argv: list[str], fragment: str) -> None:
    code, _, err = hrmc(capsys, "lower", "--onnx-model", str(tiny_export), "--policy", "q-halt", *argv,
                        "-o", str(tmp_path / "s.onnx"))
    assert_one_line_error(code, err, fragment)
    assert list(tmp_path.iterdir()) == []


def test_a_trained_preset_runs_its_held_out_puzzles_and_reports_accuracy(capsys) -> None:
    code, out, _ = hrmc(capsys, "run", "--preset", "sudoku4", "--policy", "q-halt", "--batch", "16", "--json")
    report = json.loads(out)
    assert code == 0 and report["batch"] == 16 and report["accuracy"]["exact"] >= 0.9
    assert min(report["halting_steps"]) < report["budget"]  # the trained q head halts early


@pytest.mark.parametrize("argv, fragment", [
    (["run", "--batch", "300"], "--batch 300: the sudoku4 preset's held-out set has 256 puzzles"),
    (["run", "--seq-len", "20"], "--seq-len 20: the sudoku4 preset's task has 16 positions"),
    (["parity", "torch", "onnx", "--batch", "257"], "--batch 257: the sudoku4 preset's held-out set has 256 puzzles"),
    (["export", "--seq-len", "20", "-o", "x.onnx"], "--seq-len 20: the sudoku4 preset's task has 16 positions"),
])
def test_a_trained_preset_refuses_options_it_cannot_honour(capsys, argv: list[str], fragment: str) -> None:
    assert_one_line_error(*hrmc(capsys, *argv, "--preset", "sudoku4")[::2], fragment)


def test_a_trained_preset_refuses_another_tasks_puzzles(capsys, tmp_path: Path) -> None:
    """4×4 puzzles are ids sudoku6's vocabulary has, but not its 36 positions: no 0 % 'result'."""
    from hrmc.hrm_ref.presets import test_set_path

    with np.load(test_set_path("sudoku4")) as data:
        np.savez(tmp_path / "in.npz", **data)
    code, _, err = hrmc(capsys, "run", "--preset", "sudoku6", "--inputs", str(tmp_path / "in.npz"))
    assert_one_line_error(code, err, "in.npz: 'inputs' has 16 positions, but the sudoku6 preset's task has 36")


def held_out(rows: int, **changes) -> dict[str, np.ndarray]:
    from hrmc.hrm_ref.presets import test_set_path

    with np.load(test_set_path("sudoku4")) as data:
        return {key: data[key][:rows] for key in data.files} | changes


def test_positions_labelled_upstreams_ignore_id_are_not_scored(capsys, tmp_path: Path) -> None:
    """-100 where the answer is wrong: every cell left is right, so 100 %, not the wrong cells counted again."""
    arrays = held_out(16)
    np.savez(tmp_path / "in.npz", **arrays)
    argv = ["run", "--preset", "sudoku4", "--budget", "1", "--inputs"]  # one step: some answers still wrong
    assert hrmc(capsys, *argv, str(tmp_path / "in.npz"), "-o", str(tmp_path / "o.npz"))[0] == 0
    with np.load(tmp_path / "o.npz") as outputs:
        right = outputs["logits"][-1].argmax(-1) == arrays["labels"]
    assert 0 < right.mean() < 1 and right.any(axis=1).all()
    np.savez(tmp_path / "masked.npz", **arrays | {"labels": np.where(right, arrays["labels"], -100)})
    code, out, _ = hrmc(capsys, *argv, str(tmp_path / "masked.npz"), "--json")
    assert code == 0 and json.loads(out)["accuracy"] == {"cells": 1.0, "exact": 1.0}


@pytest.mark.parametrize("labels, fragment", [
    (np.ones((2, 15), np.int32), "'labels' must be an integer array of the shape of 'inputs'"),
    (np.full((2, 16), 6), "label 6 at labels[0, 0] is outside [0, 6) and is not -100, the ignore id"),
    (np.full((2, 16), -1), "label -1 at labels[0, 0] is outside [0, 6) and is not -100, the ignore id"),
    (np.full((2, 16), -100), "every one of 'labels' is -100, the ignore id: nothing to score"),
])
def test_bad_labels_are_named(capsys, tmp_path: Path, labels: np.ndarray, fragment: str) -> None:
    np.savez(tmp_path / "in.npz", **held_out(2, labels=labels))
    code, _, err = hrmc(capsys, "run", "--preset", "sudoku4", "--inputs", str(tmp_path / "in.npz"))
    assert_one_line_error(code, err, "in.npz: ", fragment)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_get_the_permissions_the_umask_gives(capsys, tmp_path: Path, umask: int) -> None:
    import os

    (tmp_path / "o.npz").write_bytes(b"old")
    (tmp_path / "o.npz").chmod(0o600)
    old = os.umask(umask)
    try:
        assert hrmc(capsys, "run", "--batch", "1", "-o", str(tmp_path / "o.npz"))[0] == 0
        with files.atomic_folder(tmp_path / "folder") as folder:
            (folder / "inside").mkdir(mode=0o700)
            (folder / "inside" / "f").write_text("x")
            (folder / "inside" / "f").chmod(0o600)  # as coremltools writes a package's model spec
    finally:
        os.umask(old)
    assert (tmp_path / "o.npz").stat().st_mode & 0o777 == 0o666 & ~umask
    for path in (tmp_path / "folder", tmp_path / "folder" / "inside"):
        assert path.stat().st_mode & 0o777 == 0o777 & ~umask
    assert (tmp_path / "folder" / "inside" / "f").stat().st_mode & 0o777 == 0o666 & ~umask


def test_lower_never_replaces_a_folder_it_did_not_write(capsys, tiny_export: Path, tmp_path: Path, monkeypatch) -> None:
    lower = ["lower", "--policy", "q-halt", "--onnx-model", str(tiny_export)]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert_one_line_error(*hrmc(capsys, *lower, "--target", "mlx", "-o", str(foreign))[::2],
                          "folder hrmc did not write", "--force")
    (tmp_path / "m.mlpackage").mkdir()
    (tmp_path / "m.mlpackage" / "x").write_text("keep me")
    assert_one_line_error(*hrmc(capsys, *lower, "--target", "coreml", "-o", str(tmp_path / "m.mlpackage"))[::2],
                          "m.mlpackage is a folder hrmc did not write")
    monkeypatch.chdir(foreign)
    assert_one_line_error(*hrmc(capsys, *lower, "--target", "mlx", "-o", ".")[::2], "the current folder")
    monkeypatch.chdir(tmp_path)
    assert (foreign / "notes.txt").read_text() == "keep me" and sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.mlpackage", "mine"]  # nothing half-written
    assert (tmp_path / "m.mlpackage" / "x").read_text() == "keep me"

    assert hrmc(capsys, *lower, "--target", "mlx", "-o", str(tmp_path / "out"))[0] == 0
    assert hrmc(capsys, *lower, "--target", "mlx", "-o", str(tmp_path / "out"))[0] == 0  # its own output: replaced
    assert hrmc(capsys, *lower, "--target", "mlx", "--force", "-o", str(foreign))[0] == 0
    assert not (foreign / "notes.txt").exists()


@pytest.mark.parametrize("argv, fragment", [
    (["run", "-o", "/proc/x.npz"], "cannot write in /proc"),
    (["export", "-o", "/proc/x.onnx"], "cannot write in /proc"),
    (["lower", "--target", "mlx", "-o", "/proc/x"], "cannot write in /proc"),
])
def test_an_unwritable_output_is_named_before_the_work(capsys, argv: list[str], fragment: str) -> None:
    code, _, err = hrmc(capsys, *argv)
    assert_one_line_error(code, err, fragment)
    assert "step 1/" not in err and "tracing" not in err  # refused before running or tracing


def test_an_output_that_is_a_folder_is_named(capsys, tmp_path: Path) -> None:
    (tmp_path / "isdir.npz").mkdir()
    assert_one_line_error(*hrmc(capsys, "run", "-o", str(tmp_path / "isdir.npz"))[::2], "is a folder: name a file")


def test_an_empty_inputs_file_is_named(capsys, tmp_path: Path) -> None:
    (tmp_path / "empty.npz").write_bytes(b"")
    assert_one_line_error(*hrmc(capsys, "run", "--inputs", str(tmp_path / "empty.npz"))[::2],
                          "cannot read inputs", "empty.npz")


def test_a_raw_pickle_checkpoint_is_one_line(capsys, tmp_path: Path) -> None:
    import pickle

    (tmp_path / "raw.pkl").write_bytes(pickle.dumps({"a": [1, 2, 3]}, protocol=4))  # torch warns about protocol 4
    code, _, err = hrmc(capsys, "run", "--checkpoint", str(tmp_path / "raw.pkl"))
    assert_one_line_error(code, err, "raw.pkl", "not a weights-only torch file")
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, fragment", [
    (["--preset", "nibble"], "made from other weights than the model given"),
    (["--policy", "max-steps"], "made with policy q-halt, not max-steps"),
    (["--budget", "3"], "made with budget 8, not 3"),
    (["--seq-len", "9"], "made with sequence length 16, not 9"),
])
def test_lower_from_an_export_refuses_model_options_that_disagree(capsys, tiny_export: Path, tmp_path: Path,
                                                                  argv: list[str], fragment: str) -> None:
    code, _, err = hrmc(capsys, "lower", "--onnx-model", str(tiny_export), *argv, "-o", str(tmp_path / "x.onnx"))
    assert_one_line_error(code, err, str(tiny_export), fragment)
    assert list(tmp_path.iterdir()) == []
    code, _, _ = hrmc(capsys, "lower", "--onnx-model", str(tiny_export), "--preset", "tiny", "--policy", "q-halt",
                      "-o", str(tmp_path / "x.onnx"))
    assert code == 0


# Outputs against inputs, siblings, long names, replaced outputs and signals (issue 27)

@pytest.fixture
def export_copy(tiny_export: Path, tmp_path: Path) -> Path:
    """The tiny export pair copied here: a test that tries to overwrite it must not touch the shared one."""
    for source in (tiny_export, lowering.step_path_for(tiny_export)):
        (tmp_path / source.name).write_bytes(source.read_bytes())
    return tmp_path / tiny_export.name


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("out, link, chunk", [
    ("tiny.onnx", None, None),
    ("tiny.step.onnx", None, None),
    ("link.onnx", "symlink", None),
    ("hard.onnx", "hard link", None),
    ("a.onnx", "a.chunk2.onnx", "2"),  # its chunk sibling is the input
])
def test_lower_refuses_an_output_that_is_its_input(capsys, export_copy: Path, out: str, link: str | None,
                                                   chunk: str | None) -> None:
    folder = export_copy.parent
    if link == "symlink":
        (folder / out).symlink_to(export_copy)
    elif link == "hard link":
        os.link(export_copy, folder / out)
    elif link is not None:
        (folder / link).symlink_to(export_copy)
    before = _snapshot(folder)
    code, _, err = hrmc(capsys, "lower", "--target", "onnx", "--onnx-model", str(export_copy), "--policy", "q-halt",
                        *(["--chunk", chunk] if chunk else []), "-o", str(folder / out))
    assert_one_line_error(code, err, "would replace the input")
    assert _snapshot(folder) == before and "running pipeline" not in err


def test_run_and_export_refuse_outputs_that_are_their_inputs(capsys, tiny, tmp_path: Path) -> None:
    np.savez(tmp_path / "in.npz", inputs=np.ones((2, 16), np.int64), puzzle_identifiers=np.zeros(2, np.int64))
    assert_one_line_error(*hrmc(capsys, "run", "--inputs", str(tmp_path / "in.npz"),
                                "-o", str(tmp_path / "in.npz"))[::2], "in.npz would replace the input")
    checkpoint = write_upstream_checkpoint(tiny, tmp_path / "run")
    (tmp_path / "link.onnx").symlink_to(checkpoint)
    (tmp_path / "x.step.onnx").symlink_to(checkpoint)
    before = checkpoint.read_bytes()
    for out in ("link.onnx", "x.onnx"):  # the checkpoint itself; its export's step sibling
        code, _, err = hrmc(capsys, "export", "--checkpoint", str(checkpoint), "-o", str(tmp_path / out))
        assert_one_line_error(code, err, "would replace the input", str(checkpoint))
        assert "tracing" not in err
    assert checkpoint.read_bytes() == before


@pytest.mark.parametrize("argv, sibling", [
    (["lower", "--target", "onnx"], "o.step.onnx"),
    (["lower", "--target", "onnx", "--chunk", "3"], "o.chunk3.onnx"),
    (["lower", "--target", "onnx", "--dump-after", "cleanup"], "o.after-cleanup.onnx"),
    (["lower", "--target", "mlx", "--dump-after", "fuse"], "o.after-fuse.onnx"),
    (["export"], "o.step.onnx"),
])
def test_sibling_outputs_are_checked_before_the_work(capsys, tiny_export: Path, tmp_path: Path, argv: list[str],
                                                     sibling: str) -> None:
    (tmp_path / sibling).mkdir()
    source = ["--onnx-model", str(tiny_export)] if argv[0] == "lower" else []
    out = tmp_path / ("o" if "mlx" in argv else "o.onnx")
    code, _, err = hrmc(capsys, *argv, *source, "--policy", "q-halt", "-o", str(out))
    assert_one_line_error(code, err, f"{tmp_path / sibling} is a folder")
    assert "tracing" not in err and "running pipeline" not in err and os.listdir(tmp_path) == [sibling]


LONG = "n" * 300


@pytest.mark.parametrize("argv, fragment", [
    (["run", "-o", f"{LONG}.npz"], "name too long"),
    (["run", "--inputs", f"{LONG}.npz"], "name too long"),
    (["run", "--checkpoint", f"{LONG}/step_1"], "name too long"),
    (["lower", "--onnx-model", f"{LONG}.onnx", "-o", "x.onnx"], "name too long"),
    (["lower", "-o", f"{LONG}.onnx"], "name too long"),
    (["export", "-o", f"{LONG}/x.onnx"], "name too long"),
])
def test_names_longer_than_the_system_allows_are_one_line(capsys, tmp_path: Path, monkeypatch, argv: list[str],
                                                          fragment: str) -> None:
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(*hrmc(capsys, *argv)[::2], fragment)
    assert os.listdir(tmp_path) == []


def test_the_longest_name_the_system_allows_is_written(capsys, tmp_path: Path) -> None:
    out = tmp_path / ("n" * 251 + ".npz")  # 255 bytes: its temporary must fit beside it too
    assert hrmc(capsys, "run", "--batch", "1", "-o", str(out))[0] == 0
    assert os.listdir(tmp_path) == [out.name]


def test_dump_after_appears_only_with_the_whole_lowering(capsys, tiny_export: Path, tmp_path: Path,
                                                         monkeypatch) -> None:
    from hrmc import passes
    from hrmc.errors import InputError
    from hrmc.targets import mlx

    class Broken:
        def __call__(self, model):
            raise InputError("the pass broke")

    lower = ["lower", "--onnx-model", str(tiny_export), "--policy", "q-halt", "--dump-after", "unroll-cycles"]
    with monkeypatch.context() as patch:
        patch.setitem(passes.PASSES, "cleanup", Broken)  # after unroll-cycles
        assert_one_line_error(*hrmc(capsys, *lower, "-o", str(tmp_path / "s.onnx"))[::2], "the pass broke")
    assert os.listdir(tmp_path) == []
    monkeypatch.delitem(mlx.OPS, "hrmc.Rope")  # the target's lowering fails after every pass ran
    code, _, err = hrmc(capsys, *lower, "--target", "mlx", "-o", str(tmp_path / "m"))
    assert_one_line_error(code, err, "hrmc.Rope")
    assert os.listdir(tmp_path) == []


def test_an_old_folder_that_cannot_be_deleted_is_replaced_with_a_one_line_warning(capsys, tiny_export: Path,
                                                                                 tmp_path: Path) -> None:
    from tests.hrmc.test_files import immutable

    lower = ["lower", "--target", "mlx", "--onnx-model", str(tiny_export), "--policy", "q-halt", "-o",
             str(tmp_path / "m")]
    assert hrmc(capsys, *lower)[0] == 0
    (tmp_path / "m" / "kept").mkdir()
    (tmp_path / "m" / "kept" / "f").write_text("x")
    with immutable(tmp_path / "m" / "kept", tmp_path):
        code, out, err = hrmc(capsys, *lower)
        left = [p for p in tmp_path.iterdir() if p.name != "m"]
    lines = [line for line in err.splitlines() if not line.startswith("  ")]
    assert code == 0 and "wrote" in out and not (tmp_path / "m" / "kept").exists()
    assert len(lines) == 1 and lines[0].startswith("hrmc: warning: could not remove all of the old "), err
    assert len(left) == 1 and str(left[0]) in lines[0]


def test_sigterm_cleans_up_as_sigint_does(tiny_export: Path, tmp_path: Path) -> None:
    """`timeout`, CI cancellation and `docker stop` send SIGTERM: nothing is left beside the output nor in
    TMPDIR, and one line says so (exit 143)."""
    out, scratch = tmp_path / "out", tmp_path / "tmp"
    out.mkdir()
    scratch.mkdir()
    process = subprocess.Popen([str(Path(sys.executable).with_name("hrmc")), "lower", "--target", "ane",
                                "--onnx-model", str(tiny_export), "--policy", "q-halt", "-o", str(out / "t.mlpackage")],
                               stderr=subprocess.PIPE, text=True,
                               env=os.environ | {"TMPDIR": str(scratch), "OMP_NUM_THREADS": "1"})
    for line in process.stderr:
        if "checking float16 ranges" in line:  # the package is in its temporary beside the output by now
            break
    else:
        pytest.fail("the lowering ended before it could be terminated")
    process.send_signal(signal.SIGTERM)
    rest = process.stderr.read()
    assert process.wait(timeout=60) == 143 and rest == "hrmc: terminated\n", rest
    assert os.listdir(out) == [] and os.listdir(scratch) == []
