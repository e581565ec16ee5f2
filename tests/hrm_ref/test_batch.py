"""Inputs from npz files and seeded random batches, with the errors a user can cause."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hrmc import hrm_ref
from hrmc.hrm_ref import HRM, HRMConfig
from hrmc.errors import InputError


def write(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def test_random_batch_is_seeded(tiny: HRM) -> None:
    a, b = (hrm_ref.random_batch(tiny.config, 4, seed=9) for _ in range(2))
    assert torch.equal(a["inputs"], b["inputs"]) and torch.equal(a["puzzle_identifiers"], b["puzzle_identifiers"])
    assert a["inputs"].shape == (4, 16) and not torch.equal(a["inputs"], hrm_ref.random_batch(tiny.config, 4, seed=8)["inputs"])


def test_npz_round_trip(tiny: HRM, tmp_path: Path) -> None:
    inputs = np.arange(32, dtype=np.int64).reshape(2, 16) % 11
    batch = hrm_ref.load_batch(tiny.config, write(tmp_path / "b.npz", inputs=inputs, puzzle_identifiers=np.array([0, 7])))
    assert batch["inputs"].tolist() == inputs.tolist() and batch["puzzle_identifiers"].tolist() == [0, 7]


@pytest.mark.parametrize("arrays, message", [
    ({"inputs": np.full((2, 16), 11), "puzzle_identifiers": np.zeros(2, int)},
     r"token id 11 at inputs\[0, 0\] is outside \[0, 11\)"),
    ({"inputs": np.full((2, 16), -1), "puzzle_identifiers": np.zeros(2, int)}, r"token id -1 at inputs\[0, 0\]"),
    ({"inputs": np.zeros((2, 16), int), "puzzle_identifiers": np.array([0, 8])},
     r"puzzle id 8 at puzzle_identifiers\[1\] is outside \[0, 8\)"),
    ({"tokens": np.zeros((2, 16), int)}, r"missing key 'inputs' \(found: tokens\)"),
    ({"inputs": np.zeros((2, 16), int)}, r"missing key 'puzzle_identifiers'"),
    ({"inputs": np.zeros((2, 16), np.float32), "puzzle_identifiers": np.zeros(2, int)},
     r"'inputs' must be a non-empty integer array \[batch, seq\], got float32 \[2, 16\]"),
    ({"inputs": np.zeros(16, int), "puzzle_identifiers": np.zeros(2, int)}, r"'inputs' must be"),
    ({"inputs": np.zeros((2, 16), int), "puzzle_identifiers": np.zeros((2, 1), int)},
     r"'puzzle_identifiers' must be an integer array \[2\]"),
])
def test_bad_inputs_are_named(tiny: HRM, tmp_path: Path, arrays: dict, message: str) -> None:
    path = write(tmp_path / "b.npz", **arrays)
    with pytest.raises(InputError, match=message):
        hrm_ref.load_batch(tiny.config, path)


def test_unreadable_inputs_file(tiny: HRM, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="inputs file not found"):
        hrm_ref.load_batch(tiny.config, tmp_path / "none.npz")
    (tmp_path / "bad.npz").write_text("hello")
    with pytest.raises(InputError, match="cannot read inputs .*bad.npz as npz"):
        hrm_ref.load_batch(tiny.config, tmp_path / "bad.npz")


@pytest.mark.parametrize("config, fixed_by", [
    (HRMConfig(vocab_size=4, hidden_size=16, num_heads=2, pos_encodings="learned", seq_len=5), "learned positions fit 5"),
    (hrm_ref.PRESETS["trm-tiny-mlp-t"], "mlp_t mixes 16"),
])
def test_learned_positions_and_mlp_t_fix_the_sequence_length(config: HRMConfig, fixed_by: str) -> None:
    inputs = np.zeros((1, config.seq_len + 1), np.int32)
    with pytest.raises(InputError, match=f"has {config.seq_len + 1} positions, the model's {fixed_by}"):
        hrm_ref.make_batch(config, {"inputs": inputs}, "x.npz")


def test_random_batch_needs_a_sequence_length() -> None:
    with pytest.raises(InputError, match="pass --seq-len or --inputs"):
        hrm_ref.random_batch(HRMConfig(vocab_size=4, hidden_size=16, num_heads=2), 2, seed=0)
