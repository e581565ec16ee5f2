"""On-Mac check of one Core ML package or Core AI asset: `hrmc lower --mac-check` copies this file to
NAME.check/check.py.

No Apple hardware runs where hrmc is tested: on Linux hrmc judges a package by replaying its MIL
program (coremltools' reference semantics), not with Core ML's own kernels. On a Mac this script runs
the package with Core ML `predict`, on each compute unit, on the inputs saved beside it, and judges
it by the contract hrmc's Linux gate applies (hrmc docs/design.md §4; the limits are in record.json):

- the `step` function, teacher-forced: for each step of the saved torch float32 reference trajectory,
  the saved carry and inputs in, every output against the reference's outputs of that step.
  float16 (`ane`) packages, by the float16 rule: states and per-token outputs (z_H, z_L, logits), at
  every step, RMSE against torch float64 (hrm_ref) <= 2 x the RMSE torch float16 (hrm_ref run in
  float16, from the same carry: its error is saved per step and output) has against float64, or where
  that is less one float16 rounding of the output (2^-11 x its RMS); q values |dq| <= 0.01 x max |q|
  of the reference run, against float64. Their PSNR is reported, and whether it meets Apple's 60 dB.
  float32 (`coreml`) packages: |a - b| <= 1e-4 + 1e-4 |b| on every output: looser than the Linux
  replay's 1e-5, because Core ML's CPU kernels (and the GPU's) order their sums differently from the
  reference's;
- decisions (halting; answers, the argmax per position) must agree wherever the reference's margin
  exceeds the band saved with it: float16, 4 x the most torch float16 changes that margin at that step;
  float32, the tolerance's width. Closer calls are counted as ambiguous, never failed;
- the `solve` function (the whole static inference), once: its final answers and halting steps
  against the package's own step function chained from the initial carry (as on Linux, where the two
  are bit-identical), under the same rule; there the band is 4 x (float16) or 10 x (float32) what
  torch float16 (float16) or float64 (float32) change in the reference's whole run;
- reported, not gated (as on Linux): the solve function's final answers and halting steps against
  the reference's whole run. On random weights the recurrence is chaotic (hrmc docs/design.md §4): a
  correct float16 package's whole run parts from torch's at close calls.

It first checks the package's files against the sha256 record saved with it, so it judges exactly
the package it was written for, and loads a copy (opening a package in Core ML may rewrite its
manifest). Stand-alone: the standard library, numpy and coremltools 8 or later; macOS 15 or later
for a multifunction package.

A Core AI asset (NAME.aimodel, `--target coreai`) is judged the same way, by the float32 rule, with Apple's Core AI
runtime (coreai-core) in place of Core ML predict: on macOS 27 on each compute unit (CPU_ONLY: specialization
options cpu_only; ALL: default; CPU_AND_NE, CPU_AND_GPU: the Neural Engine or GPU preferred, which Core AI may
still fall back from); elsewhere on coreai-core's reference interpreter, the one unit there is (INTERPRETER),
which is what hrmc's Linux gate ran. Its step function keeps the carry as runtime state. Needs `pip install
coreai-core numpy`.

    python3 NAME.check/check.py [PACKAGE] [--units CPU_ONLY,ALL]

Exit 0: every compute unit passes; 1: one fails; 2: not macOS (a Core ML package), or not the package (or
the files) this check was written for.

After the verdict it times the package on each compute unit (`time_package`): every function's load and
calls, and the app's loop (`app_loop`: init, then chunk or step until every sample halted), with Core ML's
compute plan where macOS has it; it writes latency.json and latency.md beside this script. The verdict stands
whatever the timing finds.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import math
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

try:
    import numpy as np
except ImportError:  # told in one line by main
    np = None

RECORD, INPUTS, REFERENCE, LINUX = "record.json", "inputs.npz", "reference.npz", "linux.json"
APPLE_PSNR_DB = 60.0  # Apple's float16 bar (ml-ane-transformers): reported, not gated
UNITS = ("CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL")
PARTS = "Data/com.hrmc/parts.json"  # the package's own record of its files: not one of them
COREAI = "coreai"  # the flavour of a Core AI asset
MARKERS = {COREAI: "main.mlirb"}  # a file every artifact of the kind has; a Core ML package: Manifest.json
INTERPRETER = "INTERPRETER"  # a Core AI asset off macOS: coreai-core's reference interpreter, no compute units
CARRY = ("z_H", "z_L", "steps", "halted")

Arrays = dict[str, "np.ndarray"]
Predict = Callable[[Arrays], Arrays]


class Refused(Exception):
    """A reason to judge nothing (exit 2): not a Mac, or not the package this check was written for."""


@contextlib.contextmanager
def package_copy(package: Path) -> Iterator[Path]:
    """A copy of the package in a temporary folder, for Core ML to open: it may rewrite the manifest of a package
    it opens, and the package must stay the bytes its record names."""
    with tempfile.TemporaryDirectory(prefix="hrmc-check-") as scratch:
        copy = Path(scratch) / package.name
        shutil.copytree(package, copy)
        yield copy


def package_files(package: Path) -> dict[str, str]:
    """sha256 of every file of a package but its parts record, by path inside it (as hrmc records them)."""
    files = {}
    for path in sorted(package.rglob("*")):
        relative = path.relative_to(package).as_posix()
        if path.is_file() and relative != PARTS:
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            files[relative] = digest.hexdigest()
    return files


def verify_package(package: Path, recorded: dict[str, str], flavour: str = "") -> None:
    """The package's files must be exactly those recorded when this check was written."""
    marker = MARKERS.get(flavour, "Manifest.json")
    if not (package / marker).is_file():
        raise Refused(f"{package}: not {'a Core AI asset' if flavour == COREAI else 'an .mlpackage'} (no {marker})")
    found = package_files(package)
    for name in sorted(set(recorded) | set(found)):
        if name not in found:
            raise Refused(f"{package}: {name} is missing: not the package this check was written for")
        if name not in recorded:
            raise Refused(f"{package}: {name} was not in the package this check was written for")
        if found[name] != recorded[name]:
            raise Refused(f"{package}: {name} does not match its recorded sha256: not the package this check "
                          "was written for")


