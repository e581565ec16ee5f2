"""Task agreement: what two whole runs answer, against each other and against labels.

The gate compares numbers; users ship answers. For models with token logits, the final answer of a
sample is the argmax per position of its last logits (halted samples keep theirs). Reported for
every executor pair, gated nowhere on its own: the step and float16 contracts are the gate.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hrmc.hrm_ref.act import halt_margin
from hrmc.hrm_ref.batch import IGNORE_LABEL_ID
from hrmc.hrm_ref.config import HRMConfig
from hrmc.targets.executor import Arrays


def answers(run: Arrays) -> np.ndarray | None:
    """The final answer per sample and position [B, L], or None for a model without token logits."""
    return None if "logits" not in run else np.asarray(run["logits"][-1]).argmax(-1)


def accuracy(predicted: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Upstream's evaluation (sapientinc/HRM models/losses.py), so the numbers compare with its runs: positions
    labelled IGNORE_LABEL_ID are not scored; `cells` is each sample's share of scored cells right, averaged over
    the samples with any; `exact` the share of those samples whose every scored cell is right."""
    scored = labels != IGNORE_LABEL_ID
    counts, right = scored.sum(-1), ((predicted == labels) & scored).sum(-1)
    samples = counts > 0
    n = max(int(samples.sum()), 1)
    return {"cells": float((right[samples] / counts[samples]).sum() / n),
            "exact": float((right == counts)[samples].sum() / n)}


def task_agreement(run_a: Arrays, run_b: Arrays, config: HRMConfig, labels: np.ndarray | None = None) -> dict[str, Any]:
    """Answers per cell and per sample, halting steps, the reference's (A's) smallest top-2 margin beside
    the largest final logit error, and each side's accuracy when `labels` are given."""
    report: dict[str, Any] = {"samples": int(run_a["steps"].shape[1])}
    halting_a, halting_b = run_a["steps"][-1], run_b["steps"][-1]
    report["halting_steps_agree"] = int((halting_a == halting_b).sum())
    if "q_halt_logits" in run_a and (halting_a != halting_b).any():  # how close the reference's calls were there
        margin = np.abs(halt_margin(config, np.asarray(run_a["q_halt_logits"], np.float64), run_a["q_continue_logits"]))
        report["halting_differs_reference_margins"] = [float(margin[:, i].min()) for i in np.flatnonzero(halting_a != halting_b)]
    answers_a, answers_b = answers(run_a), answers(run_b)
    if answers_a is None or answers_b is None:
        return report
    same = answers_a == answers_b
    top = np.sort(np.asarray(run_a["logits"][-1], np.float64), axis=-1)
    report |= {"cells_agree": float(same.mean()), "samples_agree": int(same.all(axis=-1).sum()),
               "smallest_reference_margin": float((top[..., -1] - top[..., -2]).min()),
               "largest_logit_error": float(np.abs(np.asarray(run_a["logits"][-1], np.float64)
                                                   - np.asarray(run_b["logits"][-1], np.float64)).max())}
    if labels is not None:
        report["accuracy_a"], report["accuracy_b"] = accuracy(answers_a, labels), accuracy(answers_b, labels)
    return report


def format_agreement(task: dict[str, Any]) -> list[str]:
    if not task:
        return []
    n = task["samples"]
    lines = [f"task agreement (whole runs, final answers): halting steps agree on {task['halting_steps_agree']} of {n}"]
    if "halting_differs_reference_margins" in task:
        lines[0] += (" (where they differ, the reference's smallest halting margin: "
                     + ", ".join(f"{m:.3g}" for m in task["halting_differs_reference_margins"][:8]) + ")")
    if "cells_agree" in task:
        lines[0] += (f"; answers agree on {task['samples_agree']} of {n} samples, {100 * task['cells_agree']:.2f} % of "
                     f"cells; smallest reference top-2 margin {task['smallest_reference_margin']:.3g}, largest final "
                     f"logit error {task['largest_logit_error']:.3g}")
    for side in ("a", "b"):
        if f"accuracy_{side}" in task:
            right = task[f"accuracy_{side}"]
            lines.append(f"accuracy against labels, {side.upper()}: {100 * right['exact']:.2f} % exact, "
                         f"{100 * right['cells']:.2f} % of cells")
    return lines
