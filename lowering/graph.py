"""hrm_ref rewritten with `while_loop`, so that torch.onnx's dynamo exporter keeps the loops.

A Python `for` is unrolled at trace time; `torch._higher_order_ops.while_loop` becomes an ONNX
`Loop`. The modules below reuse hrm_ref's layers and its `act.step` unchanged. Only the H/L
cycles (`LoopedInner.reason`) and the ACT step loop (`ACTGraph`) are written as loops.

    ACTGraph:  (*batch) → (*outputs [budget, B, …], halted [budget, B], steps [budget, B], steps_run)
               Loop(ACT, until every sample halted) ⊃ Loop(H_cycles) ⊃ Loop(L_cycles)

The one-step model (carry in, carry out) is not traced again: the ACT Loop's body is one step, and
`lowering/step.py` reads it out of the traced graph. So that it can, the body also carries each step's
outputs as the step returns them, before they are frozen (`ACT_CARRIED` and the three groups after it).
"""

from __future__ import annotations

import torch
from torch import nn
from torch._higher_order_ops import while_loop

from hrmc.hrm_ref import HRM, Carry
from hrmc.hrm_ref.act import freeze, initial_carry, step
from hrmc.hrm_ref.model import CosSin, HRMInner


def _counter() -> torch.Tensor:
    return torch.zeros((), dtype=torch.int64)


class LoopedInner(HRMInner):
    """HRMInner whose H/L cycles are loops with fixed trip counts instead of unrolled Python loops."""

    def reason(self, z_H: torch.Tensor, z_L: torch.Tensor, injection: torch.Tensor,
               cos_sin: CosSin) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.config

        # Named functions, not lambdas: the exporter fails on lambda loop conditions.
        def h_cycles_left(h: torch.Tensor, z_H: torch.Tensor, z_L: torch.Tensor) -> torch.Tensor:
            return h < config.H_cycles

        def h_cycle(h: torch.Tensor, z_H: torch.Tensor, z_L: torch.Tensor):
            def l_cycles_left(i: torch.Tensor, z_L: torch.Tensor) -> torch.Tensor:
                return i < config.L_cycles

            def l_cycle(i: torch.Tensor, z_L: torch.Tensor):
                return i + 1, self.L_level(z_L, z_H + injection, cos_sin)

            _, z_L = while_loop(l_cycles_left, l_cycle, (_counter(), z_L))
            return h + 1, self.h_step(z_H, z_L, cos_sin), z_L.clone()

        _, z_H, z_L = while_loop(h_cycles_left, h_cycle, (_counter(), z_H, z_L))
        return z_H, z_L


# The ACT Loop's carried values: these, then per output of the heads its frozen value, its [budget, …] buffer and
# its value as the step returned it (unfrozen: what the one-step model outputs).
ACT_CARRIED = ("counter", "z_H", "z_L", "steps", "halted", "halted_per_step", "steps_per_step")
OUTPUT_GROUPS = ("frozen", "buffer", "unfrozen")


def looped(model: HRM) -> HRM:
    """The same model and weights with looped cycles."""
    return model.twin(inner=LoopedInner)


class ACTGraph(nn.Module):
    """The whole inference: ACT steps until every sample halted (or the budget), outputs per step.

    Per-step outputs go into [budget, …] buffers; rows past `steps_run` stay zero. Boolean buffers
    are written with And/Or, because onnxruntime has no Where kernel for booleans.
    """

    def __init__(self, model: HRM, policy: str, budget: int, batch_names: list[str]) -> None:
        super().__init__()
        self.model = looped(model)
        self.policy, self.budget, self.batch_names = policy, budget, batch_names  # resolved by export_onnx

    def forward(self, *batch_tensors):
        batch = dict(zip(self.batch_names, batch_tensors))
        start = initial_carry(self.model, batch)
        # The heads read from the initial carry give the shapes of the per-step buffers.
        first = self.model.inner.heads(start.z_H, batch)
        names = list(first)
        last = [torch.zeros_like(v) for v in first.values()]
        buffers = [torch.zeros((self.budget, *v.shape), dtype=v.dtype) for v in first.values()]
        halted_per_step = torch.zeros((self.budget, start.halted.shape[0]), dtype=torch.bool)
        steps_per_step = torch.zeros((self.budget, start.steps.shape[0]), dtype=torch.int32)
        slots = torch.arange(self.budget)

        def act_step(s, z_H, z_L, steps, halted, halted_per_step, steps_per_step, *state):
            last, buffers = state[:len(names)], state[len(names):2 * len(names)]  # the unfrozen group is not read
            carry, outputs = step(self.model, Carry(z_H, z_L, steps, halted), batch, self.policy, self.budget)
            frozen = [freeze(halted, old, outputs[name]) for name, old in zip(names, last)]
            here = slots == s
            buffers = [torch.where(here.view((-1,) + (1,) * value.ndim), value.unsqueeze(0), buffer)
                       for value, buffer in zip(frozen, buffers)]
            halted_per_step = halted_per_step | (here.unsqueeze(1) & carry.halted.unsqueeze(0))
            steps_per_step = torch.where(here.unsqueeze(1), carry.steps.unsqueeze(0), steps_per_step)
            return (s + 1, carry.z_H, carry.z_L, carry.steps, carry.halted, halted_per_step, steps_per_step,
                    *frozen, *buffers, *(value.clone() for value in outputs.values()))  # a loop's outputs alias nothing

        def running(s, z_H, z_L, steps, halted, *rest):
            return (s < self.budget) & ~halted.all()

        final = while_loop(running, act_step, (_counter(), start.z_H.contiguous(), start.z_L.contiguous(),
                                                start.steps, start.halted, halted_per_step, steps_per_step,
                                                *last, *buffers, *(torch.zeros_like(v) for v in first.values())))
        steps_run, halted_per_step, steps_per_step = final[0], final[5], final[6]
        buffers = final[len(ACT_CARRIED) + len(names):len(ACT_CARRIED) + 2 * len(names)]
        return (*buffers, halted_per_step, steps_per_step, steps_run)
