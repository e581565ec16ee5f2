"""The compression's question (docs/design.md §4): what an artifact's compressed weights cost the task.

A compressed artifact (int8, lut6, lut4: hrm_ref.compression) is judged on two questions apart. The
compiler's is the gate's step mode, against hrm_ref running on the weights exactly as the artifact stores
them (`prepared_pair`): anything beyond the compression is hrmc's fault. This one judges the compression
itself, on whole runs of the artifact, against hrm_ref running on the model's own (uncompressed) weights:

- labelled inputs: exact-solved puzzles (upstream's `exact`), gated: the artifact may solve at most
  `max_accuracy_drop` percentage points fewer than the uncompressed model (default 0, not one puzzle fewer);
  answers and halting steps agreed, reported;
- without labels: every final answer (argmax per position) and halting step must agree wherever the
  uncompressed model's margin clears the band (`gate.float16_margins`: BAND_FACTOR × what hrm_ref float16
  changes that margin, on the same whole runs); closer calls are counted as ambiguous;
- either way, the carry's cosine similarity to the float64 trajectory per step, reported: the artifact's step
  function chained from the initial carry, z_H and z_L per sample against hrm_ref float64's, the least over
  the samples, over the steps both ran.

A compressed recursive reasoner can keep its cells and lose whole puzzles (arXiv 2606.26488: under naive
INT4, cell accuracy holds while puzzle-exact accuracy collapses), so the gate counts whole puzzles.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hrmc.hrm_ref import HRM, Batch
from hrmc.hrm_ref.act import initial_carry
from hrmc.names import STATE_NAMES
from hrmc.parity.agreement import accuracy, answers
from hrmc.parity.executors import TorchExecutor
from hrmc.parity.gate import Decisions, Reference, chained_run, float16_margins
from hrmc.targets.executor import Arrays, Executor


def compression_cost(b: Executor, run_b: Arrays, model: HRM, batch: Batch, policy: str, budget: int,
                     labels: np.ndarray | None, max_accuracy_drop: float) -> dict[str, Any]:
    """B's whole run (`run_b`) and its chained steps against hrm_ref on `model`'s own weights: the compression's
    question, as the report's `compression` section (`passed` its verdict)."""
    original = Reference.prepared(model, policy, budget, batch)
    yardstick = TorchExecutor("float16")
    yardstick.prepare(model, policy, budget, batch)
    run32, run64, run16 = original.run32, original.run64, yardstick.run(batch)
    cost: dict[str, Any] = {"storage": b.compression(), "samples": int(run_b["steps"].shape[1]),
                            "against": "hrm_ref float32 on the model's own (uncompressed) weights"}
    cost["halting"] = _halting(run_b, run32, run64, run16, model).as_dict()
    cost["halting"]["agree"] = int((run_b["steps"][-1] == run32["steps"][-1]).sum())
    decided = answers(run32)
    if decided is not None:
        cost["answers"] = _answers(run_b, run32, run64, run16, model).as_dict()
        same = answers(run_b) == decided
        cost["answers"] |= {"samples_agree": int(same.all(axis=-1).sum()), "cells_agree": float(same.mean())}
    cost["cosine"] = _cosine(chained_run(b, initial_carry(model, batch), batch), run64)
    if labels is not None and decided is not None:
        cost["accuracy_uncompressed"], cost["accuracy_compressed"] = (accuracy(answers(run), labels)
                                                                      for run in (run32, run_b))
        drop = 100 * (cost["accuracy_uncompressed"]["exact"] - cost["accuracy_compressed"]["exact"])
        cost |= {"gated_on": "exact-solved puzzles", "exact_drop_pp": drop, "max_accuracy_drop_pp": max_accuracy_drop,
                 "passed": bool(drop <= max_accuracy_drop + 1e-9)}
    else:
        cost |= {"gated_on": "answers and halting outside the band",
                 "passed": not cost["halting"]["mismatched"] and not cost.get("answers", {}).get("mismatched")}
    return cost


def _halting(run_b: Arrays, run32: Arrays, run64: Arrays, run16: Arrays, model: HRM) -> Decisions:
    """Halting steps, B's against the uncompressed model's: a difference is ambiguous where that model's halting
    margin came within the band at some step both float16 and float64 ran."""
    differs = run_b["steps"][-1] != run32["steps"][-1]
    close = np.zeros(differs.shape, bool)
    for step in range(min(len(run64["steps"]), len(run16["steps"]))):
        margins = float16_margins(_at(run64, step), _at(run16, step), model.config)
        if "halting" in margins:
            margin, band = margins["halting"]
            close |= np.abs(margin) <= band
    decisions = Decisions()
    decisions.add(differs, close)
    return decisions


def _answers(run_b: Arrays, run32: Arrays, run64: Arrays, run16: Arrays, model: HRM) -> Decisions:
    """Final answers per position, B's against the uncompressed model's, ambiguous within the band."""
    lead, band = float16_margins(_at(run64, -1), _at(run16, -1), model.config)["answers"]
    decisions = Decisions()
    decisions.add(answers(run_b) != answers(run32), lead <= band, lead)
    return decisions


def _at(run: Arrays, step: int) -> Arrays:
    return {name: value[step] for name, value in run.items()}


def _cosine(chained: Arrays, run64: Arrays) -> dict[str, list[float]]:
    """Per step, the least cosine similarity over the samples of each state against the float64 trajectory's."""
    steps = min(len(chained["steps"]), len(run64["steps"]))
    similarity = {}
    for name in STATE_NAMES:
        ours = np.asarray(chained[name][:steps], np.float64).reshape(steps, chained[name].shape[1], -1)
        theirs = np.asarray(run64[name][:steps], np.float64).reshape(ours.shape)
        norms = np.linalg.norm(ours, axis=-1) * np.linalg.norm(theirs, axis=-1)
        cosine = (ours * theirs).sum(-1) / np.maximum(norms, np.finfo(np.float64).tiny)
        similarity[name] = [float(value) for value in cosine.min(axis=1)]
    return similarity


def format_compression(cost: dict[str, Any]) -> list[str]:
    """The report's lines for the compression's question."""
    if not cost:
        return []
    n = cost["samples"]
    lines = [f"— compression ({cost['storage']} weights) against {cost['against']}, whole runs:"]
    if "accuracy_compressed" in cost:
        before, after = cost["accuracy_uncompressed"], cost["accuracy_compressed"]
        lines.append(f"exact-solved {100 * after['exact']:.2f} % (uncompressed {100 * before['exact']:.2f} %), a drop of "
                     f"{cost['exact_drop_pp']:.2f} points against at most {cost['max_accuracy_drop_pp']:g} "
                     f"(--max-accuracy-drop); cells {100 * after['cells']:.2f} % (uncompressed "
                     f"{100 * before['cells']:.2f} %)")
    if "answers" in cost:
        found = cost["answers"]
        lines.append(f"answers agree on {found['samples_agree']} of {n} samples, {100 * found['cells_agree']:.2f} % of "
                     f"cells ({found['mismatched']} differ outside the band, {found['ambiguous']} within it)")
    halting = cost["halting"]
    lines.append(f"halting steps agree on {halting['agree']} of {n} ({halting['mismatched']} differ outside the band, "
                 f"{halting['ambiguous']} within it)")
    for name, values in cost["cosine"].items():
        lines.append(f"{name} cosine similarity to hrm_ref float64, least over samples, per step: "
                     + " ".join(f"{value:.6f}" for value in values))
    lines.append(f"compression gated on {cost['gated_on']}: {'pass' if cost['passed'] else 'FAIL'}")
    return lines


__all__ = ["compression_cost", "format_compression"]
