"""chunk-budget k: k chained steps equal k calls of the one-step graph; the carry stays explicit."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hrmc import hrm_ref
from hrmc.hrm_ref import HRM
from hrmc.lowering import step_path_for
from hrmc.passes import run_pipeline
from hrmc.passes._loops import PassInputError
from hrmc.passes.chunk_budget import ChunkBudgetPass
from tests.passes.graphs import execute

CARRY = ("z_H", "z_L", "steps", "halted")


def lowered_step(tiny_export, chunk: int) -> ir.Model:
    return run_pipeline(ir.load(str(step_path_for(tiny_export))), "static", chunk=chunk)


@settings(max_examples=4, deadline=None)
@given(chunk=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_a_chunk_is_its_steps_in_a_row(tiny: HRM, tiny_export, chunk: int, seed: int) -> None:
    batch = {k: v.numpy() for k, v in hrm_ref.random_batch(tiny.config, 3, seed).items()}
    start = hrm_ref.initial_carry(tiny, hrm_ref.random_batch(tiny.config, 3, seed))
    carry = {"z_H": start.z_H.contiguous().numpy(), "z_L": start.z_L.contiguous().numpy(),
             "steps": start.steps.numpy(), "halted": start.halted.numpy()}
    one, many = lowered_step(tiny_export, 1), lowered_step(tiny_export, chunk)
    names = [v.name for v in many.graph.outputs]
    together = dict(zip(names, execute(many, carry | batch)))
    for j in range(chunk):
        alone = dict(zip(names, execute(one, carry | batch)))
        for name in ("logits", "q_halt_logits", "halted_per_step", "steps_per_step"):
            assert np.abs(together[name][j].astype(float) - alone[name][0].astype(float)).max() <= 1e-6, name
        carry = {name: alone[f"{name}_next"] for name in CARRY}
    for name in CARRY:
        assert np.abs(together[f"{name}_next"].astype(float) - carry[name].astype(float)).max() <= 1e-6


def test_chunk_shares_the_weights(tiny_export) -> None:
    one, four = lowered_step(tiny_export, 1), lowered_step(tiny_export, 4)
    size = lambda model: sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    assert size(four) == size(one)


def test_chunk_needs_the_step_model_without_loops(tiny_export) -> None:
    with pytest.raises(ir.passes.PreconditionError, match="one-step model"):
        ChunkBudgetPass(2)(ir.load(str(tiny_export)))
    with pytest.raises(ir.passes.PreconditionError, match="is a Loop: run unroll-cycles first"):
        ChunkBudgetPass(2)(ir.load(str(step_path_for(tiny_export))))
    with pytest.raises(PassInputError, match="at least 1 step"):
        ChunkBudgetPass(0)