def load_arrays(path: Path) -> Arrays:
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def _in_package_types(arrays: Arrays, float_type: str) -> Arrays:
    """A feed in the package's I/O types: floats in its float type, everything else (bools too) int32."""
    return {name: value.astype(float_type if value.dtype.kind == "f" else np.int32) for name, value in arrays.items()}


def step_feed(reference: Arrays, inputs: Arrays, step: int, float_type: str) -> Arrays:
    """The step function's inputs at `step` (0-based): the reference's carry before it, and the inputs."""
    carry = {name: reference[f"carry.{name}"][step] for name in CARRY}
    return _in_package_types({**carry, **inputs}, float_type)


def step_outputs(values: Arrays) -> Arrays:
    """The step function's outputs under the reference's names: the carry without `_next`, the per-step
    outputs (stacked [1, ...]) unstacked, the `_per_step` copies of the carry dropped."""
    outputs = {}
    for name, value in values.items():
        value = np.asarray(value)
        if name.endswith("_per_step"):
            continue
        if name.endswith("_next") and name[:-len("_next")] in CARRY:
            outputs[name[:-len("_next")]] = value
        else:
            outputs[name] = value[0]
    return outputs


def whole_outputs(values: Arrays) -> Arrays:
    """The inference function's final answers (argmax per position of the last logits) and halting steps:
    its per-step outputs [budget, ...] hold `steps_run` steps."""
    last = int(np.asarray(values["steps_run"]).reshape(-1)[0]) - 1
    final = {"steps": np.asarray(values["steps"])[last].reshape(-1)}
    if "logits" in values:
        final["answers"] = np.asarray(values["logits"])[last].argmax(-1)
    return final


def halting_margin(outputs: Arrays, record: dict[str, Any]) -> np.ndarray | None:
    """How far each sample is from halting (q_halt - q_continue, or q_halt alone for TRM); None without a q head."""
    names = record["halting_margin"]
    if not names:
        return None
    margin = np.asarray(outputs[names[0]], np.float64).reshape(-1)
    return margin - np.asarray(outputs[names[1]], np.float64).reshape(-1) if len(names) > 1 else margin


def top2_lead(logits: np.ndarray) -> np.ndarray:
    """The top logit's lead over the second, per position: how close an answer is to changing."""
    top = np.sort(np.asarray(logits, np.float64), axis=-1)
    return top[..., -1] - top[..., -2]


def chained_run(step: Predict, record: dict[str, Any], inputs: Arrays, reference: Arrays) -> Arrays:
    """The package's own step function chained from the initial carry, its carry fed back, until every sample
    halted (at most the budget): its final answers and halting steps, with its own margins (each sample's
    closest halting call while it ran, and its final answers' leads). Halted samples keep their answers."""
    carry = {name: reference[f"carry.{name}"][0] for name in CARRY}
    final: Arrays = {"halting_margin": np.full(carry["steps"].shape, np.inf)}
    for _ in range(record["budget"]):
        if carry["halted"].all():
            break
        out = step_outputs(step(_in_package_types({**carry, **inputs}, record["float_type"])))
        running = ~carry["halted"]
        if "logits" in out:
            answers, lead = out["logits"].argmax(-1), top2_lead(out["logits"])
            if "answers" in final:  # halted samples keep theirs
                answers = np.where(running[:, None], answers, final["answers"])
                lead = np.where(running[:, None], lead, final["answers_margin"])
            final["answers"], final["answers_margin"] = answers, lead
        margin = halting_margin(out, record)
        if margin is not None:
            final["halting_margin"] = np.where(running, np.minimum(final["halting_margin"], np.abs(margin)),
                                               final["halting_margin"])
        carry = {name: np.asarray(out[name]).reshape(carry[name].shape) for name in CARRY}
        carry["halted"] = carry["halted"] != 0
    final["steps"] = carry["steps"]
    return final


def app_loop(init: Predict, chunk: Predict, inputs: Arrays, budget: int) -> Arrays:
    """The loop an app runs (examples/swift/Solve.swift is the same loop in Swift): `init` gives the carry a
    puzzle starts from; the `chunkK` (or `step`) function runs with its carry fed back until every sample has
    halted, at most `budget` calls. A halted sample's carry stays, but the function still computes outputs for
    it: its answer is the argmax of its logits at the step it halted (the rows of a call are its K steps,
    `halted_per_step` says after which one each sample halted), and halt_step the steps it ran."""
    carry, answer = dict(init(inputs)), None
    for _ in range(budget):
        if np.asarray(carry["halted"]).all():
            break
        out = chunk({**carry, **inputs})
        halted_before = np.asarray(carry["halted"]) != 0
        for j, halted_after in enumerate(np.asarray(out["halted_per_step"]) != 0):
            if "logits" in out:
                found = np.asarray(out["logits"])[j].argmax(-1).astype(np.int32)
                answer = found if answer is None else np.where(halted_before[:, None], answer, found)
            halted_before = halted_after
        carry = {name: np.asarray(out[name + "_next"]) for name in CARRY}
    return {"answer": answer, "halt_step": np.asarray(carry["steps"])}


def run_functions(step: Predict, inference: Predict, record: dict[str, Any], inputs: Arrays,
                  reference: Arrays) -> dict[str, Any]:
    """What `judge` reads: the step function from every carry of the reference trajectory (teacher-forced)
    and chained from the initial carry, and the solve function once."""
    float_type = record["float_type"]
    steps = [step_outputs(step(step_feed(reference, inputs, s, float_type)))
             for s in range(reference["carry.steps"].shape[0])]
    return {"steps": steps, "chained": chained_run(step, record, inputs, reference),
            "whole": whole_outputs(inference(_in_package_types(inputs, float_type)))}


def psnr(a: np.ndarray, reference: np.ndarray) -> float:
    """20 log10(max |reference| / RMSE) in dB; inf when equal."""
    rmse = float(np.sqrt(np.mean((a - reference) ** 2))) if a.size else 0.0
    peak = float(np.abs(reference).max()) if reference.size else 0.0
    return math.inf if rmse == 0 else 20 * math.log10(max(peak, np.finfo(np.float64).tiny) / rmse)


