"""On-Mac check of one Core ML package: `hrmc lower --mac-check` copies this file to NAME.check/check.py.

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
- the `inference` function (the whole static inference), once: its final answers and halting steps
  against the package's own step function chained from the initial carry (as on Linux, where the two
  are bit-identical), under the same rule; there the band is 4 x (float16) or 10 x (float32) what
  torch float16 (float16) or float64 (float32) change in the reference's whole run;
- reported, not gated (as on Linux): the inference function's final answers and halting steps against
  the reference's whole run. On random weights the recurrence is chaotic (hrmc docs/design.md §4): a
  correct float16 package's whole run parts from torch's at close calls.

It first checks the package's files against the sha256 record saved with it, so it judges exactly
the package it was written for, and loads a copy (opening a package in Core ML may rewrite its
manifest). Stand-alone: the standard library, numpy and coremltools 8 or later; macOS 15 or later
for a multifunction package.

    python3 NAME.check/check.py [PACKAGE] [--units CPU_ONLY,ALL]

Exit 0: every compute unit passes; 1: one fails; 2: not macOS, or not the package (or the files)
this check was written for.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

try:
    import numpy as np
except ImportError:  # told in one line by main
    np = None

RECORD, INPUTS, REFERENCE, LINUX = "record.json", "inputs.npz", "reference.npz", "linux.json"
APPLE_PSNR_DB = 60.0  # Apple's float16 bar (ml-ane-transformers): reported, not gated
UNITS = ("CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL")
PARTS = "Data/com.hrmc/parts.json"  # the package's own record of its files: not one of them
CARRY = ("z_H", "z_L", "steps", "halted")

Arrays = dict[str, "np.ndarray"]
Predict = Callable[[Arrays], Arrays]


class Refused(Exception):
    """A reason to judge nothing (exit 2): not a Mac, or not the package this check was written for."""


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


def verify_package(package: Path, recorded: dict[str, str]) -> None:
    """The package's files must be exactly those recorded when this check was written."""
    if not (package / "Manifest.json").is_file():
        raise Refused(f"{package}: not an .mlpackage (no Manifest.json)")
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


def run_functions(step: Predict, inference: Predict, record: dict[str, Any], inputs: Arrays,
                  reference: Arrays) -> dict[str, Any]:
    """What `judge` reads: the step function from every carry of the reference trajectory (teacher-forced)
    and chained from the initial carry, and the inference function once."""
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
    decisions per step; the inference function's final answers and halting steps against the step function
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


def format_verdict(title: str, verdict: dict[str, Any], linux: dict[str, Any] | None = None) -> list[str]:
    """A table of one run's figures, with the Linux replay's beside them, and its PASS or FAIL."""
    linux = linux or {}
    theirs = {row["output"]: row for row in linux.get("outputs", [])}
    ratios = any(row.get("ratio") is not None for row in verdict["outputs"])
    lines = [title, f"  {'output':<20}{'gate':<28}{'worst PSNR':>21}{'worst max|a-b|':>24}"
                    + (f"{'worst ratio':>20}{'>=60 dB':>8}" if ratios else "")
                    + f"  {'Linux replay: PSNR, max|a-b|' + (', ratio' if ratios else ''):<40}ok"]
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
            line += f" (Linux replay: {other['mismatched']} and {other['ambiguous']})"
        lines.append(line)
    for what, counts in verdict["reference_run"].items():
        line = f"  reported, not gated: the inference function's {what} agree with the reference's whole run on " + (
            _agreement(counts))
        if what in linux.get("reference_run", {}):
            line += f" (Linux replay: {_agreement(linux['reference_run'][what])})"
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
    parser = argparse.ArgumentParser(prog="check.py", description="Run the Core ML package with Core ML predict "
                                     "on each compute unit and judge it as hrmc's Linux gate does.")
    parser.add_argument("package", nargs="?", help="the .mlpackage (default: the one beside this folder)")
    parser.add_argument("--units", default=",".join(UNITS), help=f"compute units, comma-separated ({', '.join(UNITS)})")
    args = parser.parse_args(argv)
    try:
        if np is None:
            raise Refused("needs numpy: pip install coremltools numpy")
        record = json.loads((here / RECORD).read_text())
        package = Path(args.package) if args.package else here.parent / record["package"]
        units = parse_units(args.units)
        verify_package(package, record["files"])
        ct = _coremltools()
    except Refused as why:
        print(f"check.py: {why}", file=sys.stderr)
        return 2
    inputs, reference = load_arrays(here / INPUTS), load_arrays(here / REFERENCE)
    linux = json.loads((here / LINUX).read_text())
    print(f"{package.name}: {record['flavour']} package ({record['float_type']}, batch {record['batch']}, policy "
          f"{record['policy']}, budget {record['budget']}), seeded inputs (seed {record['seed']}); every file "
          "matches the record")
    print(f"runs with: Core ML predict on this Mac (macOS {platform.mac_ver()[0]}, {platform.machine()}, "
          f"coremltools {ct.__version__}); the reference is torch float32 (hrm_ref), saved by hrmc {record['hrmc']}")
    print(f"Linux replay said: {'PASS' if linux['verdict']['passed'] else 'FAIL'}; it computed "
          f"{linux['runs_with']}, with coremltools {linux['coremltools']}")
    verdicts = {}
    with tempfile.TemporaryDirectory(prefix="hrmc-check-") as scratch:
        copy = Path(scratch) / package.name  # Core ML may rewrite the manifest of a package it opens
        shutil.copytree(package, copy)
        for unit in units:
            step, inference = (_predict(ct, copy, unit, record["functions"][role]) for role in ("step", "inference"))
            verdicts[unit] = judge(record, reference, run_functions(step, inference, record, inputs, reference))
            print()
            print("\n".join(format_verdict(f"{unit}: Core ML predict, the step function teacher-forced over "
                                           f"{len(reference['carry.steps'])} steps and chained, the inference "
                                           "function once", verdicts[unit], linux["verdict"])))
    print()
    for unit, verdict in verdicts.items():
        print(f"{unit:<12}{'PASS' if verdict['passed'] else 'FAIL'}")
    passed = all(verdict["passed"] for verdict in verdicts.values())
    print(f"overall: {'PASS' if passed else 'FAIL'} (Core ML predict on this Mac; Linux replay said "
          f"{'PASS' if linux['verdict']['passed'] else 'FAIL'})")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
