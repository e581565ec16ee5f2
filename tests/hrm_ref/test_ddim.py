"""The DDIM scheduler (η = 0): exact inversion of the forward process, and bitwise repeatability."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from hrmc import hrm_ref
from hrmc.hrm_ref.act import denoise
from hrmc.hrm_ref.ddim import DDIMScheduler
from hrmc.errors import ConfigError


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_schedules_decay_monotonically(schedule: str) -> None:
    alphas = DDIMScheduler(1000, schedule).alphas_cumprod
    assert 0 < alphas[-1] < alphas[0] < 1 and (np.diff(alphas) < 0).all()


def test_step_with_the_true_noise_recovers_x0() -> None:
    scheduler = DDIMScheduler(100)
    scheduler.set_steps(1)  # one step: from t = 0 straight to the data
    x0, eps = torch.randn(2, 3, generator=torch.Generator().manual_seed(0)).double(), torch.ones(2, 3).double()
    alpha_bar = scheduler.alphas_cumprod[0]
    x_t = math.sqrt(alpha_bar) * x0 + math.sqrt(1 - alpha_bar) * eps
    assert torch.allclose(scheduler.step(x_t, eps, 0), x0, atol=1e-12)


def test_timesteps_are_evenly_spaced_largest_first() -> None:
    assert DDIMScheduler(1000).set_steps(4) == [750, 500, 250, 0]


@pytest.mark.parametrize("steps", [0, 1001])
def test_impossible_step_counts_are_named(steps: int) -> None:
    with pytest.raises(ConfigError, match=rf"DDIM steps must be in \[1, 1000\] \(the training timesteps\), got {steps}"):
        DDIMScheduler(1000).set_steps(steps)


def test_unknown_schedule_is_named() -> None:
    with pytest.raises(ConfigError, match="unknown beta schedule 'sqrt'"):
        DDIMScheduler(1000, "sqrt")


SAMPLE_SCRIPT = """
import sys
from hrmc import hrm_ref
from hrmc.hrm_ref.act import denoise
from hrmc.hrm_ref.ddim import DDIMScheduler
model = hrm_ref.build_preset("denoiser")
x = DDIMScheduler(1000, "cosine").sample(5, (2, 16, 64), lambda x, t, c: denoise(model, x, t, c), seed=11)
sys.stdout.buffer.write(x.numpy().tobytes())
"""


def test_sampling_is_bit_identical_across_runs_and_processes() -> None:
    model = hrm_ref.build_preset("denoiser")

    def sample() -> bytes:
        scheduler = DDIMScheduler(1000, "cosine")
        return scheduler.sample(5, (2, 16, 64), lambda x, t, c: denoise(model, x, t, c), seed=11).numpy().tobytes()

    in_process = sample()
    assert in_process == sample()
    other_processes = [subprocess.run([sys.executable, "-c", SAMPLE_SCRIPT], capture_output=True, check=True).stdout
                       for _ in range(2)]
    assert other_processes == [in_process, in_process]
    assert in_process != DDIMScheduler(1000, "cosine").sample(
        5, (2, 16, 64), lambda x, t, c: denoise(model, x, t, c), seed=12).numpy().tobytes()
