"""Records of an artifact's parts: read in either form, parts found by the name of the file given."""

from __future__ import annotations

from pathlib import Path

import pytest

from hrmc import binding
from hrmc.binding import BindingError, make_record, members, parse_record, role_of


def test_a_record_holds_no_name_of_the_set() -> None:
    parts = {"static": (Path("a/HRMSolver.onnx"), "11"), "step": (Path("a/HRMSolver.step.onnx"), "22")}
    record = make_record(parts, "HRMSolver")
    assert record == {"static": {"suffix": ".onnx", "sha256": "11"}, "step": {"suffix": ".step.onnx", "sha256": "22"}}
    assert "HRMSolver" not in str(record)


def test_records_of_release_0_1_read_as_suffixes() -> None:
    old = {"act": {"file": "tiny.onnx", "sha256": "1"}, "step": {"file": "tiny.step.onnx", "sha256": "2"}}
    assert parse_record(old, Path("x")) == {"act": {"suffix": ".onnx", "sha256": "1"},
                                            "step": {"suffix": ".step.onnx", "sha256": "2"}}
    folder = {"module": {"file": "hrm_mlx.py", "sha256": "1"}, "config": {"file": "config.json", "sha256": "2"}}
    assert parse_record(folder, Path("x"))["module"]["suffix"] == "hrm_mlx.py"  # one folder's files: whole names
    with pytest.raises(BindingError, match="unreadable"):
        parse_record({"act": {"sha256": 3}}, Path("x"))


def test_parts_are_found_by_the_name_given() -> None:
    record = {"static": {"suffix": ".onnx", "sha256": "1"}, "step": {"suffix": ".step.onnx", "sha256": "2"}}
    given = Path("ship/HRMSolver.onnx")
    assert members(record, given, "static") == {"static": given, "step": Path("ship/HRMSolver.step.onnx")}
    with pytest.raises(BindingError, match="must be named NAME.step.onnx"):
        members(record, Path("ship/renamed.onnx"), "step")  # a step graph renamed apart from its set


def test_a_part_is_known_by_its_content() -> None:
    record = {"static": {"suffix": ".onnx", "sha256": "1"}, "step": {"suffix": ".step.onnx", "sha256": "2"}}
    assert role_of(record, "2", Path("anything.onnx")) == "step"
    with pytest.raises(BindingError, match="does not match the sha256 its record holds for its step part"):
        role_of(record, "3", Path("x.step.onnx"))
    with binding.tolerating_changes() as noted:  # --localize: noted, and named by its name
        assert role_of(record, "3", Path("x.step.onnx")) == "step" and len(noted) == 1


def test_an_unrecorded_artifact_is_refused_unless_accepted() -> None:
    with pytest.raises(BindingError, match="no record of its parts"):
        binding.unrecorded(Path("x.onnx"))
    with binding.accepting_unrecorded() as noted:
        binding.unrecorded(Path("x.onnx"))
        assert binding.tolerating() and noted == [noted[0]] and "x.onnx" in noted[0]
    assert not binding.tolerating()
