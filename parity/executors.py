"""The executors `hrmc parity` and `hrmc bench` name: the torch reference, and each target's.

The contract they implement is `targets.executor.Executor`, below the targets."""

from __future__ import annotations

import functools
from typing import Callable

import torch

from hrmc import hrm_ref
from hrmc.hrm_ref import HRM, Batch, Carry
from hrmc.hrm_ref.act import resolve_budget
from hrmc.errors import InputError
from hrmc import targets
from hrmc.targets.executor import Arrays, Executor, carry_arrays, to_numpy


class TorchExecutor(Executor):
    """hrm_ref in eager PyTorch: the reference. `dtype` float64 gives the noise-floor reference, float16 the
    float16 rule's yardstick (the model as PyTorch runs it in float16)."""

    name = "torch"

    def __init__(self, dtype: str = "float32") -> None:
        self.dtype = dtype
        self.precision = "float16" if dtype == "float16" else "float32"

    def prepare(self, model: HRM, policy: str, budget: int | None, batch: Batch) -> None:
        self.model = model.with_dtype(self.dtype)
        self.policy, self.budget = policy, resolve_budget(model, policy, budget)

    def step(self, carry: Carry, batch: Batch) -> Arrays:
        dtype = self.model.config.torch_dtype
        carry = Carry(carry.z_H.to(dtype), carry.z_L.to(dtype), carry.steps, carry.halted)
        with torch.no_grad():
            new_carry, outputs = hrm_ref.step(self.model, carry, batch, self.policy, self.budget)
        return to_numpy(outputs) | carry_arrays(new_carry)

    def run(self, batch: Batch) -> Arrays:
        return to_numpy(hrm_ref.run(self.model, batch, self.policy, self.budget))

    def describe(self) -> str:
        return f"torch (hrm_ref eager, {self.dtype}, CPU)"


def _torch(onnx_model=None, chunk=None, artifact=None) -> Executor:
    if artifact is not None:
        raise InputError("the torch executor runs hrm_ref itself: it has no artifact (--artifact names B's)")
    return TorchExecutor()


# the reference, then every target's executors (targets.TARGETS), each made by its Target
EXECUTORS: dict[str, Callable[..., Executor]] = {"torch": _torch} | {
    name: functools.partial(target.executor, name) for target in targets.TARGETS.values() for name in target.executors}


def make_executor(name: str, onnx_model: str | None = None, chunk: int | None = None,
                  artifact: str | None = None) -> Executor:
    """Executor `name`, running the shipped `artifact` when one is named, else graphs made afresh
    (from `onnx_model`, the structured export, when given); `chunk`: steps per call of a chunked one."""
    return EXECUTORS[name](onnx_model=onnx_model, chunk=chunk, artifact=artifact)