def rmse(a: np.ndarray, reference: np.ndarray) -> float:
    """sqrt(mean((a - reference)^2)) in float64; inf when the shapes differ, 0 for empty arrays."""
    a, reference = np.asarray(a, np.float64), np.asarray(reference, np.float64)
    if a.shape != reference.shape:
        return math.inf
    return float(np.sqrt(np.mean((a - reference) ** 2))) if a.size else 0.0


def float16_bound(yardstick_error: float, exact: np.ndarray, factor: float, rounding: float) -> tuple[float, str]:
    """The float16 rule (hrmc docs/design.md §4): the RMSE against the float64 reference that a float16 output
    may have at one step, and which rule set it. "ratio": factor x the RMSE of hrm_ref in float16 from the same
    carry (`yardstick_error`); "rounding", where that is less: one float16 rounding of the output, 2^-11 x its
    RMS (`rounding` = 2^-11: an output hrm_ref float16 happens to get almost exactly)."""
    exact = np.asarray(exact, np.float64)
    rounded = rounding * float(np.sqrt(np.mean(exact ** 2))) if exact.size else 0.0
    return (factor * yardstick_error, "ratio") if factor * yardstick_error >= rounded else (rounded, "rounding")


def describe_gate(gate: dict[str, Any]) -> str:
    if gate["gate"] == "float16":
        return f"RMSE <= {gate['factor']:g} x torch f16's"
    if gate["gate"] == "abs":
        return f"|a-b| <= {gate['limit']:.3g}"
    return f"|a-b| <= {gate['atol']:g} + {gate['rtol']:g}|b|"


