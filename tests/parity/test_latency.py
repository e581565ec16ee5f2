"""latency.json: check.py's summaries of what it timed on a Mac (fabricated samples here: no Core ML runs on
Linux), its markdown table, its timing loop with Core ML stood in for, and hrmc reading it back."""

from __future__ import annotations

import json
import subprocess
import types
from pathlib import Path

import numpy as np
import pytest

from hrmc.errors import InputError
from hrmc.parity.mac_check import check as check_py
from hrmc.parity.latency import latency_markdown, latency_record, plan_summary, read_measured, timing_summary

MS = 1e-3
ABOUT = {"package": "t.mlpackage", "flavour": "ane", "float_type": "float16", "batch": 2, "policy": "q-halt",
         "budget": 4, "hrmc": "0.2.0", "measured_on": {"chip": "Apple M2", "macos": "15.1", "machine": "arm64",
                                                       "coremltools": "9.0", "python": "3.9.6"}}


def _raw(check: str = "PASS") -> dict:
    """One compute unit's raw timings, as check.py collects them: seconds."""
    return {"check": check,
            "functions": {"step": {"role": "step", "load_s": 0.41234, "first_s": 12 * MS,
                                   "samples_s": [s * MS for s in range(10, 0, -1)]},
                          "solve": {"role": "static", "load_s": 1.5, "first_s": 40 * MS, "samples_s": [8 * MS] * 4}},
            "app_loop": [{"batch": 1, "loop": "step", "calls": 3, "steps": 3, "samples_s": [3 * MS, 4 * MS]},
                         {"batch": 2, "loop": "step", "calls": 4, "steps": 4, "samples_s": [5 * MS, 7 * MS]}],
            "compute_plan": {"step": [("neural_engine", 0.6), ("neural_engine", 0.2), ("cpu", 0.2), ("unknown", None)]},
            "no_compute_plan": ""}


def test_percentiles_are_numpys_linear_ones_in_ms() -> None:
    summary = timing_summary([s * MS for s in range(10, 0, -1)])  # 1 … 10 ms, in any order
    assert summary == {"p50_ms": 5.5, "p90_ms": 9.1, "n": 10}  # linear: 1 + 0.5 × 9, 1 + 0.9 × 9
    samples = np.random.default_rng(0).gamma(2.0, 1e-3, 37)
    expected = np.percentile(samples * 1e3, [50, 90], method="linear")
    summary = timing_summary(list(samples))
    assert (summary["p50_ms"], summary["p90_ms"]) == pytest.approx(tuple(expected), abs=1e-4) and summary["n"] == 37
    assert timing_summary([2 * MS]) == {"p50_ms": 2.0, "p90_ms": 2.0, "n": 1}


def test_the_plan_counts_ops_per_place_and_shares_the_estimated_cost() -> None:
    plan = plan_summary([("neural_engine", 0.6), ("neural_engine", 0.2), ("cpu", 0.2), ("unknown", None)])
    assert plan["ops"] == {"neural_engine": 2, "gpu": 0, "cpu": 1, "unknown": 1}
    assert plan["cost_share"] == {"neural_engine": 0.8, "gpu": 0.0, "cpu": 0.2, "unknown": 0.0}
    assert plan_summary([("gpu", None)])["cost_share"] == dict.fromkeys(check_py.PLACES)  # no estimate: none made up


def test_the_record_states_its_counts_and_round_trips(tmp_path: Path) -> None:
    record = latency_record(ABOUT, {"CPU_ONLY": _raw(), "CPU_AND_NE": {"check": "FAIL", "error": "RuntimeError: no"}})
    assert record["kind"] == "latency" and record["format"] == check_py.LATENCY_FORMAT
    assert (record["warmup"], record["iterations"]) == (check_py.WARMUP, check_py.ITERATIONS)
    assert "linear" in record["percentiles"] and "compiles" in record["load"]
    unit = record["units"]["CPU_ONLY"]
    assert unit["functions"]["step"] == {"role": "step", "load_s": 0.4123, "first_call_ms": 12.0, "p50_ms": 5.5,
                                         "p90_ms": 9.1, "n": 10}
    assert unit["functions"]["solve"]["p50_ms"] == unit["functions"]["solve"]["p90_ms"] == 8.0
    assert unit["app_loop"] == [{"batch": 1, "loop": "step", "calls": 3, "steps": 3, "p50_ms": 3.5, "p90_ms": 3.9, "n": 2},
                                {"batch": 2, "loop": "step", "calls": 4, "steps": 4, "p50_ms": 6.0, "p90_ms": 6.8, "n": 2}]
    assert unit["compute_plan"]["step"]["ops"]["neural_engine"] == 2 and unit["no_compute_plan"] == ""
    assert record["units"]["CPU_AND_NE"] == {"check": "FAIL", "error": "RuntimeError: no"}
    path = tmp_path / "latency.json"
    path.write_text(json.dumps(record, indent=1))
    assert read_measured(path) == record == json.loads(json.dumps(record))


