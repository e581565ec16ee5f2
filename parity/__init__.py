"""Parity suites: run two executors on the same inputs, report the drift, gate (docs/design.md §4).

Entry point: `check_parity(...) -> Report`; `format_report` renders it for people. `localize(...) ->
Localization` names where a failing step diverges (`parity --localize`). `mac_check` writes
the same judgement out for a Mac (`lower --mac-check`; its `check.py` is the stand-alone script it ships).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from hrmc.binding import file_sha256
from hrmc.errors import InputError
from hrmc.hrm_ref import HRM, Batch
from hrmc.hrm_ref.act import batch_size, resolve_budget
from hrmc.parity.agreement import format_agreement, task_agreement
from hrmc.parity.compression import compression_cost, format_compression
from hrmc.parity.localize import Localization, format_localization, localize
from hrmc.parity.executors import EXECUTORS
from hrmc.record import Checkpoint, Record
from hrmc.targets.executor import Arrays, Executor
from hrmc.timing import phase
from hrmc.parity.gate import (ATOL, FLOOR_FACTOR, PSNR_DB, RTOL, Reference, Report, Row, failure, prepared_pair,
                              step_parity, trajectory_parity, whole_graphs_parity)

MODES = ("step", "trajectory")


def artifact_options(record: Record, artifact: Path, given: dict[str, object]) -> dict[str, object]:
    """What a gate of a shipped artifact (`parity --artifact`) takes from its record: the model, the policy,
    budget, batch (a Core ML package's) and sequence length. `given` holds the options typed on the command
    line: one that contradicts the record is refused; the model given is checked against it later (its
    weights' sha256). The recorded checkpoint is looked for at its path from the artifact's folder and must
    have its sha256; else one line asks for --checkpoint."""
    options = {}
    for option, flag, recorded in (("policy", "--policy", record.policy), ("budget", "--budget", record.budget),
                                   ("batch_size", "--batch", record.batch), ("seq_len", "--seq-len", record.seq_len)):
        if recorded is None:
            continue
        if given.get(option) not in (None, recorded):
            raise InputError(f"{flag} {given[option]}: {artifact} was made with {flag.removeprefix('--')} {recorded} "
                             f"(parity reads it from the artifact: leave {flag} out)")
        options[option] = recorded
    origin = record.checkpoint
    if given.get("checkpoint") or given.get("preset") or origin == Checkpoint():  # none recorded: the default's
        return options
    if origin.preset is not None:
        return options | {"preset": origin.preset}
    found = origin.located(artifact.parent)
    if found is not None and origin.sha256 == file_sha256(found):
        return options | {"checkpoint": str(found)}
    where = f" at {artifact.parent / origin.path}" if origin.path else ""
    raise InputError(f"{artifact} was made from {origin.describe()}, not found{where}"
                     f"{' with that sha256' if found is not None else ''}: name it with --checkpoint")


def check_parity(a: str, b: str, model: HRM, batch: Batch, *, policy: str, budget: int | None, mode: str = "step",
                 **options) -> Report:
    """Run A and B on `batch` and gate them in one mode (`check_modes` takes the options)."""
    return check_modes(a, b, model, batch, policy=policy, budget=budget, modes=(mode,), **options)[0]


def check_modes(a: str, b: str, model: HRM, batch: Batch, *, policy: str, budget: int | None,
                modes: tuple[str, ...] = MODES, atol: float = ATOL, rtol: float = RTOL, psnr_db: float | None = None,
                seed: int = 0, model_name: str = "", onnx_model: str | None = None, chunk: int | None = None,
                artifact: str | None = None, labels: np.ndarray | None = None, max_accuracy_drop: float = 0.0,
                progress: Callable[[str], None] = lambda _: None, reference: Reference | None = None) -> list[Report]:
    """Run A and B on `batch` and gate them, one report per mode; the executors are prepared and run
    once for all modes. `artifact` is B's shipped artifact: exactly those files run. `psnr_db`: an absolute
    PSNR floor for float16 outputs beside the float16 rule (none by default).

    Step mode checks every graph each executor runs: the step graph teacher-forced against A, and
    the whole-inference graph against the executor's own steps chained.

    Where B stores its weights compressed (int8, lut6, lut4), A and the reference run hrm_ref on them as stored
    (the compiler's question), and every report adds what the compression costs against the model's own
    weights (parity.compression): exact-solved puzzles on labelled inputs, gated at `max_accuracy_drop`
    percentage points.

    `reference`: hrm_ref prepared once for several gates of `model` on `batch` (`Reference.prepared`).
    """
    budget = resolve_budget(model, policy, budget)
    executors, reference = prepared_pair(a, b, model, batch, policy, budget, onnx_model=onnx_model, chunk=chunk,
                                         artifact=artifact, progress=progress, reference=reference)
    progress("running the whole inference on both")
    runs = []
    for side, executor in zip("AB", executors):
        with phase(f"whole run {side} ({executor.name})"):  # A may be the reference itself: run once
            runs.append(reference.run32 if executor is reference.float32 else executor.run(batch))
    task = task_agreement(*runs, model.config, labels)
    cost = {}
    if executors[1].compression() is not None:
        progress(f"the compression's cost: {executors[1].name} against hrm_ref on the model's own weights")
        with phase("the compression's cost"):
            cost = compression_cost(executors[1], runs[1], model, batch, policy, budget, labels, max_accuracy_drop)
    reports = []
    for mode in modes:
        progress(f"comparing in {mode} mode")
        report = Report(mode, [e.describe() for e in executors], model_name, policy, budget, batch_size(batch), seed,
                        atol, rtol, psnr_db)
        report.task, report.compression = task, cost
        report.notes += [f"{executor.name}'s artifact: {executor.weights_checked}" for executor in executors
                         if executor.weights_checked]
        if mode == "trajectory":
            with phase("comparison (trajectory)"):
                reports.append(trajectory_parity(*runs, reference, report))
        else:
            reports.append(_step_mode(executors, runs, reference, batch, report, progress))
    return reports


def _step_mode(executors: list[Executor], runs: list[Arrays], reference: Reference, batch: Batch, report: Report,
               progress: Callable[[str], None]) -> Report:
    half = any(executor.precision == "float16" for executor in executors)
    with phase("the reference's steps from its carry (hrm_ref float64" + (", float16)" if half else ")")):
        reference.teacher_forced(batch, ("float64",) + (("float16",) if half else ()), progress)
    with phase("step graphs from the reference's carry (A, B)"):
        step_parity(*executors, reference, batch, report)
    with phase("whole graphs against their steps chained"):
        return whole_graphs_parity(executors, runs, reference, batch, report, progress)


def format_report(report: Report) -> str:
    lines = [f"UNRECORDED: {note}" for note in report.unrecorded]
    lines += [f"parity {report.mode} mode: A = {report.executors[0]}", f"{' ' * (len(report.mode) + 13)}B = {report.executors[1]}",
             f"model {report.model}, policy {report.policy}, budget {report.budget}, batch {report.batch}, "
             f"seed {report.seed}, tolerance |a−b| ≤ {report.atol:g} + {report.rtol:g}·|b|"]
    whole = {graph["check"]: graph for graph in report.whole_graphs}
    for check in dict.fromkeys([row.check for row in report.rows] + list(whole)):
        if check in whole:
            title, halting = f"{check}: {whole[check]['graph']} against {whole[check]['against']}", whole[check]["halting"]
        else:
            how = "step graphs from the reference's carry" if report.mode == "step" else "whole runs"
            title, halting = f"A vs B: {how}", report.halting
        rows = [row for row in report.rows if row.check == check]
        if any(row.ratio is not None for row in rows):
            lines += [f"— {title}; float16: {' and '.join(dict.fromkeys(row.side for row in rows))} against hrm_ref "
                      "float64, x16 = hrm_ref float16 from the same carry", *_float16_table(rows, report)]
        else:
            lines += [f"— {title}", f"{'output':<20}{'step':>5}{'max|a−b|':>12}{'max rel':>12}{'needed':>12}"
                                    f"{'limit':>12}{'floor':>12}  ok"]
            lines += [f"{row.output:<20}{row.step:>5}{row.max_abs:>12.3g}{row.max_rel:>12.3g}{row.needed:>12.3g}"
                      f"{row.limit:>12.3g}{_floor(row)}  {'✓' if row.passed else '✗'}" for row in rows]
        lines.append(_decisions("halting decisions", halting))
        if check == "A vs B" and report.answers:
            lines.append(_decisions("answers (argmax per position)", report.answers))
    lines += format_agreement(report.task)
    lines += format_compression(report.compression)
    lines += [f"note: {note}" for note in report.notes]
    if report.passed:
        lines.append("PASS")
    elif report.numbers_pass:
        lines.append("UNRECORDED: the numbers agree, but nothing shows these files are what hrmc wrote: not a pass")
    else:
        worst = {}
        for row in report.failures():
            worst.setdefault((row.check, row.output), row)
        detail = "; ".join(f"{_named(row.check)}{row.output} from step {row.step} ({failure(row, report.psnr_db)})"
                           for row in worst.values())
        if report.answers.get("mismatched"):
            detail += f"{'; ' if detail else ''}{report.answers['mismatched']} answers differ where the reference's margin is clear"
        if not report.compression.get("passed", True):
            detail += f"{'; ' if detail else ''}the compression: {_compression_failed(report.compression)}"
        lines.append(f"FAIL: {detail or 'halting decisions differ'}")
    return "\n".join(lines)


def _compression_failed(cost: dict) -> str:
    if "exact_drop_pp" in cost:
        return (f"{cost['exact_drop_pp']:.2f} points fewer puzzles solved exactly than uncompressed (at most "
                f"{cost['max_accuracy_drop_pp']:g}: --max-accuracy-drop)")
    return "answers or halting differ from the uncompressed model's outside the band"


def _named(check: str) -> str:
    return "" if check == "A vs B" else f"{check}: "


def _decisions(what: str, counts: dict) -> str:
    compared = f" of {counts['compared']:,}" if "compared" in counts else ""
    return (f"{what}: {counts.get('mismatched', 0)}{compared} mismatched, {counts.get('ambiguous', 0)} ambiguous "
            "(a close call of the reference: reported, not failed)")


def _floor(row: Row) -> str:
    return f"{row.floor:>12.3g}" if row.floor is not None else ""


FLOAT16_RULES = {"ratio": "≤ 2·x16", "rounding": "≤ 1 rounding", "abs": "|Δq| ≤ limit"}


def _float16_table(rows: list[Row], report: Report) -> list[str]:
    """float16 rows: the judged side's error against float64 beside hrm_ref float16's (x16), their ratio, the
    limit and the rule that set it, and whether Apple's 60 dB bar is met (for information)."""
    sides = len({row.side for row in rows}) > 1
    judged = "x" if sides else rows[0].side
    lines = [f"{'output':<20}{'step':>5}{f'max|{judged}−f64|':>12}{'RMSE':>11}{'limit':>11}{'ratio':>8}{'PSNR':>8}"
             f"{'x16 PSNR':>10}  {'rule':<14}{f'≥{PSNR_DB:g} dB':>8}  ok"]
    for row in rows:
        name = f"{row.side}: {row.output}" if sides else row.output
        error = "" if row.gated == "abs" else f"{row.needed:>11.3g}"
        lines.append(f"{name:<20}{row.step:>5}{row.max_abs:>12.3g}{error:>11}{row.limit:>11.3g}{row.ratio:>8.2f}"
                     f"{row.psnr:>8.1f}{row.float16_psnr:>10.1f}  {FLOAT16_RULES[row.gated]:<14}"
                     f"{'—' if row.gated == 'abs' else 'yes' if row.psnr >= PSNR_DB else 'no':>8}  "
                     f"{'✓' if row.passed else '✗'}")
    return lines




__all__ = ["EXECUTORS", "Localization", "MODES", "PSNR_DB", "Reference", "Report", "artifact_options", "check_modes",
           "check_parity",
           "format_localization", "format_report", "localize"]
