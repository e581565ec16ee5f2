"""`hrmc bench --estimate ane`: the ANE latency estimate's FLOP count, its model, its chip table and its CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hrmc import hrm_ref
from hrmc.bench.ane_chips import CHIPS
from hrmc.bench.estimate import OpCost, op_costs, package_time
from hrmc.targets.coreml import package_functions
from hrmc.bench.roofline import flops_per_step
from tests.helpers import assert_one_line_error, hrmc


@pytest.fixture(scope="module")
def graphs(tiny_export: Path, tmp_path_factory) -> dict[str, Path]:
    """tiny's static and step graphs after the ane pass pipeline (q-halt, budget 8)."""
    from hrmc.passes import lower_onnx

    return lower_onnx(tiny_export, tmp_path_factory.mktemp("lowered") / "t.onnx", "fused").graphs


@pytest.fixture(scope="module")
def ane_package(graphs: dict[str, Path], tmp_path_factory) -> Path:
    """tiny's ane package at batch 1, one float16 per weight (the default)."""
    from hrmc.targets.coreml import lower_coreml

    return lower_coreml(graphs, tmp_path_factory.mktemp("ane") / "t.mlpackage", "ane", 1, "t.onnx")


@pytest.mark.heavy  # ane lowerings of tiny
def test_matmul_flops_are_what_the_model_computes(tiny, ane_package: Path) -> None:
    """Each weight matmul runs once (with float16x2 pairs, twice), attention's activation products once: their sum
    gives the model's matmul FLOPs, counted from its config (bench.roofline)."""
    costs = op_costs(package_functions(ane_package)["step"])
    batch = hrm_ref.random_batch(tiny.config, 1, seed=0)
    weighted = sum(c.flops for c in costs if c.type == "matmul" and c.weight_bytes > 16)  # flags are 1-byte constants
    products = sum(c.flops for c in costs if c.type == "matmul" and c.weight_bytes <= 16)
    assert weighted + products == flops_per_step(tiny.config, 1, tiny.inner.positions(batch))
    everything = sum(c.flops for c in costs)
    assert weighted + products < everything < 1.05 * (weighted + products)  # norms, softmax, SwiGLU: a few %
    assert sum(c.type == "const" for c in costs) == 0 and all(c.bytes >= c.weight_bytes >= 0 for c in costs)