def test_the_markdown_table_is_ready_to_publish() -> None:
    record = latency_record(ABOUT, {"CPU_ONLY": _raw(), "ALL": {"check": "PASS", "error": "RuntimeError: a|b"}})
    table = latency_markdown(record)
    lines = table.splitlines()
    assert lines[0] == "### t.mlpackage: Core ML latency on Apple M2" and table.endswith("|\n")
    assert "macOS 15.1" in table and f"{check_py.ITERATIONS} timed calls" in table and "linear" in table
    assert "| CPU_ONLY | PASS | step | step | 0.41 | 12.00 | 5.50 | 9.10 |" in lines
    assert "| CPU_ONLY | PASS | solve | static | 1.50 | 40.00 | 8.00 | 8.00 |" in lines
    assert "| ALL | PASS | not timed: RuntimeError: a\\|b | | | | | |" in lines  # a pipe in a message stays in its cell
    assert "| CPU_ONLY | step | 1 | 3 | 3 | 3.50 | 3.90 |" in lines and "| CPU_ONLY | step | 2 | 4 | 4 | 6.00 | 6.80 |" in lines
    assert "| CPU_ONLY | step | 2 / 0 / 1 / 1 | 80% / 0% / 20% |" in lines
    headers = [line for line in lines if line.startswith("| compute unit")]
    for header in headers:  # every table: its separator row next, as many columns
        separator = lines[lines.index(header) + 1]
        assert set(separator) <= set("|-:") and separator.count("|") == header.count("|")
    assert len(headers) == 3
    rows = [line for line in lines if line.startswith("| ")]
    assert all(row.count("|") - row.count("\\|") == headers[0].count("|") for row in rows[:4])


@pytest.mark.parametrize("change, fragment", [
    (lambda r: r.pop("units"), "latency.json: units: expected an object, missing"),
    (lambda r: r.update(kind="estimate"), "kind/format: not a latency record"),
    (lambda r: r["units"]["CPU_ONLY"]["functions"]["step"].update(p50_ms="fast"),
     'units.CPU_ONLY.functions.step.p50_ms: expected a finite number, found "fast"'),
    (lambda r: r["units"]["CPU_ONLY"]["app_loop"][1].pop("calls"), "units.CPU_ONLY.app_loop[1].calls: expected an integer"),
    (lambda r: r["measured_on"].pop("chip"), "measured_on.chip: expected a string, missing"),
    (lambda r: r.update(units={}), "units: no compute unit timed"),
    (lambda r: r["units"].update(ALL=[]), "units.ALL: expected an object"),
])
def test_a_bad_latency_json_is_one_line_naming_the_file_and_key(tmp_path: Path, change, fragment) -> None:
    record = json.loads(json.dumps(latency_record(ABOUT, {"CPU_ONLY": _raw()})))  # its own copy of ABOUT's
    change(record)
    path = tmp_path / "latency.json"
    path.write_text(json.dumps(record))
    with pytest.raises(InputError) as raised:
        read_measured(path)
    assert fragment in str(raised.value) and str(path) in str(raised.value) and "\n" not in str(raised.value)


