"""The controller variant: prompt-only pooling, segments, GRB/CAB injectors, the vocab-bias head."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from hrmc import hrm_ref
from hrmc.hrm_ref import HRM
from hrmc.hrm_ref.presets import randomize_weights
from hrmc.errors import ConfigError, InputError

CONTROLLERS = ["controller-grb", "controller-cab"]


def controller(preset: str, **changes) -> HRM:
    config = hrm_ref.PRESETS[preset].replace(**changes)
    return randomize_weights(HRM(config), seed=7).eval()


@pytest.mark.parametrize("preset", CONTROLLERS)
def test_outputs_are_the_conditioned_states_and_the_vocab_bias(preset: str) -> None:
    model = hrm_ref.build_preset(preset)
    batch = hrm_ref.random_batch(model.config, 3, seed=0)
    out = hrm_ref.run(model, batch)
    segments = model.config.eval_segments
    assert out["conditioned"].shape == (segments, 3, 12, 96) and out["vocab_bias"].shape == (segments, 3, 128)
    assert out["z_H"].shape == (segments, 3, 1, 64)  # the HRM reasons on one pooled position
    assert (model.config.H_cycles, model.config.L_cycles) == (1, model.config.inner_T)
    assert not torch.equal(out["conditioned"][-1], batch["hidden"])  # gate σ(0) = ½ lets the HRM in


@pytest.mark.parametrize("preset", CONTROLLERS)
def test_pooling_ignores_tokens_outside_the_prompt(preset: str) -> None:
    model = hrm_ref.build_preset(preset)
    batch = hrm_ref.random_batch(model.config, 4, seed=1)
    outside = batch["prompt_mask"] == 0
    assert outside.any()
    changed = dict(batch, hidden=torch.where(outside.unsqueeze(-1), 1e3 * torch.randn_like(batch["hidden"]),
                                             batch["hidden"]))
    before, after = hrm_ref.run(model, batch), hrm_ref.run(model, changed)
    for name in ("z_H", "z_L", "vocab_bias", "q_halt_logits", "q_continue_logits"):
        assert torch.equal(before[name], after[name]), name
    prompt = ~outside
    # Each token's conditioning depends only on z_H and its own state: prompt tokens come back identical.
    assert torch.equal(before["conditioned"][:, prompt], after["conditioned"][:, prompt])


@pytest.mark.parametrize("preset", CONTROLLERS)
def test_a_gate_at_minus_infinity_leaves_the_states_unchanged(preset: str) -> None:
    model = controller(preset, gate_init=float("-inf"))
    batch = hrm_ref.random_batch(model.config, 3, seed=2)
    out = hrm_ref.run(model, batch)
    assert torch.equal(out["conditioned"][-1], batch["hidden"])
    assert not out["vocab_bias"].any()


def test_more_eval_segments_than_training_segments_scales_depth() -> None:
    trained = controller("controller-grb", segments=2, eval_segments=2)
    deeper = controller("controller-grb", segments=2, eval_segments=6)
    batch = hrm_ref.random_batch(trained.config, 2, seed=3)
    short, long = hrm_ref.run(trained, batch), hrm_ref.run(deeper, batch)
    assert long["steps"][-1].tolist() == [6, 6] and long["conditioned"].shape[0] == 6
    # Depth scaling continues the same trajectory: the first segments are the trained ones.
    assert torch.equal(long["conditioned"][:2], short["conditioned"])
    assert not torch.equal(long["conditioned"][-1], short["conditioned"][-1])


def test_a_controller_without_act_runs_its_segments_and_refuses_q_halt() -> None:
    model = controller("controller-cab", act=False)
    batch = hrm_ref.random_batch(model.config, 2, seed=4)
    out = hrm_ref.run(model, batch)
    assert out["steps"][-1].tolist() == [4, 4] and "q_halt_logits" not in out
    with pytest.raises(InputError, match="no ACT q head"):
        hrm_ref.run(model, batch, "q-halt")


def arrays(hidden: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    return {"hidden": hidden, "prompt_mask": mask}


@pytest.mark.parametrize("change, message", [
    (lambda h, m: arrays(h, np.where(np.arange(2)[:, None] == 1, 0, m)), "prompt_mask row 1 has no prompt token"),
    (lambda h, m: arrays(h[..., :64], m), "'hidden' has width 64, the model's d_model is 96"),
    (lambda h, m: arrays(h, 2 * m), "'prompt_mask' must be 0/1"),
    (lambda h, m: {"hidden": h}, "missing key 'prompt_mask'"),
    (lambda h, m: {"inputs": m}, "missing key 'hidden'"),
])
def test_bad_controller_inputs_are_named(change, message: str) -> None:
    config = hrm_ref.PRESETS["controller-grb"]
    hidden = np.random.default_rng(0).standard_normal((2, 5, 96), dtype=np.float32)
    with pytest.raises(InputError, match=message):
        hrm_ref.make_batch(config, change(hidden, np.ones((2, 5), np.float32)), "in.npz")


def test_controller_config_errors_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="injector 'film' is not one of grb, cab"):
        hrm_ref.PRESETS["controller-grb"].replace(injector="film")
    with pytest.raises(ConfigError, match="eval_segments must be at least 1"):
        hrm_ref.PRESETS["controller-grb"].replace(eval_segments=0)
    model = hrm_ref.build_preset("controller-grb")
    arch = {**model.config.to_arch_dict(), "d_model": 80}
    path = tmp_path / "bad.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
                                metadata={"hrmc.arch": json.dumps(arch)})
    with pytest.raises(ConfigError, match="arch.d_model does not match inner.front.proj.weight"):
        hrm_ref.load_checkpoint(path)
