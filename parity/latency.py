"""latency.json: the package's latency as check.py measured it on a Mac (`hrmc lower --mac-check`), read back.

check.py times the package on each compute unit after judging it: each function's load (compile) time, first
call and warm p50/p90, the app loop at batch 1 and at the package's batch, and where Core ML plans to run the ops
(MLComputePlan). It runs on a Mac with numpy and coremltools only, without hrmc, and the check folder holds it
alone, so the summaries it writes (`timing_summary`, `plan_summary`, `latency_record`, `latency_markdown`) live
in mac_check/check.py, as the verdict's code does, and hrmc reads them from there. Here: a latency.json read back and
checked (`read_measured`), for `hrmc bench --estimate ane --measured`. Nothing here measures: on Linux no Core
ML runs (check.py exits 2 there, saying it needs macOS).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hrmc.errors import InputError
from hrmc.parity.mac_check.check import (LATENCY, LATENCY_FORMAT, PLACES, latency_markdown, latency_record, plan_summary,
                                timing_summary)

TIMING = {"p50_ms": float, "p90_ms": float, "n": int}
FUNCTION = {"role": str, "load_s": float, "first_call_ms": float, **TIMING}
LOOP = {"batch": int, "loop": str, "calls": int, "steps": int, **TIMING}
TOP = {"kind": str, "format": int, "package": str, "flavour": str, "batch": int, "budget": int,
       "measured_on": dict, "warmup": int, "iterations": int, "units": dict}
ON = {"chip": str, "macos": str, "coremltools": str}


def read_measured(path: str | Path) -> dict[str, Any]:
    """A latency.json check.py wrote, its every field that hrmc reads checked; a bad one is an InputError naming
    the file and the key."""
    path = Path(path)
    try:
        latency = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"--measured: {path}: no such file (check.py writes {LATENCY} on a Mac)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"--measured: {path}: unreadable ({error})") from None
    except ValueError as error:
        raise InputError(f"--measured: {path}: not JSON ({error})") from None
    _fields(latency, TOP, "", path)
    if latency["kind"] != "latency" or latency["format"] != LATENCY_FORMAT:
        raise InputError(f"--measured: {path}: kind/format: not a latency record of format {LATENCY_FORMAT} "
                         f"(check.py writes {LATENCY} on a Mac)")
    _fields(latency["measured_on"], ON, "measured_on.", path)
    if not latency["units"]:
        raise InputError(f"--measured: {path}: units: no compute unit timed")
    for unit, timed in latency["units"].items():
        where = f"units.{unit}."
        if isinstance(timed, dict) and isinstance(timed.get("error"), str):
            continue  # a unit Core ML could not time, said so
        _fields(timed, {"check": str, "functions": dict, "app_loop": list, "compute_plan": dict}, where, path)
        for name, row in timed["functions"].items():
            _fields(row, FUNCTION, f"{where}functions.{name}.", path)
        for index, loop in enumerate(timed["app_loop"]):
            _fields(loop, LOOP, f"{where}app_loop[{index}].", path)
        for name, plan in timed["compute_plan"].items():
            _fields(plan, {"ops": dict, "cost_share": dict}, f"{where}compute_plan.{name}.", path)
            _fields(plan["ops"], dict.fromkeys(PLACES, int), f"{where}compute_plan.{name}.ops.", path)
    return latency


def _fields(mapping: Any, expected: dict[str, type], where: str, path: Path) -> None:
    """Each key of `expected` in `mapping`, of its type (float: any finite number; int: not a bool)."""
    if not isinstance(mapping, dict):
        raise InputError(f"--measured: {path}: {where.rstrip('.') or '(top)'}: expected an object")
    for key, kind in expected.items():
        value = mapping.get(key)
        if kind is float:
            fits = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        else:
            fits = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not fits:
            what = {float: "a finite number", int: "an integer", str: "a string", dict: "an object",
                    list: "a list"}[kind]
            found = "missing" if key not in mapping else f"found {json.dumps(value)[:40]}"
            raise InputError(f"--measured: {path}: {where}{key}: expected {what}, {found}")


__all__ = ["LATENCY", "latency_markdown", "latency_record", "plan_summary", "read_measured", "timing_summary"]
