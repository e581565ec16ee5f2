"""Model inputs: read from an npz file, or a seeded random batch; validated against the config.

Keys: `inputs` [B, L] token or byte ids and `puzzle_identifiers` [B] (tokens and bytes models),
or `x_t` [B, L, H] float, `t` [B] integer timesteps and optionally `cond` [B, L, H] (denoiser),
or `hidden` [B, T, d_model] float LLM states and `prompt_mask` [B, T] of 0/1 (controller; every row
needs at least one prompt token).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from hrmc.hrm_ref.config import HRMConfig
from hrmc.hrm_ref.model import Batch
from hrmc.errors import InputError

RANDOM_TIMESTEPS = 1000  # random batches draw denoiser timesteps from [0, 1000)
# Upstream's label of a position that is not scored (sapientinc/HRM models/losses.py, its datasets).
IGNORE_LABEL_ID = -100


def _integer_ids(array: np.ndarray, key: str, shape: tuple[int, ...], upper: int, what: str, source: str,
                 ignored: int | None = None) -> np.ndarray:
    """`array` must be integers of `shape` in [0, upper), or `ignored`; the first bad id is named."""
    dims = ", ".join(map(str, shape))
    if array.shape != shape or not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{source}: '{key}' must be an integer array [{dims}], got {array.dtype} {list(array.shape)}")
    outside = (array < 0) | (array >= upper)
    bad = np.argwhere(outside if ignored is None else outside & (array != ignored))
    if len(bad):
        where = ", ".join(map(str, bad[0]))
        besides = f" and is not {ignored}, the ignore id" if ignored is not None else ""
        raise InputError(f"{source}: {what} {array[tuple(bad[0])]} at {key}[{where}] is outside [0, {upper}){besides}")
    return array.astype(np.int32)


def check_labels(config: HRMConfig, labels: np.ndarray, inputs_shape: tuple[int, ...] | None,
                 source: str) -> np.ndarray:
    """`labels` [B, L]: the right token per position of `inputs`, or IGNORE_LABEL_ID where none is scored. A
    label the vocabulary lacks could never be predicted; scoring it would only lower the accuracy."""
    if inputs_shape is None or labels.shape != inputs_shape or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{source}: 'labels' must be an integer array of the shape of 'inputs' {list(inputs_shape or [])}, "
                         f"got {labels.dtype} {list(labels.shape)}")
    if (labels == IGNORE_LABEL_ID).all():
        raise InputError(f"{source}: every one of 'labels' is {IGNORE_LABEL_ID}, the ignore id: nothing to score")
    return _integer_ids(labels, "labels", inputs_shape, config.vocab_size, "label", source, IGNORE_LABEL_ID)


def _latent_batch(config: HRMConfig, arrays: Mapping[str, np.ndarray], source: str) -> Batch:
    x_t = arrays["x_t"]
    if x_t.ndim != 3 or x_t.shape[-1] != config.hidden_size or 0 in x_t.shape or not np.issubdtype(x_t.dtype, np.floating):
        raise InputError(f"{source}: 'x_t' must be a float array [batch, seq, {config.hidden_size}], "
                         f"got {x_t.dtype} {list(x_t.shape)}")
    if "t" not in arrays:
        raise InputError(f"{source}: missing key 't' (the denoiser's timesteps)")
    batch = {"x_t": torch.from_numpy(x_t.astype(np.float32)),
             "t": torch.from_numpy(_integer_ids(arrays["t"], "t", x_t.shape[:1], np.iinfo(np.int32).max, "timestep", source))}
    if "cond" in arrays:
        if arrays["cond"].shape != x_t.shape:
            raise InputError(f"{source}: 'cond' must have the shape of x_t {list(x_t.shape)}, got {list(arrays['cond'].shape)}")
        batch["cond"] = torch.from_numpy(arrays["cond"].astype(np.float32))
    return batch


def _hidden_batch(config: HRMConfig, arrays: Mapping[str, np.ndarray], source: str) -> Batch:
    hidden = arrays["hidden"]
    if hidden.ndim != 3 or 0 in hidden.shape or not np.issubdtype(hidden.dtype, np.floating):
        raise InputError(f"{source}: 'hidden' must be a float array [batch, seq, {config.d_model}], "
                         f"got {hidden.dtype} {list(hidden.shape)}")
    if hidden.shape[-1] != config.d_model:
        raise InputError(f"{source}: 'hidden' has width {hidden.shape[-1]}, the model's d_model is {config.d_model}")
    if "prompt_mask" not in arrays:
        raise InputError(f"{source}: missing key 'prompt_mask' (1 marks the prompt's tokens)")
    mask = arrays["prompt_mask"]
    if mask.shape != hidden.shape[:2] or not np.isin(mask, (0, 1)).all():
        raise InputError(f"{source}: 'prompt_mask' must be 0/1 of shape {list(hidden.shape[:2])}, "
                         f"got {mask.dtype} {list(mask.shape)}")
    empty = np.flatnonzero(~mask.astype(bool).any(axis=1))
    if len(empty):
        raise InputError(f"{source}: prompt_mask row {empty[0]} has no prompt token (pooling needs at least one)")
    return {"hidden": torch.from_numpy(hidden.astype(np.float32)),
            "prompt_mask": torch.from_numpy(mask.astype(np.float32))}


MAX_SEQ_LEN = 4096  # positions per sample: attention scores grow with its square
MAX_TENSOR_BYTES = 2 << 30  # the largest activation one forward may hold (float32)


def check_size(config: HRMConfig, batch_size: int, seq_len: int, source: str) -> None:
    """Refuse a batch whose largest activation (MLP hidden or attention scores) would not fit in memory,
    before any work, instead of running out of it."""
    if seq_len > MAX_SEQ_LEN:
        raise InputError(f"{source}: {seq_len} positions per sample; hrmc runs at most {MAX_SEQ_LEN}")
    widest = max(2 * config.intermediate_size, config.num_heads * seq_len)  # gate_up, or every head's scores
    needed = 4 * batch_size * seq_len * widest
    if needed > MAX_TENSOR_BYTES:
        raise InputError(f"{source}: batch {batch_size} × {seq_len} positions needs {needed / 2**30:.1f} GiB for one "
                         f"activation (at most {MAX_TENSOR_BYTES / 2**30:.0f} GiB): use a smaller --batch")


def make_batch(config: HRMConfig, arrays: Mapping[str, np.ndarray], source: str) -> Batch:
    """Check keys, shapes and id ranges, and turn the arrays into a `Batch` of tensors."""
    main_key = {"latent": "x_t", "hidden": "hidden"}.get(config.input_mode, "inputs")
    if main_key not in arrays:
        raise InputError(f"{source}: missing key '{main_key}' (found: {', '.join(arrays) or 'nothing'})")
    if arrays[main_key].ndim >= 2:
        check_size(config, *arrays[main_key].shape[:2], source)
    if config.input_mode == "latent":
        return _latent_batch(config, arrays, source)
    if config.input_mode == "hidden":
        return _hidden_batch(config, arrays, source)
    inputs = arrays["inputs"]
    if inputs.ndim != 2 or not np.issubdtype(inputs.dtype, np.integer) or 0 in inputs.shape:
        raise InputError(f"{source}: 'inputs' must be a non-empty integer array [batch, seq], "
                         f"got {inputs.dtype} {list(inputs.shape)}")
    fixed_by = "learned positions fit" if config.pos_encodings == "learned" else "mlp_t mixes" if config.mlp_t else None
    if fixed_by and inputs.shape[1] != config.seq_len:
        raise InputError(f"{source}: 'inputs' has {inputs.shape[1]} positions, the model's {fixed_by} {config.seq_len}")
    batch = {"inputs": torch.from_numpy(_integer_ids(inputs, "inputs", inputs.shape, config.vocab_size,
                                                     "token id", source))}
    if config.puzzle_emb_ndim > 0:
        if "puzzle_identifiers" not in arrays:
            raise InputError(f"{source}: missing key 'puzzle_identifiers' (the model has a puzzle embedding)")
        batch["puzzle_identifiers"] = torch.from_numpy(_integer_ids(
            arrays["puzzle_identifiers"], "puzzle_identifiers", inputs.shape[:1], config.num_puzzle_identifiers,
            "puzzle id", source))
    return batch


def load_batch(config: HRMConfig, path: str | Path) -> Batch:
    """A batch from an npz file (keys above)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"inputs file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:  # EOFError: an empty file
        raise InputError(f"cannot read inputs {path} as npz: {err or 'empty file'}") from None
    return make_batch(config, arrays, str(path))