def expected_outputs(record: dict[str, Any], reference: Arrays, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """What output `name` is judged against at every step, and torch float16's RMSE against it per step: float16
    packages, the float64 reference and that error; float32 packages, the float32 reference and None."""
    if record["float_type"] == "float16":
        return reference[f"exact.{name}"], reference[f"float16_error.{name}"]
    return reference[f"step.{name}"], None


def _judged(gate: dict[str, Any], a: np.ndarray, b: np.ndarray, yardstick_error: float | None) -> tuple[bool, str]:
    """Whether one step's output `a` is within its gate against `b`, and if not, why."""
    difference = np.abs(a - b)
    largest = float(difference.max(initial=0.0))
    if gate["gate"] == "float16":
        error = rmse(a, b)
        limit, _ = float16_bound(yardstick_error, b, gate["factor"], gate["rounding"])
        ratio = error / yardstick_error if yardstick_error else math.inf
        return error <= limit, f"RMSE {error:.3g} > {limit:.3g} ({ratio:.2f} x torch float16's)"
    if gate["gate"] == "abs":
        return largest <= gate["limit"], f"max |a-b| {largest:.3g}"
    return bool((difference <= gate["atol"] + gate["rtol"] * np.abs(b)).all()), f"max |a-b| {largest:.3g}"


def output_row(name: str, gate: dict[str, Any], got: list[np.ndarray], expected: np.ndarray,
               yardstick_errors: np.ndarray | None = None) -> dict[str, Any]:
    """One output over every step: its worst PSNR and max |a-b|, float16 its worst ratio of RMSE to torch
    float16's (`yardstick_errors`, per step), and the first step outside its gate."""
    row = {"output": name, "gate": describe_gate(gate), "psnr": math.inf, "psnr_step": 1, "max_abs": 0.0,
           "max_abs_step": 1, "ratio": None, "ratio_step": None, "failed_step": None, "problem": ""}
    for s, value in enumerate(got):
        b = np.asarray(expected[s], np.float64)
        a = np.asarray(value, np.float64)
        if a.size != b.size:
            return {**row, "failed_step": s + 1, "problem": f"shape {list(a.shape)}, expected {list(b.shape)}"}
        a = a.reshape(b.shape)
        finite = bool(np.isfinite(a).all())
        db = psnr(a, b) if finite else -math.inf
        largest = float(np.abs(a - b).max(initial=0.0)) if finite else math.inf
        if db < row["psnr"]:
            row["psnr"], row["psnr_step"] = db, s + 1
        if largest > row["max_abs"]:
            row["max_abs"], row["max_abs_step"] = largest, s + 1
        yardstick = None if yardstick_errors is None else float(yardstick_errors[s])
        if yardstick is not None:
            error = rmse(a, b) if finite else math.inf
            ratio = error / yardstick if yardstick else (0.0 if error == 0 else math.inf)
            if row["ratio"] is None or ratio > row["ratio"]:
                row["ratio"], row["ratio_step"] = ratio, s + 1
        within, why = _judged(gate, a, b, yardstick) if finite else (False, "not finite")
        if row["failed_step"] is None and not within:
            row["failed_step"], row["problem"] = s + 1, why
    return row


def decisions(differs: np.ndarray, margin: np.ndarray | None, band: np.ndarray | None) -> dict[str, int]:
    """Decisions compared: those that differ where the margin is clear of its band (failures), and those that
    differ on a close call (ambiguous). No margin (a model without a q head): every call is clear."""
    close = np.zeros(differs.shape, bool) if margin is None else np.abs(margin) <= band
    return {"compared": int(differs.size), "mismatched": int((differs & ~close).sum()),
            "ambiguous": int((differs & close).sum())}


def agreement(got: np.ndarray, expected: np.ndarray, margin: np.ndarray | None) -> dict[str, Any]:
    """How many decisions agree, and the reference's margins where they do not (the closest first)."""
    differs = np.asarray(got).reshape(expected.shape) != expected
    margins = [] if margin is None else sorted(float(m) for m in np.abs(margin[differs]))
    return {"agree": int((~differs).sum()), "compared": int(differs.size), "reference_margins": margins[:8]}


def judge(record: dict[str, Any], reference: Arrays, runs: dict[str, Any]) -> dict[str, Any]:
    """The verdict on one run of the package (`run_functions`), by the contract of hrmc's Linux gate.

    Gated: each output of the step function over the teacher-forced steps, and its halting and answer
    decisions per step; the solve function's final answers and halting steps against the step function
    chained from the initial carry (every function a package holds is checked, the whole one against the
    steps), close calls being those within the whole-run band. Reported, not gated, as on Linux: the inference
    function against the reference's whole run. The recurrence is chaotic on random weights (hrmc
    docs/design.md §4): a correct float16 package's whole run parts from torch's at close calls that no
    one-step band covers."""
    steps, chained, whole = runs["steps"], runs["chained"], runs["whole"]
    rows = [output_row(name, gate, [out.get(name, np.zeros(0)) for out in steps],
                       *expected_outputs(record, reference, name)) for name, gate in record["gates"].items()]
    halted = np.stack([np.asarray(out["halted"]).reshape(-1) != 0 for out in steps])
    counted = np.stack([np.asarray(out["steps"]).reshape(-1) for out in steps])
    checks = {"halting decisions, per step": decisions(
        (halted != reference["step.halted"]) | (counted != reference["step.steps"]),
        reference.get("step.halting_margin"), reference.get("step.halting_band"))}
    if "step.answers_margin" in reference:
        answers = np.stack([np.asarray(out["logits"]).argmax(-1) for out in steps])
        checks["answers, per step"] = decisions(answers != reference["step.logits"].argmax(-1),
                                                reference["step.answers_margin"], reference["step.answers_band"])
    if "answers" in chained:
        checks["inference vs the steps chained: final answers"] = decisions(
            whole["answers"].reshape(chained["answers"].shape) != chained["answers"], chained["answers_margin"],
            reference["run.answers_band"])
    checks["inference vs the steps chained: halting steps"] = decisions(
        whole["steps"] != chained["steps"], chained["halting_margin"] if record["halting_margin"] else None,
        reference.get("run.halting_band"))
    reported = {"halting steps": agreement(whole["steps"], reference["run.steps"], reference.get("run.halting_margin"))}
    if "run.answers" in reference:
        reported["final answers"] = agreement(whole["answers"], reference["run.answers"],
                                              reference["run.answers_margin"])
    failures = [f"{row['output']}: {row['problem']} at step {row['failed_step']} ({row['gate']})"
                for row in rows if row["failed_step"] is not None]
    failures += [f"{what}: {counts['mismatched']} differ where the call is clear"
                 for what, counts in checks.items() if counts["mismatched"]]
    return {"outputs": rows, "decisions": checks, "reference_run": reported, "failures": failures,
            "passed": not failures}


def _figures(row: dict[str, Any] | None) -> str:
    if row is None:
        return ""
    return f"{row['psnr']:.1f} dB, {row['max_abs']:.3g}" + (f", {row['ratio']:.2f}" if row.get("ratio") is not None
                                                             else "")


def _ratio(row: dict[str, Any]) -> str:
    """The worst ratio of RMSE to torch float16's (float16 packages), and whether the worst PSNR meets Apple's
    60 dB (for information)."""
    if row["ratio"] is None:
        return ""
    return f"{row['ratio']:>6.2f} (step {row['ratio_step']:>2}) {'yes' if row['psnr'] >= APPLE_PSNR_DB else 'no':>6}"


def _agreement(counts: dict[str, Any]) -> str:
    where = (" (where not, the reference's margins: " + ", ".join(f"{m:.3g}" for m in counts["reference_margins"])
             + ")") if counts["reference_margins"] else ""
    return f"{counts['agree']} of {counts['compared']}{where}"


def format_verdict(title: str, verdict: dict[str, Any], linux: dict[str, Any] | None = None,
                   linux_name: str = "Linux replay") -> list[str]:
    """A table of one run's figures, with the Linux run's (`linux_name`) beside them, and its PASS or FAIL."""
    linux = linux or {}
    theirs = {row["output"]: row for row in linux.get("outputs", [])}
    ratios = any(row.get("ratio") is not None for row in verdict["outputs"])
    lines = [title, f"  {'output':<20}{'gate':<28}{'worst PSNR':>21}{'worst max|a-b|':>24}"
                    + (f"{'worst ratio':>20}{'>=60 dB':>8}" if ratios else "")
                    + f"  {linux_name + ': PSNR, max|a-b|' + (', ratio' if ratios else ''):<40}ok"]
    for row in verdict["outputs"]:
        lines.append(f"  {row['output']:<20}{row['gate']:<28}{row['psnr']:>9.1f} dB (step {row['psnr_step']:>2})"
                     f"{row['max_abs']:>14.3g} (step {row['max_abs_step']:>2})"
                     + (f"{_ratio(row):>28}" if ratios else "")
                     + f"  {_figures(theirs.get(row['output'])):<40}{'ok' if row['failed_step'] is None else 'FAIL'}")
    for what, counts in verdict["decisions"].items():
        line = (f"  {what}: {counts['mismatched']} of {counts['compared']} differ where the call is clear, "
                f"{counts['ambiguous']} on a close call")
        if what in linux.get("decisions", {}):
            other = linux["decisions"][what]
            line += f" ({linux_name}: {other['mismatched']} and {other['ambiguous']})"
        lines.append(line)
    for what, counts in verdict["reference_run"].items():
        line = f"  reported, not gated: the solve function's {what} agree with the reference's whole run on " + (
            _agreement(counts))
        if what in linux.get("reference_run", {}):
            line += f" ({linux_name}: {_agreement(linux['reference_run'][what])})"
        lines.append(line)
    lines.append("  PASS" if verdict["passed"] else "  FAIL: " + "; ".join(verdict["failures"]))
    return lines


def parse_units(text: str) -> list[str]:
    units = [unit.strip().upper() for unit in text.split(",") if unit.strip()]
    unknown = [unit for unit in units if unit not in UNITS]
    if unknown or not units:
        raise Refused(f"--units: unknown compute unit {', '.join(unknown) or '(none given)'}; choose from "
                      f"{', '.join(UNITS)}")
    return units


# Latency (latency.json, latency.md): `time_package` times the package on each compute unit after its check. The
# summaries are numpy only, like the verdict's code, so that hrmc reads and tests them on Linux (hrmc.parity.latency).
LATENCY, LATENCY_TABLE = "latency.json", "latency.md"
LATENCY_FORMAT = 1
WARMUP, ITERATIONS = 3, 20  # per function and app loop on each compute unit: untimed calls after the first, then timed
PERCENTILES = "numpy.percentile, method linear, of the timed calls"
LOAD = ("MLModel(package, compute_units, function_name): Core ML compiles the package and loads the function (a "
        "unit's first load may also compile for the Neural Engine, which later loads find cached)")
LOAD_COREAI = ("load_function on the asset's executable for the unit, which the first function's load opens with the "
               "unit's specialization options (Core AI specializes the program then)")
PLACES = ("neural_engine", "gpu", "cpu", "unknown")  # where MLComputePlan prefers to run an op (unknown: not said)
DEVICES = {"MLNeuralEngineComputeDevice": "neural_engine", "MLGPUComputeDevice": "gpu", "MLCPUComputeDevice": "cpu"}


def timing_summary(samples_s: list[float]) -> dict[str, Any]:
    """p50 and p90 in ms of timed calls (seconds each), numpy's linear percentiles, and how many."""
    ms = np.asarray(samples_s, np.float64) * 1e3
    p50, p90 = np.percentile(ms, [50, 90], method="linear")
    return {"p50_ms": round(float(p50), 4), "p90_ms": round(float(p90), 4), "n": int(ms.size)}


def plan_summary(ops: list[tuple[str, float | None]]) -> dict[str, Any]:
    """One function's compute plan, from (place, estimated cost) per op: the ops each place runs, and its share of
    the estimated cost (None where Core ML estimated none)."""
    counts, costs = dict.fromkeys(PLACES, 0), dict.fromkeys(PLACES, 0.0)
    for place, cost in ops:
        counts[place] += 1
        costs[place] += cost or 0.0
    total = sum(costs.values())
    return {"ops": counts, "cost_share": {place: round(cost / total, 4) if total else None
                                          for place, cost in costs.items()}}


def latency_record(about: dict[str, Any], units: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """latency.json from the raw timings of each compute unit: {"check": PASS or FAIL, "functions": {name: {"role",
    "load_s", "first_s", "samples_s"}}, "app_loop": [{"batch", "loop", "calls", "steps", "samples_s"}],
    "compute_plan": {name: [(place, cost), ...]}, "no_compute_plan": why there is none, or ""}, or {"check",
    "error"} for a unit that could not be timed. `about`: the package and the Mac."""
    summary = {}
    for unit, raw in units.items():
        if "error" in raw:
            summary[unit] = {"check": raw["check"], "error": raw["error"]}
            continue
        summary[unit] = {
            "check": raw["check"],
            "functions": {name: {"role": timed["role"], "load_s": round(timed["load_s"], 4),
                                 "first_call_ms": round(timed["first_s"] * 1e3, 4),
                                 **timing_summary(timed["samples_s"])}
                          for name, timed in raw["functions"].items()},
            "app_loop": [{**{key: loop[key] for key in ("batch", "loop", "calls", "steps")},
                          **timing_summary(loop["samples_s"])} for loop in raw["app_loop"]],
            "compute_plan": {name: plan_summary(ops) for name, ops in raw["compute_plan"].items()},
            "no_compute_plan": raw["no_compute_plan"]}
    about = dict(about)
    load = about.pop("load", LOAD)
    return {"kind": "latency", "format": LATENCY_FORMAT, **about, "warmup": WARMUP, "iterations": ITERATIONS,
            "percentiles": PERCENTILES, "load": load, "units": summary}


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|")


def latency_markdown(latency: dict[str, Any]) -> str:
    """latency.json as markdown, ready to publish: a table of the functions, one of the app loop and one of the
    compute plan, under what was measured on what."""
    on = latency["measured_on"]
    framework = "Core AI" if latency["flavour"] == COREAI else "Core ML"
    tool = f"coremltools {on['coremltools']}" if "coremltools" in on else f"coreai-core {on.get('coreai-core')}"
    system = f"macOS {on['macos']}" if on["macos"] else "a system other than macOS"
    lines = [f"### {latency['package']}: {framework} latency on {on['chip']}", "",
             f"{latency['flavour']} package ({latency['float_type']}, batch {latency['batch']}, policy "
             f"{latency['policy']}, budget {latency['budget']}), lowered by hrmc {latency['hrmc']}, timed by its "
             f"check.py with {on.get('runtime', 'Core ML predict')} on {system} ({on['machine']}), {tool}. "
             f"p50 and p90 of {latency['iterations']} timed calls after the first and {latency['warmup']} untimed "
             f"ones ({latency['percentiles']}); load: {latency['load']}.", "",
             "| compute unit | check | function | role | load s | first call ms | p50 ms | p90 ms |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    units = latency["units"]
    for unit, timed in units.items():
        if "error" in timed:
            lines.append(f"| {unit} | {timed['check']} | not timed: {_cell(timed['error'])} | | | | | |")
        for name, row in timed.get("functions", {}).items():
            lines.append(f"| {unit} | {timed['check']} | {name} | {row['role']} | {row['load_s']:.2f} | "
                         f"{row['first_call_ms']:.2f} | {row['p50_ms']:.2f} | {row['p90_ms']:.2f} |")
    lines += ["", "The app loop: the initial carry (the init function's where the package has one), then the loop "
              "function, its carry fed back, until every sample has halted. Batch 1: one sample, the package's other "
              "rows halted from the start.", "",
              "| compute unit | loop | batch | calls | ACT steps | p50 ms | p90 ms |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for unit, timed in units.items():
        for loop in timed.get("app_loop", []):
            lines.append(f"| {unit} | {loop['loop']} | {loop['batch']} | {loop['calls']} | {loop['steps']} | "
                         f"{loop['p50_ms']:.2f} | {loop['p90_ms']:.2f} |")
    lines += ["", f"Where {framework} plans to run the ops (MLComputePlan: ops, and share of its estimated cost).", "",
              "| compute unit | function | ops NE / GPU / CPU / unknown | estimated cost NE / GPU / CPU |",
              "|---|---|---|---|"]
    for unit, timed in units.items():
        if timed.get("no_compute_plan"):
            lines.append(f"| {unit} | no compute plan: {_cell(timed['no_compute_plan'])} | | |")
        for name, plan in timed.get("compute_plan", {}).items():
            shares = [plan["cost_share"][place] for place in PLACES[:3]]
            cost = " / ".join(f"{share:.0%}" for share in shares) if None not in shares else "not estimated"
            lines.append(f"| {unit} | {name} | {' / '.join(str(plan['ops'][place]) for place in PLACES)} | {cost} |")
    return "\n".join(lines) + "\n"


def _package_functions(ct, package: Path, record: dict[str, Any]) -> dict[str, tuple[str, list[str]]]:
    """{function: (its role, its input names)} of every function the package's spec lists; roles as hrmc's
    metadata (hrmc.functions) says, else as record.json does, else the function's name."""
    spec = ct.utils.load_spec(str(package))
    roles = {name: role for role, name in record["functions"].items()}
    meta = spec.description.metadata.userDefined
    if "hrmc.functions" in meta:
        roles.update({name: entry["role"] for name, entry in json.loads(meta["hrmc.functions"]).items()})
    return {function.name: (roles.get(function.name, function.name), [value.name for value in function.input])
            for function in spec.description.functions}


def _feed(names: list[str], values: Arrays, float_type: str) -> Arrays:
    return _in_package_types({name: value for name, value in values.items() if name in names}, float_type)


def _timed(call: Callable[[], Any], clock: Callable[[], float]) -> tuple[float, list[float]]:
    """The first call's seconds, and those of ITERATIONS calls after WARMUP untimed ones."""
    seconds = []
    for _ in range(1 + WARMUP + ITERATIONS):
        start = clock()
        call()
        seconds.append(clock() - start)
    return seconds[0], seconds[1 + WARMUP:]


def _app_run(models: dict[str, Predict], functions: dict[str, tuple[str, list[str]]], loop: str, init: str | None,
             inputs: Arrays, carry: Arrays, halted: np.ndarray, record: dict[str, Any]) -> tuple[int, int]:
    """The app's loop once (`app_loop`): the initial carry (the init function's, else `carry`), rows `halted`
    halted from the start, then the loop function until every sample halted. The calls of the loop function it
    made, and the ACT steps its longest sample ran."""
    float_type, calls = record["float_type"], []

    def begin(feed: Arrays) -> Arrays:
        start = models[init](_feed(functions[init][1], feed, float_type)) if init is not None else carry
        first = {name: np.asarray(start[name]) for name in CARRY}
        return {**first, "halted": (first["halted"] != 0) | halted}

    def step(feed: Arrays) -> Arrays:
        calls.append(loop)
        return models[loop](_feed(functions[loop][1], feed, float_type))

    steps = int(np.asarray(app_loop(begin, step, inputs, record["budget"])["halt_step"]).max())
    return len(calls), steps


def _compute_plan(ct, model: Any, unit: str, names: list[str]) -> tuple[dict[str, list[tuple[str, float | None]]], str]:
    """(place, estimated cost) of every op but the consts of each function `names`, as Core ML plans them on `unit`
    (MLComputePlan, of `model`'s compiled package: macOS 14.4 and coremltools 8 or later), or why there is none."""
    release = platform.mac_ver()[0]
    if tuple(int(part) for part in release.split(".")[:2] if part.isdigit()) < (14, 4):
        return {}, f"MLComputePlan needs macOS 14.4 or later (this is macOS {release})"
    plans = getattr(getattr(ct.models, "compute_plan", None), "MLComputePlan", None)
    if plans is None:
        return {}, f"MLComputePlan needs coremltools 8 or later (found {ct.__version__})"
    try:
        plan = plans.load_from_path(model.get_compiled_model_path(), getattr(ct.ComputeUnit, unit))
        program = plan.model_structure.program
        found = {}
        for name in (name for name in names if name in program.functions):
            blocks, ops = [program.functions[name].block], []
            while blocks:
                for op in blocks.pop().operations:
                    blocks += op.blocks
                    if op.operator_name != "const":
                        usage = plan.get_compute_device_usage_for_mlprogram_operation(op)
                        cost = plan.get_estimated_cost_for_mlprogram_operation(op)
                        ops.append((DEVICES.get(type(usage.preferred_compute_device).__name__, "unknown")
                                    if usage is not None else "unknown", None if cost is None else float(cost.weight)))
            found[name] = ops
        return found, ""
    except Exception as error:  # the timings stand without it
        return {}, f"MLComputePlan failed: {type(error).__name__}: {error}".splitlines()[0]


def _time_unit(functions: dict[str, tuple[str, list[str]]], load: Callable[[str], Predict], record: dict[str, Any],
               inputs: Arrays, reference: Arrays, clock: Callable[[], float]) -> dict[str, Any]:
    """The raw timings of one compute unit (what `latency_record` reads, less the compute plan): each function
    (`functions`: {name: (role, input names)}) loaded (`load`: its predict, on that unit), called on the saved inputs
    (and the reference's initial carry), and the app loop at batch 1 and at the package's batch."""
    start = {name: reference[f"carry.{name}"][0] for name in CARRY}
    models, timed = {}, {}
    for name, (role, names) in functions.items():
        began = clock()
        models[name] = load(name)
        loaded = clock() - began
        feed = _feed(names, {**start, **inputs}, record["float_type"])
        first, samples = _timed(lambda: models[name](feed), clock)
        timed[name] = {"role": role, "load_s": loaded, "first_s": first, "samples_s": samples}
    roles = {role: name for name, (role, _) in reversed(list(functions.items()))}
    loop, init, batch = roles.get("chunk", roles.get("step")), roles.get("init"), record["batch"]
    loops, sizes = [], dict.fromkeys((1, batch)) if loop is not None else {}
    for size in sizes:
        one = {name: np.repeat(value[:1], batch, axis=0) for name, value in inputs.items()} if size == 1 else inputs
        halted = np.arange(batch) >= size
        calls, steps = _app_run(models, functions, loop, init, one, start, halted, record)
        _, samples = _timed(lambda: _app_run(models, functions, loop, init, one, start, halted, record), clock)
        loops.append({"batch": size, "loop": loop, "calls": calls, "steps": steps, "samples_s": samples})
    return {"functions": timed, "app_loop": loops}


def _time_core_ml(ct, package: Path, unit: str, record: dict[str, Any], inputs: Arrays, reference: Arrays,
                  clock: Callable[[], float]) -> dict[str, Any]:
    """One compute unit's raw timings of a Core ML package, with where Core ML plans to run its ops."""
    functions, models = _package_functions(ct, package, record), {}

    def load(name: str) -> Predict:
        models[name] = ct.models.MLModel(str(package), compute_units=getattr(ct.ComputeUnit, unit), function_name=name)
        return models[name].predict

    timed = _time_unit(functions, load, record, inputs, reference, clock)
    plan, why = _compute_plan(ct, next(iter(models.values())), unit, list(functions))
    return {**timed, "compute_plan": plan, "no_compute_plan": why}


def time_package(ct, package: Path, record: dict[str, Any], inputs: Arrays, reference: Arrays,
                 verdicts: dict[str, dict[str, Any]], folder: Path,
                 clock: Callable[[], float] | None = None) -> dict[str, Any]:
    """Time the package on each compute unit judged (`verdicts`): each function's load (compile) time, first call
    and warm p50/p90, the app loop at batch 1 and at the package's batch, and where Core ML plans to run the ops;
    write latency.json and latency.md (`latency_markdown`) to `folder`, print the table. A unit Core ML cannot
    time is recorded as such: the verdict stands."""
    with package_copy(package) as copy:
        return _time_units(lambda unit, time_clock: _time_core_ml(ct, copy, unit, record, inputs, reference,
                                                                   time_clock),
                           package, record, verdicts, folder, {"coremltools": ct.__version__}, clock)


def time_asset(asset: "CoreAIAsset", record: dict[str, Any], inputs: Arrays, reference: Arrays,
               verdicts: dict[str, dict[str, Any]], folder: Path,
               clock: Callable[[], float] | None = None) -> dict[str, Any]:
    """`time_package` for a Core AI asset: every function and the app loop on each compute unit; Core AI's Python
    API has no compute plan (Instruments' Core AI instrument shows which units ran)."""
    def time_unit(unit: str, time_clock: Callable[[], float]) -> dict[str, Any]:
        timed = _time_unit(asset.functions(record, inputs), lambda name: asset.predict(unit, name), record, inputs,
                           reference, time_clock)
        return {**timed, "compute_plan": {}, "no_compute_plan": "Core AI's Python API has no compute plan (Instruments' "
                "Core AI instrument shows the units used)"}

    return _time_units(time_unit, asset.path, record, verdicts, folder, {"coreai-core": asset.version,
                                                                       "runtime": asset.runs_with()}, clock,
                       load=LOAD_COREAI)


def _time_units(time_unit: Callable[[str, Callable[[], float]], dict[str, Any]], package: Path, record: dict[str, Any],
                verdicts: dict[str, dict[str, Any]], folder: Path, tools: dict[str, str],
                clock: Callable[[], float] | None, load: str = LOAD) -> dict[str, Any]:
    """Each judged unit timed by `time_unit`, then latency.json and latency.md written and the table printed."""
    import subprocess
    import time

    clock = clock or time.perf_counter
    print()
    print(f"timing {package.name}: every function and the app loop on each compute unit, {ITERATIONS} timed calls "
          f"after the first and {WARMUP} untimed")
    raw = {}
    for unit, verdict in verdicts.items():
        check = "PASS" if verdict["passed"] else "FAIL"
        try:
            raw[unit] = {"check": check, **time_unit(unit, clock)}
        except Exception as error:  # the runtime refusing a unit is reported in the record, beside the others
            raw[unit] = {"check": check, "error": f"{type(error).__name__}: {error}".splitlines()[0]}
            print(f"  not timed on {unit}: {raw[unit]['error']}")
    try:
        chip = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                              text=True).stdout.strip()
    except OSError:
        chip = ""
    about = {"package": package.name, "flavour": record["flavour"], "float_type": record["float_type"],
             "batch": record["batch"], "policy": record["policy"], "budget": record["budget"], "hrmc": record["hrmc"],
             "measured_on": {"chip": chip or platform.machine(), "macos": platform.mac_ver()[0],
                             "machine": platform.machine(), **tools, "python": platform.python_version()},
             "load": load}
    latency = latency_record(about, raw)
    table = latency_markdown(latency)
    (folder / LATENCY).write_text(json.dumps(latency, indent=1))
    (folder / LATENCY_TABLE).write_text(table)
    print(table, end="")
    print(f"wrote {folder / LATENCY} and {folder / LATENCY_TABLE}")
    return latency


def _coreai():
    """Apple's Core AI runtime (coreai-core): on macOS 27 the system's, elsewhere its reference interpreter."""
    try:
        import coreai.authoring
        import coreai.runtime
        from importlib.metadata import version
    except ImportError:
        raise Refused("needs coreai-core: pip install coreai-core numpy") from None
    return coreai, version("coreai-core")


class CoreAIAsset:
    """An .aimodel's functions in the Core AI runtime, one executable per compute unit, on an event loop of its own
    (the runtime is asynchronous). A function with state (step, chunkK) takes the carry in the feed as its state and
    gives the carry after the call back as NAME_next, as a Core ML package's step function does."""

    def __init__(self, coreai, version: str, path: Path) -> None:
        import asyncio

        self.coreai, self.version, self.path = coreai, version, path
        self.loop, self.opened = asyncio.new_event_loop(), {}

    def units(self, asked: list[str]) -> list[str]:
        """The units asked on macOS; elsewhere the one there is, the reference interpreter."""
        return asked if platform.system() == "Darwin" else [INTERPRETER]

    def runs_with(self) -> str:
        if platform.system() == "Darwin":
            return f"the Core AI runtime on this Mac (macOS {platform.mac_ver()[0]}, {platform.machine()})"
        return f"coreai-core's reference interpreter ({platform.system()}: no compute units)"

    def options(self, unit: str):
        """Core AI's specialization options for a compute unit: CPU only, the default (every unit), or the Neural
        Engine or GPU preferred (Core AI falls back from it where an op cannot run there)."""
        options, kinds = self.coreai.runtime.SpecializationOptions, getattr(self.coreai.runtime, "ComputeUnitKind", None)
        if unit == INTERPRETER:
            return None
        if unit == "CPU_ONLY":
            return options.cpu_only()
        if unit == "ALL":
            return options.default()
        return options.from_preferred_compute_unit_kind(kinds.neural_engine() if unit == "CPU_AND_NE" else kinds.gpu())

    def executable(self, unit: str):
        if unit not in self.opened:
            opening = self.coreai.authoring.AIModelAsset.load(self.path).executable(self.options(unit))
            self.opened[unit] = (opening, self.loop.run_until_complete(opening.__aenter__()))
        return self.opened[unit][1]

    @staticmethod
    def functions(record: dict[str, Any], inputs: Arrays) -> dict[str, tuple[str, list[str]]]:
        """{function: (its role, what it reads)} of the functions record.json names: the inputs, and the carry as
        state for step and chunk (read from the record, so that a function's first load is the one timed)."""
        return {name: (role, list(inputs) + (list(CARRY) if role in ("step", "chunk") else []))
                for role, name in record["functions"].items()}

    def predict(self, unit: str, name: str) -> Predict:
        """Function `name` loaded on `unit`, called with numpy arrays."""
        function = self.executable(unit).load_function(name)
        inputs, state = list(function.desc.input_names), list(function.desc.state_names)
        array = self.coreai.runtime.NDArray

        def call(feed: Arrays) -> Arrays:
            carry = {n: array(np.ascontiguousarray(np.asarray(feed[n], bool) if n == "halted" else feed[n]))
                     for n in state}
            given = {n: array(np.ascontiguousarray(feed[n])) for n in inputs}
            results = self.loop.run_until_complete(function(given, state=carry))
            return ({n: np.array(results[n].numpy()) for n in function.desc.output_names}
                    | {f"{n}_next": np.array(value.numpy()) for n, value in carry.items()})
        return call

    def close(self) -> None:
        for opening, _ in self.opened.values():
            self.loop.run_until_complete(opening.__aexit__(None, None, None))
        self.loop.close()


def _coremltools():
    """coremltools on macOS 15 or later: what runs a multifunction package's functions by name."""
    if platform.system() != "Darwin":
        raise Refused(f"needs macOS, to run Core ML predict (this is {platform.system()}); hrmc's MIL replay "
                      f"judged the package on Linux: its verdict is in {LINUX}")
    release = platform.mac_ver()[0]
    if int(release.split(".")[0] or 0) < 15:
        raise Refused(f"needs macOS 15 or later for a multifunction package (this is macOS {release})")
    try:
        import coremltools
    except ImportError:
        raise Refused("needs coremltools: pip install coremltools numpy") from None
    if int(coremltools.__version__.split(".")[0]) < 8:
        raise Refused(f"needs coremltools 8 or later (function_name), found {coremltools.__version__}: "
                      "pip install -U coremltools")
    return coremltools


def _predict(ct, package: Path, unit: str, function: str) -> Predict:
    """One function of the package, loaded by Core ML for one compute unit."""
    return ct.models.MLModel(str(package), compute_units=getattr(ct.ComputeUnit, unit), function_name=function).predict


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(prog="check.py", description="Run the Core ML package (or Core AI asset) with "
                                     "Apple's runtime on each compute unit and judge it as hrmc's Linux gate does.")
    parser.add_argument("package", nargs="?", help="the .mlpackage or .aimodel (default: the one beside this folder)")
    parser.add_argument("--units", default=",".join(UNITS), help=f"compute units, comma-separated ({', '.join(UNITS)})")
    args = parser.parse_args(argv)
    try:
        if np is None:
            raise Refused("needs numpy: pip install coremltools numpy")
        record = json.loads((here / RECORD).read_text())
        package = Path(args.package) if args.package else here.parent / record["package"]
        units = parse_units(args.units)
        verify_package(package, record["files"], record["flavour"])
        runtime = _coreai() if record["flavour"] == COREAI else _coremltools()
    except Refused as why:
        print(f"check.py: {why}", file=sys.stderr)
        return 2
    inputs, reference = load_arrays(here / INPUTS), load_arrays(here / REFERENCE)
    linux = json.loads((here / LINUX).read_text())
    linux_name = "Linux replay" if "coremltools" in linux else "Linux"
    linux_said = f"{linux_name} said: {'PASS' if linux['verdict']['passed'] else 'FAIL'}"
    print(f"{package.name}: {record['flavour']} package ({record['float_type']}, batch {record['batch']}, policy "
          f"{record['policy']}, budget {record['budget']}), seeded inputs (seed {record['seed']}); every file "
          "matches the record")
    with package_copy(package) as copy:
        if record["flavour"] == COREAI:
            asset = CoreAIAsset(*runtime, copy)
            units, runs_with, predict = asset.units(units), asset.runs_with(), asset.predict
        else:
            ct = runtime
            runs_with = (f"Core ML predict on this Mac (macOS {platform.mac_ver()[0]}, {platform.machine()}, "
                         f"coremltools {ct.__version__})")
            predict = functools.partial(_predict, ct, copy)
        print(f"runs with: {runs_with}; the reference is torch float32 (hrm_ref), saved by hrmc {record['hrmc']}")
        print(f"{linux_said}; it computed {linux['runs_with']}"
              + (f", with coremltools {linux['coremltools']}" if "coremltools" in linux else ""))
        verdicts = {}
        for unit in units:
            step, inference = (predict(unit, record["functions"][role]) for role in ("step", "inference"))
            verdicts[unit] = judge(record, reference, run_functions(step, inference, record, inputs, reference))
            print()
            print("\n".join(format_verdict(f"{unit}: {runs_with.split(' (')[0]}, the step function teacher-forced "
                                           f"over {len(reference['carry.steps'])} steps and chained, the inference "
                                           "function once", verdicts[unit], linux["verdict"], linux_name)))
        print()
        for unit, verdict in verdicts.items():
            print(f"{unit:<12}{'PASS' if verdict['passed'] else 'FAIL'}")
        passed = all(verdict["passed"] for verdict in verdicts.values())
        print(f"overall: {'PASS' if passed else 'FAIL'} ({runs_with.split(' (')[0]}; {linux_said})")
        if record["flavour"] == COREAI:
            asset.close()
            timed = CoreAIAsset(*runtime, copy)  # opened afresh: each unit's first load is timed
            time_asset(timed, record, inputs, reference, verdicts, here)
            timed.close()
    if record["flavour"] != COREAI:
        time_package(ct, package, record, inputs, reference, verdicts, here)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
