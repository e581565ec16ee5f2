"""The pipeline driver: what each CLI command does, as plain functions the CLI calls in order.

Each stage package keeps one entry point; this module only wires them together and owns the
file handling that every command shares (atomic writes, output folders).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

import hrm_ref
from hrm_ref import HRM, Batch
from hrm_ref.act import denoise
from hrm_ref.ddim import DDIMScheduler
from hrmc.errors import InputError

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


def load_inputs(model: HRM, inputs: str | None, batch_size: int, seed: int, seq_len: int | None) -> Batch:
    if inputs:
        return hrm_ref.load_batch(model.config, inputs)
    return hrm_ref.random_batch(model.config, batch_size, seed, seq_len)


def check_output(path: str | Path, suffix: str) -> Path:
    """An output path must have `suffix` and an existing folder: checked before any long work."""
    path = Path(path)
    if path.suffix != suffix:
        raise InputError(f"output {path} must end in {suffix}")
    if not path.parent.is_dir():
        raise InputError(f"output folder does not exist: {path.parent}")
    return path


def check_output_folder(path: str | Path, suffix: str = "") -> Path:
    """An output folder (an MLX folder, an .mlpackage): its suffix, an existing parent, no file in its place."""
    path = check_output(path, suffix) if suffix else Path(path)
    if not path.parent.is_dir():
        raise InputError(f"output folder does not exist: {path.parent}")
    if path.exists() and not path.is_dir():
        raise InputError(f"output {path} exists and is not a folder")
    return path


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"output folder does not exist: {path.parent}")
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; it replaces `path` (a folder) only if the block succeeds."""
    path = check_output_folder(path)
    # the temporary keeps the suffix: tools that check it (coremltools wants .mlpackage) can write into it
    temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=f".partial{path.suffix}", dir=path.parent))
    try:
        yield temporary
        if path.exists():  # a folder cannot be replaced by one rename: move the old one aside, then delete it
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "previous")
            os.replace(temporary, path)
            shutil.rmtree(old)
        else:
            os.replace(temporary, path)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


@dataclass(frozen=True)
class Target:
    pipeline: str  # the pass pipeline it lowers from
    suffix: str  # its output's ("" for none)
    folder: bool  # whether that output is a folder


# coreml and ane lower the fused float32 graph; targets/coreml.py builds the ane flavour in float16.
TARGETS = {"onnx": Target("default", ".onnx", folder=False), "mlx": Target("mlx", "", folder=True),
           "coreml": Target("mlx", ".mlpackage", folder=True), "ane": Target("mlx", ".mlpackage", folder=True)}


@dataclass(frozen=True)
class Lowered:
    written: list[Path]
    seconds: float


def check_target_output(target: str, out: str | Path) -> Path:
    kind = TARGETS[target]
    return check_output_folder(out, kind.suffix) if kind.folder else check_output(out, kind.suffix)


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def lower_target(structured: str | Path, out: str | Path, target: str, pipeline: str, work: Path, *,
                 progress: Callable[[str], None], strip: tuple[str, ...] = (), chunk: int | None = None,
                 dump_after: str | None = None, batch: int = 1) -> Lowered:
    """`hrmc lower`: the pass pipeline (stage 3), then the target's own lowering (stage 4)."""
    import passes

    started = time.perf_counter()
    progress(f"running pipeline {pipeline}")
    if target == "onnx":
        lowered = passes.lower_onnx(structured, out, pipeline, strip=strip, chunk=chunk, dump_after=dump_after)
        return Lowered(list(lowered.graphs.values()), time.perf_counter() - started)
    dumped = Path(out).with_name(Path(out).name + ".onnx") if dump_after else work / "static.onnx"
    graphs = passes.lower_onnx(structured, dumped, pipeline, strip=strip, chunk=chunk, dump_after=dump_after).graphs
    progress(f"lowering to {target}")
    if target == "mlx":
        from targets.mlx import lower_mlx

        package = lower_mlx(graphs, out, Path(structured).name)
        return Lowered([package.folder], time.perf_counter() - started)
    from targets.coreml import lower_coreml

    out = Path(out)
    names = {"static": out, "step": out.with_name(f"{out.stem}.step.mlpackage"),
             "chunk": out.with_name(f"{out.stem}.chunk{chunk}.mlpackage")}
    written = []
    for kind, graph in graphs.items():
        progress(f"converting the {kind} graph (batch {batch})")
        written.append(lower_coreml(graph, names[kind], target, batch, Path(structured).name).path)
    return Lowered(written, time.perf_counter() - started)


def run_model(model: HRM, batch: Batch, policy: str, budget: int | None, seed: int = 0, ddim_steps: int = 10,
              on_step: Callable[[int, hrm_ref.Carry], None] | None = None) -> dict[str, np.ndarray]:
    """`hrmc run`: the eager inference, as the arrays the output npz holds.

    Every head's output per step (float32), `halted` and `steps` per step, the inputs echoed and,
    for a denoiser, a DDIM `sample` of the inputs' shape drawn from `seed`.
    """
    trajectory = hrm_ref.run(model, batch, policy, budget, on_step)
    arrays = {name: value.float().numpy() if value.is_floating_point() else value.numpy()
              for name, value in trajectory.items() if name not in ("z_H", "z_L")}
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


