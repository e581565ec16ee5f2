"""The pipeline driver: what each CLI command does, as plain functions the CLI calls in order.

Each stage package keeps one entry point; this module only wires them together. File writing that
every stage shares (atomic writes, output checks) lives below it, in `hrmc.files`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from hrmc import hrm_ref
from hrmc.hrm_ref import HRM, Batch
from hrmc.hrm_ref.act import batch_size as batch_size_of
from hrmc.hrm_ref.act import denoise
from hrmc.hrm_ref.batch import check_labels
from hrmc.hrm_ref.ddim import DDIMScheduler
from hrmc.hrm_ref.presets import TRAINED_PRESETS, test_set_path
from hrmc.binding import file_sha256
from hrmc.errors import InputError
from hrmc.files import atomic_output, check_output, together
from hrmc.names import STATE_NAMES
from hrmc.record import Checkpoint, Record
from hrmc.targets import TARGETS, About, Companion, LowerOptions

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
        model = hrm_ref.load_checkpoint(checkpoint, config, forward_dtype=dtype)
    else:
        model = hrm_ref.build_preset(preset or DEFAULT_PRESET, forward_dtype=dtype)
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
        return hrm_ref.random_batch(model.config, batch_size, seed, seq_len)
    batch = hrm_ref.load_batch(model.config, inputs)
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


def artifact_options(record: Record, artifact: Path, given: dict[str, object]) -> dict[str, object]:
    """What a command run on a shipped artifact (`parity --artifact`) takes from its record: the model, the
    policy, budget, batch (a Core ML package's) and sequence length. `given` holds the options typed on the
    command line: one that contradicts the record is refused; the model given is checked against it later
    (its weights' sha256). The recorded checkpoint is looked for at its path from the artifact's folder and
    must have its sha256; else one line asks for --checkpoint."""
    options = {}
    for option, flag, recorded in (("policy", "--policy", record.policy), ("budget", "--budget", record.budget),
                                   ("batch_size", "--batch", record.batch), ("seq_len", "--seq-len", record.seq_len)):
        if recorded is None:
            continue
        if given.get(option) not in (None, recorded):
            raise InputError(f"{flag} {given[option]}: {artifact} was made with {flag.removeprefix('--')} {recorded} "
                             f"(parity reads it from the artifact: leave {flag} out)")
        options[option] = recorded
    origin = record.checkpoint
    if given.get("checkpoint") or given.get("preset") or origin == Checkpoint():  # none recorded: the default's
        return options
    if origin.preset is not None:
        return options | {"preset": origin.preset}
    found = origin.located(artifact.parent)
    if found is not None and origin.sha256 == file_sha256(found):
        return options | {"checkpoint": str(found)}
    where = f" at {artifact.parent / origin.path}" if origin.path else ""
    raise InputError(f"{artifact} was made from {origin.describe()}, not found{where}"
                     f"{' with that sha256' if found is not None else ''}: name it with --checkpoint")


@dataclass(frozen=True)
class Lowered:
    written: list[Path]
    seconds: float


def check_target_output(target: str, out: str | Path, chunk: int | None = None, force: bool = False,
                        weights: str | None = None, dump_after: str | None = None) -> list[Path]:
    """Every path `hrmc lower` will write, and its options, checked before any work; the paths."""
    from hrmc.passes import dump_path

    declared = TARGETS[target]
    declared.weight_storage(weights)
    dumped = [check_output(dump_path(out, dump_after), ".onnx")] if dump_after else []
    return declared.backend().check_out(declared, out, chunk, force) + dumped


def lower_target(structured: str | Path, out: str | Path, target: str, pipeline: str, work: Path, *,
                 progress: Callable[[str], None], strip: tuple[str, ...] = (), chunk: int | None = None,
                 dump_after: str | None = None, batch: int = 1, force: bool = False,
                 weights: str | None = None, seed: int = 0, companion: Companion | None = None,
                 about: About = About()) -> Lowered:
    """`hrmc lower`: the pass pipeline (stage 3), then the target's own lowering (stage 4). `companion`:
    written beside the output, with it (`lower --mac-check`). The outputs, the companion and the
    --dump-after graph replace their old ones together, or none does."""
    from hrmc import passes

    started = time.perf_counter()
    declared = TARGETS[target]
    progress(f"running pipeline {pipeline}")
    # graphs are the onnx target's output; other targets lower them from a work folder
    graphs_out = out if declared.suffix == ".onnx" else work / "static.onnx"
    options = LowerOptions(Path(structured).name, batch, force, weights, seed, progress, companion, about)
    with together():
        graphs = passes.lower_onnx(structured, graphs_out, pipeline, strip=strip, chunk=chunk, dump_after=dump_after,
                                   dump_beside=out, progress=progress).graphs
        if declared.suffix != ".onnx":
            progress(f"lowering to {target}")
        written = declared.backend().lower(declared, graphs, out, options)
    return Lowered(written, time.perf_counter() - started)


def run_model(model: HRM, batch: Batch, policy: str, budget: int | None, seed: int = 0, ddim_steps: int = 10,
              on_step: Callable[[int, hrm_ref.Carry], None] | None = None) -> dict[str, np.ndarray]:
    """`hrmc run`: the eager inference, as the arrays the output npz holds.

    Every head's output per step (float32), `halted` and `steps` per step, the inputs echoed and,
    for a denoiser, a DDIM `sample` of the inputs' shape drawn from `seed`.
    """
    trajectory = hrm_ref.run(model, batch, policy, budget, on_step)
    arrays = {name: value.float().numpy() if value.is_floating_point() else value.numpy()
              for name, value in trajectory.items() if name not in STATE_NAMES}
    arrays |= {name: value.numpy() for name, value in batch.items()}
    if model.config.input_mode == "latent":
        sample = DDIMScheduler().sample(ddim_steps, tuple(batch["x_t"].shape),
                                        lambda x, t, cond: denoise(model, x, t, cond), batch.get("cond"), seed)
        arrays["sample"] = sample.numpy()
    return arrays


def save_npz(arrays: dict[str, np.ndarray], path: str | Path) -> None:
    with atomic_output(check_output(path, ".npz")) as temporary:
        with open(temporary, "wb") as handle:
            np.savez(handle, **arrays)


