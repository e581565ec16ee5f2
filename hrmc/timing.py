"""Wall time by phase, for `parity --profile` and the gate's JSON report.

    with recording() as phases:        # the command's whole run
        with phase("prepare B"):       # anywhere below, in any layer
            with phase("export"): ...  # nested: recorded as "prepare B / export"

Outside a recording `phase` costs nothing and records nothing. A phase entered again adds to its total.
"""

from __future__ import annotations

import contextlib
import time
from contextvars import ContextVar
from typing import Iterator

_recording: ContextVar[dict[str, float] | None] = ContextVar("hrmc_phases", default=None)
_enclosing: ContextVar[tuple[str, ...]] = ContextVar("hrmc_enclosing_phases", default=())


@contextlib.contextmanager
def recording() -> Iterator[dict[str, float]]:
    """Seconds of each phase entered inside the block, by name, in the order first entered."""
    phases: dict[str, float] = {}
    token = _recording.set(phases)
    try:
        yield phases
    finally:
        _recording.reset(token)


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    phases = _recording.get()
    if phases is None:
        yield
        return
    path = _enclosing.get() + (name,)
    key = " / ".join(path)
    phases.setdefault(key, 0.0)
    token, start = _enclosing.set(path), time.perf_counter()
    try:
        yield
    finally:
        phases[key] += time.perf_counter() - start
        _enclosing.reset(token)


def format_phases(phases: dict[str, float], total: float) -> list[str]:
    """One line per phase, nested phases indented under theirs, and the total."""
    rows = [("  " * key.count(" / ") + key.rsplit(" / ", 1)[-1], seconds) for key, seconds in phases.items()]
    width = max((len(label) for label, _ in rows), default=0) + 2
    return [f"time by phase (wall, {total:.1f} s in all):"] + [f"  {label:<{width}}{seconds:>8.1f} s" for label, seconds in rows]
