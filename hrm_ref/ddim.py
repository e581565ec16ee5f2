"""A deterministic DDIM scheduler (η = 0) for the HRM denoiser εθ(x_t, t, cond).

The noise schedule is computed once in float64 with numpy. Each update is a fixed sequence of
float32 tensor ops with Python-float coefficients, and the initial noise comes from a seeded
CPU `torch.Generator`. So the same seed gives bit-identical samples on the same executor, run
after run and process after process.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from hrmc.errors import ConfigError

SCHEDULES = ("linear", "cosine")
Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def _betas(schedule: str, timesteps: int) -> np.ndarray:
    if schedule == "linear":  # Ho et al.: 1e-4 → 0.02 over 1000 steps, scaled to other lengths
        scale = 1000 / timesteps
        return np.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=np.float64)
    # Nichol & Dhariwal's cosine schedule, s = 0.008, betas clipped at 0.999
    steps = np.arange(timesteps + 1, dtype=np.float64) / timesteps
    alpha_bar = np.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.minimum(1 - alpha_bar[1:] / alpha_bar[:-1], 0.999)


class DDIMScheduler:
    def __init__(self, train_timesteps: int = 1000, schedule: str = "linear") -> None:
        if schedule not in SCHEDULES:
            raise ConfigError(f"unknown beta schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")
        if train_timesteps < 1:
            raise ConfigError(f"train_timesteps must be at least 1, got {train_timesteps}")
        self.train_timesteps = train_timesteps
        self.schedule = schedule
        self.alphas_cumprod = np.cumprod(1 - _betas(schedule, train_timesteps))
        self.step_ratio = 1

    def set_steps(self, steps: int) -> list[int]:
        """Choose `steps` evenly spaced timesteps (largest first) for `step` and `sample`."""
        if not 1 <= steps <= self.train_timesteps:
            raise ConfigError(f"DDIM steps must be in [1, {self.train_timesteps}] (the training timesteps), got {steps}")
        self.step_ratio = self.train_timesteps // steps
        return [i * self.step_ratio for i in reversed(range(steps))]

    def _alpha_bar(self, t: int) -> float:
        return float(self.alphas_cumprod[t]) if t >= 0 else 1.0

    def step(self, x_t: torch.Tensor, eps: torch.Tensor, t: int) -> torch.Tensor:
        """x_{t-Δ} from x_t and the predicted noise (η = 0: no fresh noise)."""
        alpha_bar, alpha_bar_prev = self._alpha_bar(t), self._alpha_bar(t - self.step_ratio)
        x0 = (x_t - math.sqrt(1 - alpha_bar) * eps) / math.sqrt(alpha_bar)
        return math.sqrt(alpha_bar_prev) * x0 + math.sqrt(1 - alpha_bar_prev) * eps

    def sample(self, steps: int, shape: tuple[int, ...], denoiser: Denoiser, cond: torch.Tensor | None = None,
               seed: int = 0) -> torch.Tensor:
        """Start from seeded N(0, 1) noise of `shape` and run `steps` DDIM updates."""
        x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
        for t in self.set_steps(steps):
            eps = denoiser(x, torch.full((shape[0],), t, dtype=torch.int32), cond)
            x = self.step(x, eps.to(torch.float32), t)
        return x
