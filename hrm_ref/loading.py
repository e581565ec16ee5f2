"""The model and inputs a command works on, from its options: a checkpoint, a preset or the default preset; an
inputs npz (with its labels), a trained preset's held-out puzzles, or a seeded random batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hrmc.binding import file_sha256
from hrmc.errors import InputError
from hrmc.hrm_ref.act import batch_size as batch_size_of
from hrmc.hrm_ref.batch import check_labels, load_batch, random_batch
from hrmc.hrm_ref.checkpoint import load_checkpoint
from hrmc.hrm_ref.model import HRM, Batch
from hrmc.hrm_ref.presets import TRAINED_PRESETS, build_preset, test_set_path
from hrmc.record import Checkpoint

DEFAULT_PRESET = "tiny"


def load_model(checkpoint: str | None, preset: str | None, config: str | None, dtype: str = "float32",
               depth: str | None = None) -> HRM:
    """The model a command works on: a checkpoint, a preset, or the default preset.

    `depth` (fast, normal, deep, extreme) sets its N×T cycles per forward; the weights do not change.
    """
    if checkpoint and preset:
        raise InputError("give either --checkpoint or --preset, not both")
    if config and not checkpoint:
        raise InputError("--config describes a checkpoint: use it with --checkpoint")
    if checkpoint:
        model = load_checkpoint(checkpoint, config, forward_dtype=dtype)
    else:
        model = build_preset(preset or DEFAULT_PRESET, forward_dtype=dtype)
    return model if depth is None else model.twin(model.config.with_depth(depth))


def load_labels(model: HRM, inputs: str | None, batch: Batch) -> np.ndarray | None:
    """`labels` [B, L] of an inputs npz, when it has them: the right answer per position (task accuracy)."""
    if not inputs:
        return None
    with np.load(inputs, allow_pickle=False) as data:
        if "labels" not in data.files:
            return None
        labels = data["labels"]
    return check_labels(model.config, labels, tuple(batch["inputs"].shape) if "inputs" in batch else None, inputs)


def load_task(model: HRM, preset: str | None, inputs: str | None, batch_size: int, seed: int,
              seq_len: int | None) -> tuple[Batch, np.ndarray | None]:
    """The inputs of `run` and `parity` with their labels, when there are any: the --inputs npz; else, for a
    trained preset, the first `batch_size` puzzles of its held-out set; else a seeded random batch."""
    held_out = inputs is None and preset in TRAINED_PRESETS
    inputs = str(test_set_path(preset)) if held_out else inputs
    batch = load_inputs(model, inputs, batch_size, seed, seq_len, preset)
    labels = load_labels(model, inputs, batch)
    if held_out:  # --batch picks the first puzzles: it cannot ask for more than there are
        if batch_size > batch_size_of(batch):
            raise InputError(f"--batch {batch_size}: the {preset} preset's held-out set has {batch_size_of(batch)} "
                             "puzzles")
        batch, labels = {name: value[:batch_size] for name, value in batch.items()}, labels[:batch_size]
    return batch, labels


def load_inputs(model: HRM, inputs: str | None, batch_size: int, seed: int, seq_len: int | None,
                preset: str | None = None) -> Batch:
    """The --inputs npz, else a seeded random batch. A trained preset answers one task: --seq-len and the
    inputs must have its sequence length (their ids are checked against its vocabulary, the model's)."""
    task_len = model.config.seq_len if preset in TRAINED_PRESETS else None
    if task_len and seq_len not in (None, task_len):
        raise InputError(f"--seq-len {seq_len}: the {preset} preset's task has {task_len} positions")
    if not inputs:
        return random_batch(model.config, batch_size, seed, seq_len)
    batch = load_batch(model.config, inputs)
    if task_len and batch["inputs"].shape[1] != task_len:
        raise InputError(f"{inputs}: 'inputs' has {batch['inputs'].shape[1]} positions, but the {preset} preset's "
                         f"task has {task_len}")
    return batch


def model_origin(checkpoint: str | None, preset: str | None) -> Checkpoint:
    """Where a command's model comes from, as its artifacts record it: a checkpoint file by its sha256 and its
    path from the current folder (each artifact keeps it relative to its own folder), or a preset by name."""
    if checkpoint:
        return Checkpoint.of_file(Path(checkpoint), file_sha256(Path(checkpoint)), Path.cwd())
    return Checkpoint(preset=preset or DEFAULT_PRESET)