def random_batch(config: HRMConfig, batch_size: int, seed: int, seq_len: int | None = None) -> Batch:
    """Seeded random inputs (numpy's PCG64, identical on every machine)."""
    seq_len = seq_len or config.seq_len
    if seq_len is None:
        raise InputError("the model does not fix a sequence length (RoPE, and no dataset.json found through "
                         "all_config.yaml's data_path): pass --seq-len or --inputs once, at export or lower")
    if batch_size < 1 or seq_len < 1:
        raise InputError(f"--batch and --seq-len must be at least 1, got {batch_size} and {seq_len}")
    check_size(config, batch_size, seq_len, "random batch")
    rng = np.random.default_rng(seed)
    if config.input_mode == "latent":
        arrays = {"x_t": rng.standard_normal((batch_size, seq_len, config.hidden_size), dtype=np.float32),
                  "t": rng.integers(0, RANDOM_TIMESTEPS, size=batch_size, dtype=np.int32)}
    elif config.input_mode == "hidden":  # prompts of random lengths, then generated tokens
        prompt_lengths = rng.integers(1, seq_len + 1, size=(batch_size, 1))
        arrays = {"hidden": rng.standard_normal((batch_size, seq_len, config.d_model), dtype=np.float32),
                  "prompt_mask": (np.arange(seq_len) < prompt_lengths).astype(np.float32)}
    else:
        arrays = {"inputs": rng.integers(0, config.vocab_size, size=(batch_size, seq_len), dtype=np.int32),
                  "puzzle_identifiers": rng.integers(0, config.num_puzzle_identifiers, size=batch_size, dtype=np.int32)}
    return make_batch(config, arrays, "random batch")
