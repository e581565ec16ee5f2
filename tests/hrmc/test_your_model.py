"""From a checkpoint in upstream's own format to gated artifacts, as a user walks it: the sequence length
from the dataset's metadata (or given once), every later command reading the artifact's record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hrmc import hrm_ref
from tests.conftest import upstream_run, write_dataset_metadata
from tests.helpers import assert_one_line_error, hrmc

GATE = Path(__file__).resolve().parents[2] / "examples" / "ci" / "gate.sh"


def test_the_sequence_length_comes_from_the_dataset(capsys, tmp_path: Path) -> None:
    checkpoint = upstream_run("tiny", tmp_path, dataset=True)
    code, out, err = hrmc(capsys, "run", "--checkpoint", str(checkpoint), "--batch", "2", "--json")
    assert code == 0 and json.loads(out)["seq_len"] == 16, err
    write_dataset_metadata(hrm_ref.build_preset("tiny"), tmp_path, seq_len=16, vocab_size=12)
    code, _, err = hrmc(capsys, "run", "--checkpoint", str(checkpoint))
    assert_one_line_error(code, err, "dataset.json says 12", "vocab_size 11")


@pytest.mark.heavy  # an upstream checkpoint exported, lowered and gated: 20 s
def test_without_a_dataset_the_length_is_given_once_and_recorded(capsys, tmp_path: Path) -> None:
    checkpoint = upstream_run("tiny", tmp_path, dataset=False)
    export = tmp_path / "ship" / "model.onnx"
    export.parent.mkdir()
    code, _, err = hrmc(capsys, "export", "--checkpoint", str(checkpoint), "--policy", "q-halt", "-o", str(export))
    assert_one_line_error(code, err, "--seq-len")
    assert hrmc(capsys, "export", "--checkpoint", str(checkpoint), "--policy", "q-halt", "--seq-len", "12",
                "-o", str(export))[0] == 0
    static = tmp_path / "ship" / "model.static.onnx"
    assert hrmc(capsys, "lower", "--target", "onnx", "--onnx-model", str(export), "-o", str(static))[0] == 0
    code, out, err = hrmc(capsys, "parity", "torch", "static", "--artifact", str(static), "--batch", "2")
    assert code == 0 and out.rstrip().endswith("PASS"), out + err  # the model, policy and length: its record's
    assert "policy q-halt" in out and "demo model" not in err
    for given in (["--policy", "max-steps"], ["--seq-len", "16"], ["--preset", "tiny"]):
        code, _, err = hrmc(capsys, "parity", "torch", "static", "--artifact", str(static), *given)
        assert_one_line_error(code, err, str(static))
    moved = tmp_path / "else" / "where" / "model.static.onnx"  # the checkpoint is found relative to the artifact
    moved.parent.mkdir(parents=True)
    for part in ("", ".step"):
        (tmp_path / "ship" / f"model.static{part}.onnx").rename(moved.with_name(f"model.static{part}.onnx"))
    code, _, err = hrmc(capsys, "parity", "torch", "static", "--artifact", str(moved))
    assert_one_line_error(code, err, "made from checkpoint step_52080", "name it with --checkpoint")
    assert hrmc(capsys, "parity", "torch", "static", "--artifact", str(moved), "--checkpoint", str(checkpoint))[0] == 0


@pytest.mark.heavy  # an upstream checkpoint exported and lowered: 20 s
def test_no_artifact_holds_a_path_of_the_machine_that_built_it(capsys, tmp_path: Path) -> None:
    checkpoint = upstream_run("tiny", tmp_path, dataset=True)
    out = tmp_path / "ship"
    out.mkdir()
    assert hrmc(capsys, "export", "--checkpoint", str(checkpoint), "-o", str(out / "m.onnx"))[0] == 0
    assert hrmc(capsys, "lower", "--target", "mlx", "--onnx-model", str(out / "m.onnx"), "-o", str(out / "m-mlx"))[0] == 0
    for file in (path for path in out.rglob("*") if path.is_file()):
        data = file.read_bytes()
        assert str(tmp_path).encode() not in data and str(Path.cwd()).encode() not in data, file


def test_the_demo_model_is_never_gated_unsaid(capsys) -> None:
    code, _, err = hrmc(capsys, "parity", "torch", "static", "--policy", "q-halt", "--batch", "1")  # tiny_export's
    assert code == 0 and err.splitlines()[0] == "  gating the built-in demo model tiny (no --checkpoint or --preset given)"
    result = subprocess.run(["bash", str(GATE)], capture_output=True, text=True)
    assert result.returncode == 2 and "--checkpoint PATH or --preset NAME" in result.stderr


# TRM (attention with RoPE) without a dataset, its length given once with --seq-len, to every target. HRM with a
# dataset (the length from its metadata) goes to every target through the same script in
# tests/examples/test_ci_example.py, and HRM without one through the CLI in the test above; each run is minutes.
EVERY_TARGET = "onnx,static,mlx,coreml,ane"


@pytest.mark.heavy  # export, the lowerings and their gates, and the ANE estimate: minutes
def test_an_upstream_trm_checkpoint_goes_through_the_copyable_ci(capsys, tmp_path: Path) -> None:
    checkpoint = upstream_run("trm-tiny", tmp_path, dataset=False)
    length = ["--seq-len", "16"]
    hrmc_command = Path(sys.executable).parent / "hrmc"
    result = subprocess.run(["bash", str(GATE), "--checkpoint", str(checkpoint), *length, "--executors", EVERY_TARGET,
                             str(tmp_path / "out")],
                            env=os.environ | {"HRMC": str(hrmc_command)}, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert all(line.split()[1] == "PASS" for line in (tmp_path / "out" / "reports" / "summary.txt").read_text().splitlines())
    code, out, err = hrmc(capsys, "bench", "--checkpoint", str(checkpoint), *length, "--executors", "torch,static",
                          "--runs", "1", "--batch", "1", "--json")
    assert code == 0 and {row["executor"] for row in json.loads(out)["rows"]} == {"torch", "static"}, err
    code, out, err = hrmc(capsys, "bench", "--estimate", "ane", "--checkpoint", str(checkpoint), *length,
                          "--batch", "1", "--json")
    assert code == 0 and json.loads(out)["rows"], err