def test_compressed_weights_are_charged_as_stored(tiny, graphs: dict[str, Path], tmp_path: Path) -> None:
    """A matmul reading a compressed weight (a constexpr op, not itself an op) is charged the compressed bytes:
    lut4's packed 4-bit indices and float16 palettes, about a quarter of the float16 weights they replace."""
    from hrmc.hrm_ref.compression import compress
    from hrmc.targets.coreml import lower_coreml

    costs = {storage: op_costs(package_functions(lower_coreml({"step": graphs["step"]}, tmp_path / f"{storage}.mlpackage",
                                                              "ane", 1, "t.onnx", weights=storage))["step"])
             for storage in ("float16", "lut4")}
    assert not any(c.type.startswith("constexpr_") for c in costs["lut4"])
    assert [c.flops for c in costs["lut4"]] == [c.flops for c in costs["float16"]]  # the same ops
    config = tiny.config
    reads = {"inner.L_level.": config.H_cycles * config.L_cycles, "inner.H_level.": config.H_cycles}  # per step
    saved = 0
    for name in tiny.compressible_weights():
        packed = compress(tiny.state_dict()[name].numpy(), "lut4", 0)
        times = next(count for prefix, count in reads.items() if name.startswith(prefix))
        saved += times * (2 * packed.values.size - (packed.values.size // 2 + packed.table.nbytes))
    weights = {storage: sum(c.weight_bytes for c in found if c.type == "matmul") for storage, found in costs.items()}
    assert weights["float16"] - weights["lut4"] == saved


def test_the_roofline_charges_the_bound_plus_the_overheads() -> None:
    chip = CHIPS["m4"]
    compute_bound = OpCost("matmul", int(chip.float16_flops / 1000), 2, 0)  # 1 ms of FLOPs, 2 bytes
    memory_bound = OpCost("add", 1, int(chip.memory_bandwidth / 500), 0)  # 2 ms of bytes
    timing = package_time([compute_bound, memory_bound], chip)
    assert timing.compute == pytest.approx(1e-3) and timing.memory == pytest.approx(2e-3)
    assert timing.overhead == pytest.approx(chip.call_overhead + 2 * chip.op_overhead)
    assert package_time([compute_bound, memory_bound, compute_bound], chip).total > timing.total  # one more op


@pytest.mark.heavy  # ane lowerings of tiny
def test_the_whole_inference_and_a_larger_batch_cost_more(capsys, tiny_export: Path, ane_package: Path) -> None:
    """The inference function (8 steps unrolled) has more ops than the step function; batch 4 moves more than 1."""
    code, out, _ = hrmc(capsys, "bench", "--estimate", "ane", "--artifact", str(ane_package), "--json")
    one = json.loads(out)
    assert code == 0 and [row["batch"] for row in one["rows"]] == [1] * len(CHIPS)
    ops = {package["role"]: package["ops"] for package in one["packages"]}
    assert ops["static"] > 4 * ops["step"]
    for row in one["rows"]:
        assert row["whole_ms"] > row["step_ms"] > 0
        assert (row["step_from"], row["whole_from"]) == ("step function", "inference function")
    code, out, err = hrmc(capsys, "bench", "--estimate", "ane", "--onnx-model", str(tiny_export), "--policy", "q-halt",
                          "--batch", "4", "--chip", "m1", "--chip", "a18", "--json")
    four = json.loads(out)
    assert code == 0 and "building solve, step, init (batch 4)" in err
    assert [(row["chip"], row["batch"]) for row in four["rows"]] == [("m1", 4), ("a18", 4)]
    smaller = {row["chip"]: row for row in one["rows"]}
    for row in four["rows"]:
        assert row["step_ms"] > smaller[row["chip"]]["step_ms"] and row["whole_ms"] > smaller[row["chip"]]["whole_ms"]


@pytest.mark.heavy  # ane lowerings of tiny
def test_the_report_says_it_is_an_estimate_and_names_its_sources(capsys, graphs: dict[str, Path],
                                                                 tmp_path: Path) -> None:
    from hrmc.targets.coreml import lower_coreml

    alone = lower_coreml({"step": graphs["step"]}, tmp_path / "s.mlpackage", "ane", 1, "t.onnx")
    code, out, _ = hrmc(capsys, "bench", "--estimate", "ane", "--artifact", str(alone), "--chip", "m4,a17")
    assert code == 0 and "ESTIMATE" in out and "not a measurement" in out
    assert "Apple introduces M4 chip" in out and "a17: NOT PUBLISHED for this chip, assumed: memory_bandwidth" in out
    assert "(step: step function; whole: step function × budget)" in out  # no inference function: derived, and said so
    code, out, _ = hrmc(capsys, "bench", "--estimate", "ane", "--artifact", str(alone), "--json")
    report = json.loads(out)
    assert code == 0 and report["kind"] == "estimate" and "not a measurement" in report["note"]
    assert [chip["name"] for chip in report["chips"]] == list(CHIPS)
    for chip in report["chips"]:
        assert set(chip["sources"]) == {"float16_flops", "memory_bandwidth", "call_overhead", "op_overhead"}
        assert set(chip["assumed"]) <= set(chip["sources"]) and all(chip["sources"].values())


def test_every_assumed_number_is_said_to_be_unpublished() -> None:
    for chip in CHIPS.values():
        for number in chip.assumed:
            assert "not published" in chip.sources[number] or "assumed" in chip.sources[number], (chip.name, number)


def test_bad_input_is_one_line_and_exit_2(capsys, graphs: dict[str, Path], tmp_path: Path) -> None:
    assert_one_line_error(*hrmc(capsys, "bench", "--estimate", "ane", "--chip", "m1,m9")[::2], "unknown chip m9")
    from hrmc.targets.coreml import lower_coreml

    coreml = lower_coreml({"step": graphs["step"]}, tmp_path / "c.mlpackage", "coreml", 1, "t.onnx")
    assert_one_line_error(*hrmc(capsys, "bench", "--estimate", "ane", "--artifact", str(coreml))[::2],
                          "is a coreml package")
    assert_one_line_error(*hrmc(capsys, "bench", "--estimate", "ane", "--artifact", str(tmp_path / "none"))[::2],
                          "expected an ane .mlpackage")
    assert_one_line_error(*hrmc(capsys, "bench", "--artifact", str(coreml))[::2], "only read with --estimate")


def _latency(tmp_path: Path, batch: int = 1, chip: str = "Apple M2 Pro") -> Path:
    """A latency.json as check.py writes it on a Mac, from fabricated samples (nothing was timed here)."""
    from hrmc.parity.latency import latency_record

    about = {"package": "t.mlpackage", "flavour": "ane", "float_type": "float16", "batch": batch, "policy": "q-halt",
             "budget": 8, "hrmc": "0.2.0", "measured_on": {"chip": chip, "macos": "15.1", "machine": "arm64",
                                                           "coremltools": "9.0", "python": "3.9.6"}}
    functions = {name: {"role": role, "load_s": 0.5, "first_s": 0.02, "samples_s": [ms * 1e-3 for ms in samples]}
                 for name, role, samples in (("step", "step", [1.0, 2.0, 3.0]), ("solve", "static", [7.0, 9.0]),
                                             ("init", "init", [0.25]))}
    raw = {"check": "PASS", "functions": functions, "compute_plan": {}, "no_compute_plan": "",
           "app_loop": [{"batch": 1, "loop": "step", "calls": 5, "steps": 5, "samples_s": [0.004, 0.006]}]}
    path = tmp_path / "latency.json"
    path.write_text(json.dumps(latency_record(about, {"CPU_AND_NE": raw, "ALL": {"check": "PASS", "error": "E: x"}})))
    return path


def test_the_measurement_is_set_beside_the_estimate_of_the_same_function(tmp_path: Path) -> None:
    """Per compute unit and function: measured p50 and p90, and the estimate of that function at the measured batch
    on the measured chip (M2 Pro: m2's Neural Engine); no estimate for a function the model does not estimate."""
    from hrmc.bench.estimate import EstimateReport, Row, format_beside, measured_beside
    from hrmc.parity.latency import read_measured

    rows = [Row(chip, batch, step, 8 * step, "step function", "inference function", 0, 0, 0)
            for chip, step in (("m1", 0.5), ("m2", 0.4)) for batch in (1, 4)]
    report = EstimateReport("preset:tiny", "q-halt", 8, "float16", [CHIPS["m1"], CHIPS["m2"]], [], rows)
    beside = measured_beside(report, read_measured(_latency(tmp_path)))
    assert beside["chips"] == ["m2"] and beside["not_timed"] == {"ALL": "E: x"}
    assert [(r["function"], r["p50_ms"], r["p90_ms"], r["estimate_ms"]) for r in beside["functions"]] == [
        ("step", 2.0, 2.8, {"m2": 0.4}), ("solve", 8.0, 8.8, {"m2": 3.2}), ("init", 0.25, 0.25, {"m2": None})]
    text = format_beside(beside, "x/latency.json").splitlines()
    assert text[0].startswith("MEASURED beside the ESTIMATE: t.mlpackage (ane, batch 1)") and "Apple M2 Pro" in text[0]
    assert text[1].split() == ["unit", "check", "function", "role", "p50", "ms", "p90", "ms", "est.", "m2", "ms"]
    assert text[2].split() == ["CPU_AND_NE", "PASS", "step", "step", "2.000", "2.800", "0.4"]
    assert text[4].split()[-1] == "-" and "ALL          not timed: E: x" in text
    beside = measured_beside(report, read_measured(_latency(tmp_path, chip="Apple M3")))  # not estimated: every chip
    assert beside["chips"] == ["m1", "m2"] and beside["functions"][0]["estimate_ms"] == {"m1": 0.5, "m2": 0.4}
    beside = measured_beside(report, read_measured(_latency(tmp_path, batch=2)))
    assert beside["chips"] == [] and "no estimate at batch 2 (estimated at batch 1, 4)" in format_beside(beside, "f")


def test_measured_is_read_with_the_estimate_only_and_a_bad_one_is_one_line(capsys, tmp_path: Path) -> None:
    path = _latency(tmp_path)
    assert_one_line_error(*hrmc(capsys, "bench", "--measured", str(path))[::2], "--measured: only read with --estimate")
    data = json.loads(path.read_text())
    data["units"]["CPU_AND_NE"]["functions"]["step"]["p90_ms"] = None
    path.write_text(json.dumps(data))
    assert_one_line_error(*hrmc(capsys, "bench", "--estimate", "ane", "--measured", str(path))[::2], str(path),
                          "units.CPU_AND_NE.functions.step.p90_ms: expected a finite number")
    assert_one_line_error(*hrmc(capsys, "bench", "--estimate", "ane", "--measured", str(tmp_path / "none.json"))[::2],
                          "none.json: no such file")


@pytest.mark.heavy  # ane lowerings of tiny
def test_bench_prints_the_measurement_beside_the_estimate(capsys, ane_package: Path, tmp_path: Path) -> None:
    path = _latency(tmp_path)
    code, out, _ = hrmc(capsys, "bench", "--estimate", "ane", "--artifact", str(ane_package), "--measured", str(path))
    assert code == 0 and "ESTIMATE" in out and "MEASURED beside the ESTIMATE" in out
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("unit") and "est. m2 ms" in line)
    step = lines[lines.index(header) + 1].split()
    estimated = next(line.split() for line in lines if line.split()[:2] == ["m2", "15.8"])  # its row: step ms 5th
    assert step[:6] == ["CPU_AND_NE", "PASS", "step", "step", "2.000", "2.800"]
    assert float(step[6]) == pytest.approx(float(estimated[4]), rel=2e-3)  # printed to 4 and 3 digits
    code, out, _ = hrmc(capsys, "bench", "--estimate", "ane", "--artifact", str(ane_package), "--measured", str(path),
                        "--json")
    report = json.loads(out)
    assert code == 0 and report["kind"] == "estimate" and report["measured"]["file"] == str(path)
    assert report["measured"]["chips"] == ["m2"] and report["measured"]["functions"][0]["estimate_ms"]["m2"] > 0
