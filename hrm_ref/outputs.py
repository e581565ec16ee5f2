"""`hrmc run`: the eager inference, as the arrays its output npz holds."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from hrmc.files import atomic_output, check_output
from hrmc.hrm_ref.act import Carry, denoise, run
from hrmc.hrm_ref.ddim import DDIMScheduler
from hrmc.hrm_ref.model import HRM, Batch
from hrmc.names import STATE_NAMES


def run_outputs(model: HRM, batch: Batch, policy: str, budget: int | None, seed: int = 0, ddim_steps: int = 10,
                on_step: Callable[[int, Carry], None] | None = None) -> dict[str, np.ndarray]:
    """Every head's output per step (float32), `halted` and `steps` per step, the inputs echoed and,
    for a denoiser, a DDIM `sample` of the inputs' shape drawn from `seed`."""
    trajectory = run(model, batch, policy, budget, on_step)
    arrays = {name: value.float().numpy() if value.is_floating_point() else value.numpy()
              for name, value in trajectory.items() if name not in STATE_NAMES}
    arrays |= {name: value.numpy() for name, value in batch.items()}
    if model.config.input_mode == "latent":
        sample = DDIMScheduler().sample(ddim_steps, tuple(batch["x_t"].shape),
                                        lambda x, t, cond: denoise(model, x, t, cond), batch.get("cond"), seed)
        arrays["sample"] = sample.numpy()
    return arrays


def save_outputs(arrays: dict[str, np.ndarray], path: str | Path) -> None:
    """The arrays as an npz at `path`, which appears whole or not at all."""
    with atomic_output(check_output(path, ".npz")) as temporary:
        with open(temporary, "wb") as handle:
            np.savez(handle, **arrays)
