"""Model inputs: read from an npz file, or a seeded random batch; validated against the config."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from hrm_ref.act import Batch
from hrm_ref.config import HRMConfig
from hrmc.errors import InputError


def make_batch(config: HRMConfig, inputs: np.ndarray, puzzle_identifiers: np.ndarray | None, source: str) -> Batch:
    """Check shapes and id ranges, and wrap the arrays as a `Batch`."""
    if inputs.ndim != 2 or not np.issubdtype(inputs.dtype, np.integer) or 0 in inputs.shape:
        raise InputError(f"{source}: 'inputs' must be a non-empty integer array [batch, seq], "
                         f"got {inputs.dtype} {list(inputs.shape)}")
    batch_size, seq_len = inputs.shape
    if config.pos_encodings == "learned" and seq_len != config.seq_len:
        raise InputError(f"{source}: 'inputs' has {seq_len} positions, the model's learned positions fit {config.seq_len}")
    bad = np.argwhere((inputs < 0) | (inputs >= config.vocab_size))
    if len(bad):
        b, l = bad[0]
        raise InputError(f"{source}: token id {inputs[b, l]} at inputs[{b}, {l}] is outside the vocabulary "
                         f"[0, {config.vocab_size})")
    if puzzle_identifiers is None:
        if config.puzzle_emb_ndim > 0:
            raise InputError(f"{source}: missing key 'puzzle_identifiers' (the model has a puzzle embedding)")
        puzzle_identifiers = np.zeros(batch_size, dtype=np.int32)
    if puzzle_identifiers.shape != (batch_size,) or not np.issubdtype(puzzle_identifiers.dtype, np.integer):
        raise InputError(f"{source}: 'puzzle_identifiers' must be an integer array [{batch_size}], "
                         f"got {puzzle_identifiers.dtype} {list(puzzle_identifiers.shape)}")
    bad = np.flatnonzero((puzzle_identifiers < 0) | (puzzle_identifiers >= config.num_puzzle_identifiers))
    if len(bad):
        raise InputError(f"{source}: puzzle id {puzzle_identifiers[bad[0]]} at puzzle_identifiers[{bad[0]}] is "
                         f"outside [0, {config.num_puzzle_identifiers})")
    return Batch(torch.from_numpy(inputs.astype(np.int32)), torch.from_numpy(puzzle_identifiers.astype(np.int32)))


def load_batch(config: HRMConfig, path: str | Path) -> Batch:
    """A batch from an npz with keys `inputs` [B, L] and `puzzle_identifiers` [B]."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"inputs file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (zipfile.BadZipFile, ValueError, OSError) as err:
        raise InputError(f"cannot read inputs {path} as npz: {err}") from None
    if "inputs" not in arrays:
        raise InputError(f"{path}: missing key 'inputs' (found: {', '.join(arrays) or 'nothing'})")
    return make_batch(config, arrays["inputs"], arrays.get("puzzle_identifiers"), str(path))


def random_batch(config: HRMConfig, batch_size: int, seed: int, seq_len: int | None = None) -> Batch:
    """Seeded uniform token ids and puzzle ids (numpy's PCG64, identical on every machine)."""
    seq_len = seq_len or config.seq_len
    if seq_len is None:
        raise InputError("the model does not fix a sequence length: pass --seq-len or --inputs")
    if batch_size < 1 or seq_len < 1:
        raise InputError(f"--batch and --seq-len must be at least 1, got {batch_size} and {seq_len}")
    rng = np.random.default_rng(seed)
    inputs = rng.integers(0, config.vocab_size, size=(batch_size, seq_len), dtype=np.int32)
    puzzle_identifiers = rng.integers(0, config.num_puzzle_identifiers, size=batch_size, dtype=np.int32)
    return make_batch(config, inputs, puzzle_identifiers, "random batch")
