"""The artifact record: one typed value, written and read in one place, from every release's artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from hrmc.errors import InputError
from hrmc.record import Checkpoint, Record, rebase

RELEASE = Path(__file__).resolve().parents[1] / "fixtures" / "v0.1"


def test_a_record_reads_back_what_it_writes() -> None:
    record = Record("0.2.0", {"hidden_size": 64}, "q-halt", 8, 16, ("logits",), "ab" * 32,
                    Checkpoint(name="step_1", sha256="cd" * 32, path="../run/step_1"), kind="static", chunk=4, batch=2,
                    flavour="ane", weights="float16", tf32=False)
    assert Record.parse(record.metadata(), "x") == record  # as metadata strings (ONNX, Core ML)
    assert Record.parse(json.loads(json.dumps(record.to_json())), "x") == record  # as JSON values (config.json)


def test_release_0_1_records_read_alike() -> None:
    proto = onnx.load(str(RELEASE / "tiny.onnx"), load_external_data=False)
    from_onnx = Record.parse({p.key.removeprefix("hrmc."): p.value for p in proto.metadata_props}, "tiny.onnx")
    from_mlx = Record.parse(json.loads((RELEASE / "tiny-mlx" / "config.json").read_text()), "config.json")
    assert from_onnx.policy == from_mlx.policy == "q-halt" and from_onnx.budget == from_mlx.budget == 8
    assert from_onnx.version == from_mlx.version == "0.1.0"  # the MLX folder said `hrmc_version` too
    assert from_onnx.checkpoint == from_mlx.checkpoint == Checkpoint(name="tiny.safetensors")  # `source`, then
    assert from_mlx.chunk is None and from_onnx.kind == "act"


def test_an_unreadable_or_missing_key_is_named() -> None:
    values = Record("0.2.0", {}, "q-halt", 8, 16, ("logits",), "ab").metadata()
    with pytest.raises(InputError, match="x.onnx: its hrmc record's 'budget' is unreadable"):
        Record.parse(values | {"budget": "eight"}, "x.onnx")
    with pytest.raises(InputError, match="x.onnx: its hrmc record has no 'policy'"):
        Record.parse({key: value for key, value in values.items() if key != "policy"}, "x.onnx")


def test_a_checkpoint_path_stays_true_from_wherever_its_artifact_is_written(tmp_path: Path) -> None:
    (tmp_path / "runs" / "a").mkdir(parents=True)
    (tmp_path / "runs" / "a" / "step_9").write_bytes(b"weights")
    (tmp_path / "ship" / "app").mkdir(parents=True)
    checkpoint = Checkpoint.of_file(tmp_path / "runs" / "a" / "step_9", "ab", tmp_path / "ship")
    assert checkpoint.path == "../runs/a/step_9" and checkpoint.located(tmp_path / "ship").name == "step_9"
    metadata = {"checkpoint": json.dumps(checkpoint.to_json())}
    rebase(metadata, "checkpoint", tmp_path / "ship", tmp_path / "ship" / "app")
    moved = Checkpoint(**json.loads(metadata["checkpoint"]))
    assert moved.path == "../../runs/a/step_9" and moved.located(tmp_path / "ship" / "app") is not None
    assert str(tmp_path) not in json.dumps(moved.to_json())  # never an absolute path
    assert Checkpoint(preset="tiny").rebased(tmp_path, tmp_path / "ship") == Checkpoint(preset="tiny")