def test_a_missing_or_broken_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="none.json: no such file"):
        read_measured(tmp_path / "none.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(InputError, match="broken.json: not JSON"):
        read_measured(tmp_path / "broken.json")


class _Device:
    pass


class MLNeuralEngineComputeDevice(_Device):
    pass


class MLCPUComputeDevice(_Device):
    pass


def _fake_coremltools(predicted: list) -> types.SimpleNamespace:
    """Core ML stood in for: a package of `solve` and `step` over a toy carry (each sample halts after as many
    steps as its first input token), and a compute plan putting matmuls on the Neural Engine, the rest on the CPU."""
    carry_inputs = ["z_H", "z_L", "steps", "halted", "inputs"]
    functions = [types.SimpleNamespace(name=name, input=[types.SimpleNamespace(name=n) for n in names])
                 for name, names in (("solve", ["inputs"]), ("step", carry_inputs))]
    meta = {"hrmc.functions": json.dumps({"solve": {"role": "static"}, "step": {"role": "step"}})}
    spec = types.SimpleNamespace(description=types.SimpleNamespace(
        functions=functions, metadata=types.SimpleNamespace(userDefined=meta)))

    class MLModel:
        def __init__(self, path: str, compute_units: str, function_name: str) -> None:
            self.function = function_name
            self.names = {f.name: {i.name for i in f.input} for f in functions}[function_name]

        def predict(self, feed: dict) -> dict:
            assert set(feed) == self.names, feed.keys()  # Core ML refuses other inputs
            predicted.append((self.function, {name: value.copy() for name, value in feed.items()}))
            if self.function == "solve":
                return {"steps_run": np.array([4], np.int32)}
            steps = feed["steps"] + (feed["halted"] == 0)
            halted = (feed["halted"] != 0) | (steps >= feed["inputs"][:, 0])
            return {"z_H_next": feed["z_H"], "z_L_next": feed["z_L"], "steps_next": steps, "halted_next": halted,
                    "logits": feed["z_H"][None], "halted_per_step": halted[None]}

        def get_compiled_model_path(self) -> str:
            return "/compiled.mlmodelc"

    op = types.SimpleNamespace
    block = op(operations=[op(operator_name="const", blocks=[]), op(operator_name="matmul", blocks=[]),
                           op(operator_name="add", blocks=[])])

    class Plan:
        model_structure = op(program=op(functions={"solve": op(block=block), "step": op(block=block)}))

        @staticmethod
        def load_from_path(path: str, units: str) -> Plan:
            assert path == "/compiled.mlmodelc"
            return Plan()

        def get_compute_device_usage_for_mlprogram_operation(self, operation):
            assert operation.operator_name != "const"
            device = MLNeuralEngineComputeDevice if operation.operator_name == "matmul" else MLCPUComputeDevice
            return op(preferred_compute_device=device())

        def get_estimated_cost_for_mlprogram_operation(self, operation):
            return op(weight=0.9 if operation.operator_name == "matmul" else 0.1)

    units = types.SimpleNamespace(**{unit: unit for unit in check_py.UNITS})
    return types.SimpleNamespace(__version__="9.0", ComputeUnit=units, utils=op(load_spec=lambda path: spec),
                                 models=op(MLModel=MLModel, compute_plan=op(MLComputePlan=Plan)))


def test_time_package_times_every_function_and_the_app_loop(tmp_path: Path, monkeypatch, capsys) -> None:
    """check.py's timing loop on Linux, Core ML and the clock stood in for: every function the package has, by
    name; the app loop at batch 1 (one sample, the other rows halted) and at the package's batch."""
    predicted: list = []
    ct = _fake_coremltools(predicted)
    monkeypatch.setattr("platform.mac_ver", lambda: ("15.1", ("", "", ""), "arm64"))
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: types.SimpleNamespace(stdout="Apple M2\n"))
    package = tmp_path / "t.mlpackage"
    package.mkdir()
    (package / "Manifest.json").write_text("{}")
    record = {"package": package.name, "flavour": "ane", "float_type": "float16", "batch": 3, "policy": "q-halt",
              "budget": 8, "hrmc": "0.2.0", "functions": {"step": "step", "inference": "solve"}}
    inputs = {"inputs": np.array([[2, 0], [5, 0], [3, 0]], np.int32)}
    reference = {"carry.z_H": np.zeros((1, 3, 2)), "carry.z_L": np.zeros((1, 3, 2)),
                 "carry.steps": np.zeros((1, 3), np.int32), "carry.halted": np.zeros((1, 3), bool)}
    ticks = iter(range(10**6))
    latency = check_py.time_package(ct, package, record, inputs, reference,
                                  {"CPU_ONLY": {"passed": True}, "ALL": {"passed": False}}, tmp_path,
                                  clock=lambda: next(ticks) * MS)  # every call takes 1 ms
    assert json.loads((tmp_path / "latency.json").read_text()) == latency == read_measured(tmp_path / "latency.json")
    assert (tmp_path / "latency.md").read_text() == latency_markdown(latency)
    assert latency["measured_on"]["chip"] == "Apple M2" and latency["batch"] == 3
    for unit, check in (("CPU_ONLY", "PASS"), ("ALL", "FAIL")):
        timed = latency["units"][unit]
        assert timed["check"] == check and list(timed["functions"]) == ["solve", "step"]
        for row in timed["functions"].values():
            assert row["load_s"] == 0.001 and row["first_call_ms"] == row["p50_ms"] == row["p90_ms"] == 1.0
            assert row["n"] == check_py.ITERATIONS
        assert [(loop["batch"], loop["calls"], loop["steps"]) for loop in timed["app_loop"]] == [(1, 2, 2), (3, 5, 5)]
        assert all(loop["loop"] == "step" and loop["p50_ms"] > 0 for loop in timed["app_loop"])
        assert timed["compute_plan"]["step"] == {"ops": {"neural_engine": 1, "gpu": 0, "cpu": 1, "unknown": 0},
                                                 "cost_share": {"neural_engine": 0.9, "gpu": 0.0, "cpu": 0.1,
                                                                "unknown": 0.0}}
    one = [feed for function, feed in predicted if function == "step" and feed["halted"][1:].all()]
    assert one and all((feed["inputs"] == 2).any(axis=1).all() for feed in one)  # batch 1: sample 0 in every row
    out = capsys.readouterr().out
    assert "| CPU_ONLY | PASS | step | step | 0.00 | 1.00 | 1.00 | 1.00 |" in out and "wrote" in out
    assert not [line for line in out.splitlines() if line.split()[:1] in (["CPU_ONLY"], ["ALL"])]  # check.py's verdict lines


