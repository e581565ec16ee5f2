"""Latency per executor (pytest-benchmark): `pytest --benchmark-only` runs them; see bench/RESULTS.md.

One full inference (the preset's budget) and one ACT step, per executor, preset and batch. Each
executor is prepared once per module (export and lowering are not timed).
"""

from __future__ import annotations

import platform

import pytest

from hrmc import hrm_ref
from hrmc.hrm_ref.act import initial_carry
from hrmc.parity.executors import make_executor

EXECUTORS = ["torch", "static", "chunked", "mlx"] + (["coreml", "ane"] if platform.system() == "Darwin" else [])
CASES = [(preset, batch) for preset in ("tiny", "sudoku") for batch in (1, 8)]
_prepared: dict = {}


def prepared(name: str, preset: str, size: int):
    """The executor, model and batch for a case, prepared once per session."""
    key = (name, preset, size)
    if key not in _prepared:
        model = hrm_ref.build_preset(preset)
        batch = hrm_ref.random_batch(model.config, size, seed=0)
        policy = "q-halt" if name == "chunked" else "max-steps"
        executor = make_executor(name)
        executor.prepare(model, policy, None, batch)
        _prepared[key] = executor, model, batch
    return _prepared[key]


@pytest.mark.parametrize("preset, size", CASES)
@pytest.mark.parametrize("name", EXECUTORS)
def test_full_inference(benchmark, name: str, preset: str, size: int) -> None:
    executor, _, batch = prepared(name, preset, size)
    benchmark.group = f"{preset} batch {size}: full inference"
    benchmark.pedantic(executor.run, args=(batch,), rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("preset, size", CASES)
@pytest.mark.parametrize("name", [n for n in EXECUTORS if n != "chunked"])
def test_one_act_step(benchmark, name: str, preset: str, size: int) -> None:
    executor, model, batch = prepared(name, preset, size)
    carry = initial_carry(model, batch)
    benchmark.group = f"{preset} batch {size}: one ACT step"
    benchmark.pedantic(executor.step, args=(carry, batch), rounds=10, warmup_rounds=1)
