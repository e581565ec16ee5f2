"""MLX, imported once for every module of the MLX backend, with float32 meaning float32.

MLX reads `MLX_ENABLE_TF32` when it starts (default 1): on M5-class chips float32 matmuls, attention and
convolutions then run at TF32-like precision, about 11 bits (ml-explore/mlx#4411, #3534; relative error
7.7e-4 measured, 2.9e-7 with 0), which no float32 parity claim survives. So the variable is set to 0
before MLX is imported: set, not defaulted, since a 1 the user exported would otherwise win; `PREVIOUS`
keeps what it was, and the executors' descriptions say so. The emitted module does the same for itself
(targets/mlx/lowering.py, its header). On Linux MLX has no TF32 path: there the setting changes nothing.
"""

from __future__ import annotations

import os
import sys

TF32 = "MLX_ENABLE_TF32"
FLOAT32 = "0"  # the value that keeps float32 matmuls in float32
PREVIOUS = os.environ.get(TF32)  # what the environment held before hrmc set it (None: unset, MLX's default 1)
# MLX imported before this module, without the variable at 0: it may have read it already
TOO_LATE = "mlx.core" in sys.modules and PREVIOUS != FLOAT32
os.environ[TF32] = FLOAT32

import mlx.core as mx  # noqa: E402 (after the variable, on purpose)


def describe() -> str:
    """For reports: how float32 matmuls run, and what was overridden."""
    text = f"{TF32}={FLOAT32}"
    if PREVIOUS not in (None, FLOAT32):
        text += f" (the environment's {PREVIOUS} overridden)"
    if TOO_LATE:
        text += " (but MLX was imported before hrmc set it: it may run float32 matmuls in TF32)"
    return text


__all__ = ["FLOAT32", "PREVIOUS", "TF32", "describe", "mx"]
