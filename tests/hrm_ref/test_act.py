"""The eager ACT driver: both halting policies, the budget, freezing, and the one-step unit."""

from __future__ import annotations

import pytest
import torch

from hrmc import hrm_ref
from hrmc.hrm_ref import HRM
from hrmc.errors import InputError


@pytest.fixture(scope="module")
def batch(tiny: HRM) -> hrm_ref.Batch:
    return hrm_ref.random_batch(tiny.config, 32, seed=5)


def test_max_steps_runs_every_sample_for_the_budget(tiny: HRM, batch: hrm_ref.Batch) -> None:
    out = hrm_ref.run(tiny, batch, "max-steps", budget=3)
    assert out["logits"].shape == (3, 32, 16, 11)
    assert out["steps"].tolist() == [[1] * 32, [2] * 32, [3] * 32]
    assert out["halted"].tolist() == [[False] * 32, [False] * 32, [True] * 32]


def test_q_halt_freezes_halted_samples(tiny: HRM, batch: hrm_ref.Batch) -> None:
    out = hrm_ref.run(tiny, batch, "q-halt")
    final = out["steps"][-1]
    assert out["steps"].shape[0] == int(final.max()) and int(final.min()) < tiny.config.halt_max_steps
    for row, halting_step in enumerate(final.tolist()):
        last = halting_step - 1
        assert out["halted"][last:, row].all() and not out["halted"][:last, row].any()
        for name in ("logits", "q_halt_logits", "z_H", "z_L", "steps"):
            frozen = out[name][last:, row]
            assert torch.equal(frozen, frozen[:1].expand_as(frozen)), f"{name} of sample {row} moved after halting"
        q_halt, q_continue = out["q_halt_logits"][last, row], out["q_continue_logits"][last, row]
        assert q_halt > q_continue or halting_step == tiny.config.halt_max_steps


def test_trm_without_act_continue_halts_on_q_halt_alone() -> None:
    """TRM's no_ACT_continue rule is q_halt > 0, whatever q_continue says (docs/design.md §2)."""
    model = hrm_ref.build_preset("trm-tiny-mlp-t")
    out = hrm_ref.run(model, hrm_ref.random_batch(model.config, 32, seed=5), "q-halt")
    q_halt, q_continue, budget = out["q_halt_logits"], out["q_continue_logits"], model.config.halt_max_steps
    early = [(row, step) for row, step in enumerate(out["steps"][-1].tolist()) if step < budget]
    for row, step in early:
        assert q_halt[step - 1, row] > 0 and (q_halt[:step - 1, row] <= 0).all()
    assert any(q_continue[step - 1, row] > q_halt[step - 1, row] for row, step in early), "HRM's rule would go on"


def test_q_halt_and_max_steps_agree_until_a_sample_halts(tiny: HRM, batch: hrm_ref.Batch) -> None:
    full = hrm_ref.run(tiny, batch, "max-steps")
    early = hrm_ref.run(tiny, batch, "q-halt")
    for row, halting_step in enumerate(early["steps"][-1].tolist()):
        assert torch.equal(early["logits"][:halting_step, row], full["logits"][:halting_step, row])


def test_step_from_a_recorded_carry_reproduces_the_trajectory(tiny: HRM, batch: hrm_ref.Batch) -> None:
    """Teacher forcing: the carry after step s, fed back, gives step s+1 bit for bit."""
    out = hrm_ref.run(tiny, batch, "q-halt")
    s = 2
    carry = hrm_ref.Carry(out["z_H"][s - 1], out["z_L"][s - 1], out["steps"][s - 1], out["halted"][s - 1])
    new_carry, outputs = hrm_ref.step(tiny, carry, batch, "q-halt", tiny.config.halt_max_steps)
    running = ~carry.halted
    assert torch.equal(outputs["logits"][running], out["logits"][s][running])
    assert torch.equal(new_carry.z_H, out["z_H"][s]) and torch.equal(new_carry.halted, out["halted"][s])


@pytest.mark.parametrize("policy, budget, message", [("greedy", 4, "unknown halting policy 'greedy'"),
                                                     ("q-halt", 0, r"--budget must be in \[1, 1024\], got 0"),
                                                     ("q-halt", 2**31, r"--budget must be in \[1, 1024\]")])
def test_bad_policy_or_budget(tiny: HRM, batch: hrm_ref.Batch, policy: str, budget: int, message: str) -> None:
    with pytest.raises(InputError, match=message):
        hrm_ref.run(tiny, batch, policy, budget)
