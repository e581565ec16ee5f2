"""Built-in models: seeded, reproducible, and with every path upstream's init hides switched on."""

from __future__ import annotations

import pytest
import torch

from hrmc import hrm_ref
from hrmc.hrm_ref import HRM
from hrmc.errors import ConfigError


def test_presets_are_bit_identical_on_rebuild(tiny: HRM) -> None:
    again = hrm_ref.build_preset("tiny")
    assert all(torch.equal(a, b) for a, b in zip(tiny.state_dict().values(), again.state_dict().values()))


def test_q_head_and_puzzle_embedding_are_live(tiny: HRM) -> None:
    assert tiny.inner.q_head.weight.abs().min() > 0
    assert tiny.inner.puzzle_emb.weights.std() > 0.5 * tiny.config.hidden_size ** -0.5


def test_unknown_preset_is_named() -> None:
    with pytest.raises(ConfigError, match="unknown preset 'huge': choose one of tiny, sudoku"):
        hrm_ref.build_preset("huge")


@pytest.mark.parametrize("change, message", [({"hidden_size": 30}, "not divisible by num_heads"),
                                             ({"pos_encodings": "alibi"}, "pos_encodings 'alibi'"),
                                             ({"H_cycles": 0}, "H_cycles must be at least 1"),
                                             ({"family": "ttm"}, "config family 'ttm' is not one of hrm, trm"),
                                             ({"mlp_t": True}, "config mlp_t is a TRM option: it needs family 'trm'"),
                                             ({"no_ACT_continue": True}, "config no_ACT_continue is a TRM option"),
                                             ({"pos_encodings": "none"}, "config pos_encodings 'none' is a TRM option"),
                                             ({"halt_max_steps": 1025}, "config halt_max_steps 1025 is beyond what hrmc "
                                                                        "supports: at most 1024 ACT steps"),
                                             ({"rope_theta": 1e-40}, "config rope_theta must be a positive normal float32")])
def test_impossible_configs_are_named(tiny: HRM, change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        tiny.config.replace(**change)


def test_a_controllers_budget_is_named_by_its_own_key() -> None:
    with pytest.raises(ConfigError, match="config eval_segments 2000 is beyond what hrmc supports"):
        hrm_ref.PRESETS["controller-grb"].replace(eval_segments=2000)


@pytest.mark.parametrize("change, message", [
    ({"puzzle_emb_len": -1}, "config puzzle_emb_len must be >= 0, got -1"),
    ({"puzzle_emb_ndim": 0}, r"config puzzle_emb_len 3 needs a puzzle embedding \(puzzle_emb_ndim > 0\)"),
    ({"puzzle_emb_len": 1}, "config puzzle_emb_len 1 is too short for puzzle_emb_ndim 96: it holds 64 values"),
    ({"mlp_t": True, "seq_len": None}, "config with mlp_t needs seq_len"),
    ({"mlp_t": True, "input_mode": "latent"}, "config mlp_t needs token inputs .*, got 'latent'"),
])
def test_impossible_trm_configs_are_named(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        hrm_ref.PRESETS["trm-tiny"].replace(**change)


def test_puzzle_emb_len_is_trms_choice_and_always_ceil_for_hrm(tiny: HRM) -> None:
    """puzzle_emb_ndim 96 on hidden 64 takes ceil(96 / 64) = 2 positions unless TRM states more."""
    trm = hrm_ref.PRESETS["trm-tiny"]
    assert (trm.puzzle_emb_len, trm.replace(puzzle_emb_len=0).puzzle_emb_len) == (3, 2)
    assert tiny.config.replace(puzzle_emb_len=5).puzzle_emb_len == 2
    assert tiny.config.replace(puzzle_emb_ndim=200).puzzle_emb_len == 4  # derived again, not carried over
