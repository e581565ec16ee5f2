"""What every backend's executors share: the carry as graph inputs, one step's outputs, the chunk host loop.

The step and chunk graphs all have the same interface (`chunk-budget`): the carry `z_H`, `z_L`,
`steps`, `halted` and the batch in; `<carry>_next`, per-step outputs stacked [k, …] and
`halted_per_step` / `steps_per_step` out.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from hrmc.hrm_ref import Batch, Carry
from hrmc.names import CARRY_NAMES
from hrmc.targets.executor import Arrays, carry_arrays

ChunkCall = Callable[[dict[str, np.ndarray]], Arrays]


def carry_feed(carry: Carry | Arrays, batch: Batch) -> dict[str, np.ndarray]:
    arrays = carry_arrays(carry) if isinstance(carry, Carry) else carry
    return {"z_H": arrays["z_H"].astype(np.float32), "z_L": arrays["z_L"].astype(np.float32),
            "steps": arrays["steps"], "halted": arrays["halted"]} | {k: v.numpy() for k, v in batch.items()}


def split_step(values: Arrays, chunked: bool) -> Arrays:
    """One step's outputs under the executor interface's names (carry without `_next`)."""
    outputs = {}
    for name, value in values.items():
        if name.endswith("_per_step"):
            continue
        if name.removesuffix("_next") in CARRY_NAMES:
            outputs[name.removesuffix("_next")] = value
        else:
            outputs[name] = value[0] if chunked else value
    return outputs


def until_steps_run(values: Arrays) -> Arrays:
    """The whole-inference graph's per-step outputs [budget, …], cut to the `steps_run` it reports."""
    steps_run = int(values.pop("steps_run"))
    return {name: np.asarray(value)[:steps_run] for name, value in values.items()}


def run_chunks(call: ChunkCall, start: Arrays, batch: Batch, chunk: int) -> tuple[Arrays, int]:
    """Call the k-step graph until every sample has halted; returns the trajectory and the number of calls.

    Halted samples keep their last outputs, as hrm_ref.run does; steps after everyone halted are dropped.
    """
    carry, history, last, calls = dict(start), {}, None, 0
    while not carry["halted"].all():
        values = call(carry_feed(carry, batch))
        calls += 1
        halted_before = carry["halted"]
        for j in range(chunk):
            if halted_before.all():
                break
            outputs = {name: value[j] for name, value in values.items()
                       if not name.endswith("_next") and not name.endswith("_per_step")}
            if last is not None:
                outputs = {name: np.where(halted_before.reshape((-1,) + (1,) * (v.ndim - 1)), last[name], v)
                           for name, v in outputs.items()}
            outputs |= {"halted": values["halted_per_step"][j], "steps": values["steps_per_step"][j]}
            for name, value in outputs.items():
                history.setdefault(name, []).append(value)
            last, halted_before = outputs, values["halted_per_step"][j]
        carry = {name: values[f"{name}_next"] for name in CARRY_NAMES}
    return {name: np.stack(values) for name, values in history.items()}, calls
