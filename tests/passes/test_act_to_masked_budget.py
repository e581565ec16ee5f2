"""act-to-masked-budget: no Loop or If, and exactly the Loop's outputs, halting included."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hrmc.passes._loops import PassInputError
from hrmc.passes.act_to_masked_budget import ActToMaskedBudgetPass
from tests.passes.graphs import act_model, execute, op_types

floats = st.floats(-1.5, 1.5, allow_nan=False).map(np.float32)


@settings(max_examples=30, deadline=None)
@given(budget=st.integers(1, 6), a=floats, b=floats, threshold=st.floats(-2, 2).map(np.float32),
       data=st.data(), batch=st.integers(1, 4))
def test_masking_changes_nothing_computed(budget: int, a, b, threshold, data, batch: int) -> None:
    model = act_model(budget, a, b, threshold, batch)
    x = np.array(data.draw(st.lists(floats, min_size=3 * batch, max_size=3 * batch)), np.float32).reshape(batch, 3)
    before = execute(model, {"x0": x})
    result = ActToMaskedBudgetPass()(model)
    assert result.modified and not op_types(result.model) & {"Loop", "If"}
    after = execute(result.model, {"x0": x})
    for old, new in zip(before, after):
        assert np.array_equal(old, new)


def test_the_budget_must_be_recorded() -> None:
    model = act_model(3, 1.0, 0.0, 0.5, 2)
    del model.metadata_props["hrmc.budget"]
    with pytest.raises(PassInputError, match="ACT Loop node 'act': the model records no hrmc.budget"):
        ActToMaskedBudgetPass()(model)


def test_the_real_export_becomes_static(tiny_export) -> None:
    from hrmc.passes.unroll_cycles import UnrollCyclesPass

    model = ir.load(str(tiny_export))
    UnrollCyclesPass()(model)
    ActToMaskedBudgetPass()(model)
    assert not op_types(model) & {"Loop", "If"} and model.metadata_props["hrmc.kind"] == "static"
    assert [v.name for v in model.graph.outputs] == ["logits", "q_halt_logits", "q_continue_logits", "halted", "steps",
                                                     "steps_run"]
