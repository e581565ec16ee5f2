"""The executor contract every backend implements: the classes `hrmc parity` and `hrmc bench` drive.

An executor runs one model on seeded inputs in its own way, with numpy arrays as the common
currency:
- `prepare(model, policy, budget, batch)`: build whatever it runs (an export, a session, a package).
- `step(carry, batch)`: one ACT step from the given carry. Returns every head output plus the
  next carry (`z_H`, `z_L`, `steps`, `halted`).
- `run(batch)`: the whole inference. Returns per-step outputs [S, B, …] plus `halted` and `steps`
  [S, B], with S the number of steps actually run.
- `trace_step(carry, batch)`: `step` with every intermediate value exposed, by the name it has in the
  ONNX step graph the executor's code was lowered from (`hrmc parity --localize`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hrmc.errors import InputError
from hrmc.hrm_ref import HRM, Batch, Carry

Arrays = dict[str, np.ndarray]
DEFAULT_CHUNK = 4  # steps per graph call of the chunked executors


def to_numpy(tensors: dict[str, torch.Tensor]) -> Arrays:
    return {name: value.detach().numpy() for name, value in tensors.items()}


def carry_arrays(carry: Carry) -> Arrays:
    return to_numpy({"z_H": carry.z_H, "z_L": carry.z_L, "steps": carry.steps, "halted": carry.halted})


@dataclass
class Trace:
    """One ACT step with its intermediate values: what `trace_step` returns."""

    graph: Path  # the ONNX step graph whose value names key `values`
    values: Arrays  # ONNX value name → what the executor computed for it (those it computes: not constants)
    how: str  # for reports: what ran, and how its values were read


class Executor:
    """Base class: subclasses set `name` and implement `prepare`, `step` and `run`."""

    name = ""
    precision = "float32"  # "float16" executors (the ANE) are gated on PSNR in step mode
    weights_checked: str | None = None  # a shipped artifact's stored weights against the model's, for reports
    policy: str  # set by prepare
    budget: int

    def prepare(self, model: HRM, policy: str, budget: int | None, batch: Batch) -> None:
        raise NotImplementedError

    def step(self, carry: Carry, batch: Batch) -> Arrays:
        raise NotImplementedError

    def run(self, batch: Batch) -> Arrays:
        raise NotImplementedError

    def trace_step(self, carry: Carry, batch: Batch) -> Trace:
        raise InputError(f"the {self.name} executor cannot expose its intermediate values")

    def describe(self) -> str:
        """One line for reports: what exactly ran."""
        return self.name

    def compression(self) -> str | None:
        """The compression its weights are stored in (int8, lut6, lut4: hrm_ref.compression; known once prepared),
        None where it holds the model's own values (or their float16 rounding)."""
        return None

    def whole_graph(self) -> str | None:
        """The whole-inference graph `run` executes, when it is not `step` chained (named for reports)."""
        return None

    def other_runs(self, batch: Batch) -> dict[str, Arrays]:
        """Whole runs of the other graphs it holds that `run` does not call, by the name reports give them."""
        return {}
