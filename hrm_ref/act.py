"""The eager ACT driver: `step` (one teacher-forcible ACT step) and `run` (a whole inference).

Halting policies:
- `max-steps`: upstream's evaluation rule, every sample runs exactly `budget` steps.
- `q-halt`: a sample halts once its q head says so, or at the budget: q_halt > q_continue, or
  q_halt > 0 for TRM with `no_ACT_continue` (docs/design.md §2). A halted sample's carry and
  outputs stay frozen while the others go on.

`step` is the unit every parity check compares: the carry goes in and out explicitly.
A model without ACT (fixed N×T mode, the denoiser) runs exactly one step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from hrmc.hrm_ref.config import MAX_BUDGET, HRMConfig
from hrmc.hrm_ref.model import HRM, Batch
from hrmc.errors import CheckpointError, InputError

POLICIES = ("max-steps", "q-halt")


@dataclass
class Carry:
    z_H: torch.Tensor  # [batch, puzzle_emb_len + seq, hidden]
    z_L: torch.Tensor
    steps: torch.Tensor  # [batch] int32, ACT steps taken
    halted: torch.Tensor  # [batch] bool


def resolve_budget(model: HRM, policy: str, budget: int | None) -> int:
    """The ACT step budget for `policy`: --budget, else halt_max_steps (a controller: eval_segments);
    1 for a model without ACT, except a controller, which still runs its segments."""
    if policy not in POLICIES:
        raise InputError(f"unknown halting policy {policy!r}: choose one of {', '.join(POLICIES)}")
    if not model.config.act and policy == "q-halt":
        raise InputError("this model has no ACT q head: it cannot halt with --policy q-halt")
    if not model.config.act and model.config.input_mode != "hidden":  # a controller without ACT runs its segments
        if (budget or 1) != 1:
            raise InputError("this model has no ACT (fixed N×T mode): it runs one step, without --budget")
        return 1
    budget = model.config.halt_max_steps if budget is None else budget
    if not 1 <= budget <= MAX_BUDGET:
        raise InputError(f"--budget must be in [1, {MAX_BUDGET}], got {budget}")
    return budget


def batch_size(batch: Batch) -> int:
    return next(iter(batch.values())).shape[0]


def initial_carry(model: HRM, batch: Batch) -> Carry:
    size = batch_size(batch)
    z_H, z_L = model.inner.initial_state(size, model.inner.positions(batch))
    return Carry(z_H, z_L, torch.zeros(size, dtype=torch.int32, device=z_H.device),
                 torch.zeros(size, dtype=torch.bool, device=z_H.device))


def _rows(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A [batch] mask shaped to broadcast over `like` [batch, ...]."""
    return mask.view((-1,) + (1,) * (like.ndim - 1))


def freeze(halted: torch.Tensor, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Rows already halted keep `old`; the others take `new`."""
    return torch.where(_rows(halted, new), old, new)


def halt_margin(config: HRMConfig, q_halt, q_continue):
    """How far a sample is from its halting decision, positive to halt (tensors or arrays alike):
    q_halt − q_continue, or q_halt alone for TRM without ACT continue (docs/design.md §2)."""
    return q_halt if config.no_ACT_continue else q_halt - q_continue


def q_says_halt(model: HRM, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Upstream's halting signal per sample."""
    return halt_margin(model.config, outputs["q_halt_logits"], outputs["q_continue_logits"]) > 0


def step(model: HRM, carry: Carry, batch: Batch, policy: str, budget: int) -> tuple[Carry, dict[str, torch.Tensor]]:
    """One ACT step. Outputs are those computed from `carry` for every row (halted rows included).

    Not wrapped in no_grad (callers are): a grad-mode switch inside an exported loop body breaks
    torch.export.
    """
    z_H, z_L, outputs = model.inner(carry.z_H, carry.z_L, batch)
    active = ~carry.halted
    steps = carry.steps + active.to(torch.int32)
    halt_now = steps >= budget
    if policy == "q-halt":
        halt_now = halt_now | q_says_halt(model, outputs)
    new_carry = Carry(freeze(carry.halted, carry.z_H, z_H), freeze(carry.halted, carry.z_L, z_L),
                      steps, carry.halted | halt_now)
    return new_carry, outputs


@torch.no_grad()
def run(model: HRM, batch: Batch, policy: str = "max-steps", budget: int | None = None,
        on_step: Callable[[int, Carry], None] | None = None) -> dict[str, torch.Tensor]:
    """Run ACT steps until every sample has halted.

    Returns per-step arrays stacked on a leading step axis S (steps actually run): every head's
    output (logits [S, B, L, V], q_halt_logits / q_continue_logits [S, B], …), halted / steps [S, B]
    after each step, and the carry after each step (z_H, z_L [S, B, P+L, H]). Halted rows repeat
    their last values.
    """
    budget = resolve_budget(model, policy, budget)
    carry = initial_carry(model, batch)
    history: dict[str, list[torch.Tensor]] = {}
    previous: dict[str, torch.Tensor] = {}
    while not bool(carry.halted.all()):
        was_halted = carry.halted
        carry, outputs = step(model, carry, batch, policy, budget)
        _check_finite(model, outputs, len(history.get("steps", [])) + 1)
        frozen = {name: freeze(was_halted, previous[name], value) if previous else value
                  for name, value in outputs.items()}
        previous = frozen
        record = {**frozen, "z_H": carry.z_H, "z_L": carry.z_L, "halted": carry.halted, "steps": carry.steps}
        for name, value in record.items():
            history.setdefault(name, []).append(value)
        if on_step is not None:
            on_step(len(history["steps"]), carry)
    return {name: torch.stack(values) for name, values in history.items()}


def _check_finite(model: HRM, outputs: dict[str, torch.Tensor], step_number: int) -> None:
    """Finite weights can still overflow float32 on the way (a corrupted byte makes a weight 1e38):
    name the output and the largest weight rather than return NaN as a result."""
    for name, value in outputs.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            largest, where = max((float(t.abs().max()), n) for n, t in model.state_dict().items()
                                 if t.is_floating_point() and t.numel())
            raise CheckpointError(f"the model's {name} is not finite at ACT step {step_number}: its weights overflow "
                                  f"{str(value.dtype).removeprefix('torch.')} (largest |weight| {largest:.3g}, in {where})")


@torch.no_grad()
def denoise(model: HRM, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
    """εθ(x_t, t, cond) of a denoiser model: one forward from the initial carry."""
    batch = {"x_t": x_t, "t": t} | ({} if cond is None else {"cond": cond})
    return step(model, initial_carry(model, batch), batch, "max-steps", 1)[1]["eps"]
