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
                                             ({"H_cycles": 0}, "H_cycles must be at least 1")])
def test_impossible_configs_are_named(tiny: HRM, change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        tiny.config.replace(**change)
