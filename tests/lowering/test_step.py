"""The one-step model read out of the ACT Loop (lowering/step.py): hrm_ref's step, from any carry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from hrmc import hrm_ref
from hrmc.errors import HrmcError
from hrmc.hrm_ref import HRM, Carry
from hrmc.lowering import read_record, step_path_for
from hrmc.lowering.step import step_model
from hrmc.names import CARRY_NAMES


def test_the_step_model_steps_as_hrm_ref_from_a_carry_with_halted_rows(tiny: HRM, tiny_export: Path) -> None:
    record = read_record(tiny_export)
    batch = hrm_ref.random_batch(tiny.config, 3, seed=5)
    with torch.no_grad():
        start = hrm_ref.initial_carry(tiny, batch)
        moved, _ = hrm_ref.step(tiny, start, batch, record.policy, record.budget)
        carry = Carry(moved.z_H, moved.z_L, torch.tensor([1, 3, 8], dtype=torch.int32),
                      torch.tensor([False, True, False]))
        expected_carry, expected = hrm_ref.step(tiny, carry, batch, record.policy, record.budget)
    session = ort.InferenceSession(str(step_path_for(tiny_export)))
    feeds = {name: getattr(carry, name).numpy() for name in CARRY_NAMES} | {k: v.numpy() for k, v in batch.items()}
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    assert list(got) == [*(f"{name}_next" for name in CARRY_NAMES), *record.outputs]
    for name in CARRY_NAMES:
        np.testing.assert_allclose(got[f"{name}_next"], getattr(expected_carry, name).numpy(), rtol=1e-5, atol=1e-5,
                                   err_msg=name)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value.numpy(), rtol=1e-5, atol=1e-5, err_msg=name)


def test_a_graph_without_an_act_loop_is_refused(tiny_export: Path) -> None:
    with pytest.raises(HrmcError, match="0 ACT Loops"):
        step_model(onnx.load(step_path_for(tiny_export)), ["logits", "q_halt_logits", "q_continue_logits"])


def test_a_loop_carrying_other_values_is_refused(tiny_export: Path) -> None:
    with pytest.raises(HrmcError, match="carries .* values; expected"):
        step_model(onnx.load(tiny_export), ["logits"])
