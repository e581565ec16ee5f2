"""Checkpoints and artifacts written by an earlier release keep loading and keep their meaning
(tests/fixtures/v0.1, written once and never again)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import hrmc

RELEASE = Path(__file__).parent / "fixtures" / "v0.1"
CHECKPOINT = ["--checkpoint", str(RELEASE / "tiny.safetensors"), "--policy", "q-halt"]


def test_the_checkpoint_runs(capsys) -> None:
    code, out, _ = hrmc(capsys, "run", *CHECKPOINT, "--batch", "2", "--json")
    assert code == 0 and json.loads(out)["parameters"] == 263_682


def test_the_export_lowers(capsys, tmp_path: Path) -> None:
    code, _, err = hrmc(capsys, "lower", "--onnx-model", str(RELEASE / "tiny.onnx"), "-o", str(tmp_path / "t.onnx"))
    assert code == 0 and "differs" not in err, err  # bound and unchanged


def test_the_package_is_read_in_full(capsys) -> None:
    code, out, _ = hrmc(capsys, "inspect", str(RELEASE / "tiny.mlpackage"), "--json")
    assert code == 0 and json.loads(out)["bound"]


@pytest.mark.parametrize("executor, artifact", [
    ("onnx", "tiny.onnx"), ("mlx", "tiny-mlx"),
    pytest.param("ane", "tiny.mlpackage", marks=pytest.mark.heavy),  # a minute of MIL replay
])
def test_each_artifact_still_passes_its_gate(capsys, executor: str, artifact: str) -> None:
    code, out, _ = hrmc(capsys, "parity", "torch", executor, *CHECKPOINT, "--batch", "2",
                        "--artifact", str(RELEASE / artifact))
    assert code == 0 and out.rstrip().endswith("PASS"), out