def test_a_unit_core_ml_cannot_time_is_recorded_and_the_plan_needs_macos_14_4(tmp_path: Path, monkeypatch) -> None:
    ct = _fake_coremltools([])
    monkeypatch.setattr("platform.mac_ver", lambda: ("14.2", ("", "", ""), "arm64"))
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: types.SimpleNamespace(stdout=""))
    package = tmp_path / "t.mlpackage"
    package.mkdir()
    record = {"package": package.name, "flavour": "ane", "float_type": "float16", "batch": 1, "policy": "q-halt",
              "budget": 2, "hrmc": "0.2.0", "functions": {"step": "step"}}
    inputs = {"inputs": np.array([[1, 0]], np.int32)}
    reference = {"carry.z_H": np.zeros((1, 1, 2)), "carry.z_L": np.zeros((1, 1, 2)),
                 "carry.steps": np.zeros((1, 1), np.int32), "carry.halted": np.zeros((1, 1), bool)}
    original = ct.models.MLModel

    def refusing(path: str, compute_units: str, function_name: str):
        if compute_units == "CPU_AND_GPU":
            raise RuntimeError("Error compiling model\nsecond line")
        return original(path, compute_units=compute_units, function_name=function_name)

    ct.models.MLModel = refusing
    latency = check_py.time_package(ct, package, record, inputs, reference,
                                  {"CPU_AND_GPU": {"passed": True}, "CPU_ONLY": {"passed": True}}, tmp_path)
    assert latency["units"]["CPU_AND_GPU"] == {"check": "PASS", "error": "RuntimeError: Error compiling model"}
    timed = latency["units"]["CPU_ONLY"]
    assert timed["compute_plan"] == {} and "needs macOS 14.4 or later (this is macOS 14.2)" in timed["no_compute_plan"]
    assert [(loop["batch"], loop["calls"]) for loop in timed["app_loop"]] == [(1, 1)]  # batch 1 is the package's
    assert read_measured(tmp_path / "latency.json") == latency
