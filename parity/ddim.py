"""DDIM sampling through any executor: the denoiser is one step from the initial carry, as `hrm_ref.denoise`.

`sample(executor, model, …)` runs hrm_ref's scheduler with the executor's εθ, so two runs on one
executor must be bit-identical and two executors differ only by their step-parity drift.
"""

from __future__ import annotations

import numpy as np
import torch

from hrmc.hrm_ref import HRM
from hrmc.hrm_ref.act import initial_carry
from hrmc.hrm_ref.ddim import DDIMScheduler
from hrmc.targets.executor import Executor


def sample(executor: Executor, model: HRM, shape: tuple[int, ...], steps: int = 10, seed: int = 0,
           cond: torch.Tensor | None = None) -> np.ndarray:
    """A seeded DDIM sample of `shape`; `executor` must be prepared for `model` with a denoiser batch."""

    def denoise(x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        batch = {"x_t": x_t, "t": t} | ({} if cond is None else {"cond": cond})
        return torch.from_numpy(np.asarray(executor.step(initial_carry(model, batch), batch)["eps"]))

    return DDIMScheduler().sample(steps, shape, denoise, cond, seed).numpy()
