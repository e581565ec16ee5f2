"""The eager ACT driver: `step` (one teacher-forcible ACT step) and `run` (a whole inference).

Halting policies:
- `max-steps`: upstream's evaluation rule, every sample runs exactly `budget` steps.
- `q-halt`: a sample halts once q_halt > q_continue, or at the budget. A halted sample's carry
  and outputs stay frozen while the others go on.

`step` is the unit every parity check compares: the carry goes in and out explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from hrm_ref.model import HRM
from hrmc.errors import InputError

POLICIES = ("max-steps", "q-halt")
STEP_OUTPUTS = ("logits", "q_halt_logits", "q_continue_logits")


@dataclass
class Batch:
    inputs: torch.Tensor  # [batch, seq] token ids
    puzzle_identifiers: torch.Tensor  # [batch] puzzle ids


@dataclass
class Carry:
    z_H: torch.Tensor  # [batch, puzzle_emb_len + seq, hidden]
    z_L: torch.Tensor
    steps: torch.Tensor  # [batch] int32, ACT steps taken
    halted: torch.Tensor  # [batch] bool


def check_policy(policy: str, budget: int) -> None:
    if policy not in POLICIES:
        raise InputError(f"unknown halting policy {policy!r}: choose one of {', '.join(POLICIES)}")
    if budget < 1:
        raise InputError(f"--budget must be at least 1, got {budget}")


def initial_carry(model: HRM, batch: Batch) -> Carry:
    size = batch.inputs.shape[0]
    z_H, z_L = model.inner.initial_state(size, model.config.puzzle_emb_len + batch.inputs.shape[1])
    return Carry(z_H, z_L, torch.zeros(size, dtype=torch.int32), torch.zeros(size, dtype=torch.bool))


def _rows(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A [batch] mask shaped to broadcast over `like` [batch, ...]."""
    return mask.view((-1,) + (1,) * (like.ndim - 1))


def freeze(halted: torch.Tensor, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Rows already halted keep `old`; the others take `new`."""
    return torch.where(_rows(halted, new), old, new)


@torch.no_grad()
def step(model: HRM, carry: Carry, batch: Batch, policy: str, budget: int) -> tuple[Carry, dict[str, torch.Tensor]]:
    """One ACT step. Outputs are those computed from `carry` for every row (halted rows included)."""
    z_H, z_L, logits, q_halt, q_continue = model.inner(carry.z_H, carry.z_L, batch.inputs, batch.puzzle_identifiers)
    active = ~carry.halted
    steps = carry.steps + active.to(torch.int32)
    halt_now = steps >= budget
    if policy == "q-halt":
        halt_now = halt_now | (q_halt > q_continue)
    new_carry = Carry(freeze(carry.halted, carry.z_H, z_H), freeze(carry.halted, carry.z_L, z_L),
                      steps, carry.halted | halt_now)
    return new_carry, {"logits": logits, "q_halt_logits": q_halt, "q_continue_logits": q_continue}


@torch.no_grad()
def run(model: HRM, batch: Batch, policy: str = "max-steps", budget: int | None = None,
        on_step: Callable[[int, Carry], None] | None = None) -> dict[str, torch.Tensor]:
    """Run ACT steps until every sample has halted.

    Returns per-step arrays stacked on a leading step axis S (steps actually run):
    logits [S, B, L, V], q_halt_logits / q_continue_logits [S, B], halted / steps [S, B] after each
    step, and the carry after each step (z_H, z_L [S, B, P+L, H]). Halted rows repeat their last values.
    """
    budget = model.config.halt_max_steps if budget is None else budget
    check_policy(policy, budget)
    carry = initial_carry(model, batch)
    history: dict[str, list[torch.Tensor]] = {}
    previous: dict[str, torch.Tensor] = {}
    while not bool(carry.halted.all()):
        was_halted = carry.halted
        carry, outputs = step(model, carry, batch, policy, budget)
        frozen = {name: freeze(was_halted, previous[name], value) if previous else value
                  for name, value in outputs.items()}
        previous = frozen
        record = {**frozen, "z_H": carry.z_H, "z_L": carry.z_L, "halted": carry.halted, "steps": carry.steps}
        for name, value in record.items():
            history.setdefault(name, []).append(value)
        if on_step is not None:
            on_step(len(history["steps"]), carry)
    return {name: torch.stack(values) for name, values in history.items()}
