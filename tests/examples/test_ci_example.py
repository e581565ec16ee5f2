"""examples/ci: the shell script's commands run on tiny (built in, or as upstream's checkpoint), so the example
cannot rot."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hrmc import parity
from hrmc import targets
from hrmc.cli import cli
from tests.conftest import upstream_run

CI = Path(__file__).resolve().parents[2] / "examples" / "ci"
SCRIPT = CI / "gate.sh"
WORKFLOW = CI / "hrmc-gate.yml"
EXECUTORS = ("onnx", "static", "mlx", "coreml", "ane")  # the default
CONVERTED = ("coreai",)  # asked for: lowered from the model itself, not from the export
ARTIFACTS = ("model.onnx", "model.step.onnx", "model.static.onnx", "model.static.step.onnx", "model-mlx",
             "model.mlpackage", "model-ane.mlpackage")


def test_the_script_is_valid_bash() -> None:
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_workflow_parses_and_runs_the_script() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads the key `on` as true
    assert {"push", "pull_request", "workflow_dispatch"} <= set(triggers)
    assert "checkpoint" in triggers["workflow_dispatch"]["inputs"]
    steps = workflow["jobs"]["gate"]["steps"]
    runs = "\n".join(step.get("run", "") for step in steps)
    assert "torch==2.13.0" in runs and "examples/ci/gate.sh" in runs
    assert runs.index("torch==2.13.0") < runs.index("pip install ./hrmc")  # torch first: else a CUDA build
    upload = next(step for step in steps if step.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["if"] == "always()"


def test_the_script_uses_only_commands_and_executors_hrmc_knows() -> None:
    """Renaming a command, a target or an executor in hrmc breaks this test, not a user's CI."""
    text = SCRIPT.read_text()
    subcommands = set(re.findall(r'"\$HRMC" ([a-z-]+)', text))
    assert subcommands == {"export", "lower", "parity", "inspect"}
    assert subcommands <= set(cli.commands)
    entries = re.findall(r'"([a-z-]+):([a-z-]+):\$out/', text)  # target:executor:artifact
    gated = set(re.findall(r"^if wanted (\S+); then gate \1 ", text, re.M)) | {executor for _, executor in entries}
    assert gated == set(EXECUTORS) and set(EXECUTORS) <= set(parity.EXECUTORS)
    for name in CONVERTED:  # lowered with the model's options, then gated
        assert f'"$HRMC" lower --target {name} "${{opts[@]}}"' in text and f"gate {name} " in text
    assert {target for target, _ in entries} | set(CONVERTED) == set(targets.TARGETS)  # every target is lowered
    assert {name for name, target in targets.TARGETS.items() if target.pipeline is None} == set(CONVERTED)
    assert '"$HRMC" parity torch "$executor"' in text and "torch" in parity.EXECUTORS
    # every option the script passes to hrmc is one its command takes
    for option in set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", text)) - {"--executors", "--help"}:
        users = [name for name in subcommands if option in {o for p in cli.commands[name].params for o in p.opts}]
        assert users, f"{option}: no hrmc command the script runs takes it"


@pytest.mark.heavy  # export, four lowerings and five gates on tiny: a few minutes on 2 cores
def test_the_script_gates_every_artifact_of_an_upstream_checkpoint(tmp_path: Path) -> None:
    """tiny as upstream's training writes it (RoPE, no seq_len), the length read from the dataset.json its
    all_config.yaml's data_path names, and recorded by every artifact the script gates."""
    checkpoint = upstream_run("tiny", tmp_path, dataset=True)
    out = tmp_path / "out"
    hrmc = Path(sys.executable).parent / "hrmc"
    result = subprocess.run(["bash", str(SCRIPT), "--checkpoint", str(checkpoint), "--policy", "q-halt", "--batch", "1",
                             str(out)], env=os.environ | {"HRMC": str(hrmc)}, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    reports = out / "reports"
    for executor in EXECUTORS:
        report = json.loads((reports / f"{executor}.json").read_text())
        assert report["passed"] is True and report["policy"] == "q-halt" and report["batch"] == 1, executor
        assert Path(report["model"]).resolve() == checkpoint.resolve(), (executor, report["model"])  # from the record
        assert "shipped artifact" in report["executors"][1], report["executors"][1]
    assert json.loads((reports / "inspect-ane.json").read_text())["flavour"] == "ane"
    summary = (reports / "summary.txt").read_text().splitlines()
    assert [line.split()[:2] for line in summary] == [[name, "PASS"] for name in (*EXECUTORS, "inspect")]
    for name in ARTIFACTS:
        assert (out / name).exists(), name


@pytest.mark.heavy  # a Core AI conversion of tiny: a minute
def test_the_script_gates_a_core_ai_asset_when_asked(tmp_path: Path) -> None:
    out = tmp_path / "out"
    hrmc = Path(sys.executable).parent / "hrmc"
    result = subprocess.run(["bash", str(SCRIPT), "--preset", "tiny", "--executors", "coreai", str(out)],
                            env=os.environ | {"HRMC": str(hrmc)}, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    report = json.loads((out / "reports" / "coreai.json").read_text())
    assert report["passed"] is True and report["policy"] == "q-halt" and "shipped artifact" in report["executors"][1]
    assert (out / "reports" / "summary.txt").read_text().split()[:2] == ["coreai", "PASS"]
