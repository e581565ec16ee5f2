"""Train the trained presets' fixtures, as upstream's `pretrain.py` + `ACTLossHead` do (facts, not code).

    python -m hrmc.hrm_ref.train sudoku4 [--threads 2] [-o hrm_ref/fixtures]    # or sudoku6, trm-sudoku4

writes `<name>.safetensors` (arch config in the metadata) and `<name>-test.npz` (the held-out
puzzles with their labels). The recipe follows upstream's training:
- a persistent carry across batches: each iteration, rows that halted take a fresh puzzle from the
  batch and restart from H_init / L_init (steps back to 0); the others continue where they stopped;
- one ACT step per iteration with the one-step gradient: every H/L cycle but the last L-step and
  the last H-step runs under no_grad, and the new carry is detached;
- the loss at every step: stablemax cross-entropy (float64) of the logits against the labels,
  divided by the labelled cells of each sequence and summed; plus 0.5 · (BCE of q_halt toward
  "the whole answer is right" + BCE of q_continue toward sigmoid of the next step's
  max(q_halt, q_continue), or its q_halt at the last step), the next step computed without grad;
  the sum is scaled by 1 / batch size;
- halting in training: the budget, or q_halt > q_continue, with exploration (probability 0.1 a
  sample draws a minimum of steps in [2, budget]);
- init as upstream: LeCun truncated normal, q head weight 0 and bias -5, puzzle embedding zero.
AdamW (upstream uses AdamATan2) with linear warmup and a cosine decay.

A TRM (`family: trm`) trains in the same loop as TinyRecursiveModels' training does, where it differs:
the gradient covers the whole last H cycle (its L-steps and the H-step), the earlier H cycles run
under no_grad; with `no_ACT_continue` a sample halts on q_halt > 0 (exploration as above) and the q
loss is the q_halt BCE alone: no q_continue target, so no look-ahead forward.

Deterministic: the data and every random draw come from the recipe's seeds; torch runs with
deterministic algorithms. Torch's CPU kernels round differently with another thread count (measured:
1 and 2 threads give different weights after 30 steps, while 1-thread runs repeat bit for bit), so
the recipes fix 1 thread; `--threads N` trains with N but then does not reproduce the fixtures.
Inference (hrm_ref.model / act) is untouched: this module drives the model's own levels for the
one-step gradient.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hrmc.hrm_ref import tasks
from hrmc.hrm_ref.act import halt_margin, run
from hrmc.hrm_ref.checkpoint import save_checkpoint
from hrmc.hrm_ref.config import HRMConfig
from hrmc.hrm_ref.model import HRM, HRMInner
from hrmc.hrm_ref.presets import FIXTURES_DIR, PRESETS, randomize_weights


@dataclass(frozen=True)
class Recipe:
    task: str
    config: HRMConfig
    steps: int  # optimiser steps (one ACT step of the whole batch each)
    batch_size: int = 128
    n_train: int = 20000
    n_test: int = 256
    data_seed: int = 1
    seed: int = 0
    lr: float = 1e-3
    lr_min_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    halt_exploration_prob: float = 0.1
    loss: str = "stablemax"
    log_every: int = 100
    threads: int = 1  # the fixtures' bits depend on it
    notes: dict = field(default_factory=dict)


RECIPES: dict[str, Recipe] = {
    "sudoku4": Recipe("sudoku4", PRESETS["sudoku4"], steps=4000, n_train=20000),
    "sudoku6": Recipe("sudoku6", PRESETS["sudoku6"], steps=2800, n_train=50000),
    # sudoku4's puzzles, seeds and optimiser on a TRM: the two fixtures compare.
    "trm-sudoku4": Recipe("sudoku4", PRESETS["trm-sudoku4"], steps=6000, n_train=20000),
}


def _s(x: torch.Tensor, epsilon: float = 1e-30) -> torch.Tensor:
    return torch.where(x < 0, 1 / (1 - x + epsilon), x + 1)


def stablemax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-cell -log stablemax(logits)[label], in float64 as upstream."""
    s_x = _s(logits.to(torch.float64))
    logprobs = torch.log(s_x / s_x.sum(-1, keepdim=True))
    return -logprobs.gather(-1, labels.to(torch.long).unsqueeze(-1)).squeeze(-1)


def softmax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.to(torch.float32).flatten(0, -2), labels.to(torch.long).flatten(),
                           reduction="none").view(labels.shape)


LOSSES = {"stablemax": stablemax_cross_entropy, "softmax": softmax_cross_entropy}


def init_model(config: HRMConfig, seed: int) -> HRM:
    """A trainable HRM initialised as upstream (q head (0, -5), zero puzzle embedding)."""
    model = randomize_weights(HRM(config), seed)
    inner = model.inner
    with torch.no_grad():
        inner.q_head.weight.zero_()
        inner.q_head.bias.fill_(-5.0)
    if config.puzzle_emb_ndim > 0:  # a buffer at inference; trained here (upstream: a sparse embedding)
        weights = inner.puzzle_emb.weights
        del inner.puzzle_emb._buffers["weights"]
        inner.puzzle_emb.weights = nn.Parameter(torch.zeros_like(weights))
    model.requires_grad_(True)
    return model.train()


def inference_copy(model: HRM) -> HRM:
    """The trained weights in a plain (frozen, eval) HRM, as build_preset gives it."""
    frozen = HRM(model.config)
    frozen.load_state_dict({k: v.detach().clone() for k, v in model.state_dict().items()})
    return frozen.eval()


def graph_L_steps(config: HRMConfig) -> int:
    """L-steps of an ACT step's last H cycle that keep a graph: HRM's one-step gradient keeps only
    the last one; TRM's keeps the whole last H cycle (every L-step of it, then the H-step)."""
    return config.L_cycles if config.family == "trm" else 1


def one_step_grad(inner: HRMInner, z_H: torch.Tensor, z_L: torch.Tensor,
                  batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """`HRMInner.forward` with upstream's gradient: the last `graph_L_steps` L-steps and the last
    H-step keep a graph, every earlier step runs under no_grad; the new carry is detached."""
    config = inner.config
    injection = inner.input_embeddings(batch)
    cos_sin = inner.cos_sin(injection)
    last_h, with_graph = config.H_cycles - 1, graph_L_steps(config)
    with torch.no_grad():
        for h in range(config.H_cycles):
            for _ in range(config.L_cycles - (with_graph if h == last_h else 0)):
                z_L = inner.L_level(z_L, z_H + injection, cos_sin)
            if h != last_h:
                z_H = inner.h_step(z_H, z_L, cos_sin)
    for _ in range(with_graph):
        z_L = inner.L_level(z_L, z_H + injection, cos_sin)
    z_H = inner.h_step(z_H, z_L, cos_sin)
    return z_H.detach(), z_L.detach(), inner.heads(z_H, batch)


@torch.no_grad()
def q_continue_target(inner: HRMInner, z_H: torch.Tensor, z_L: torch.Tensor, data: dict[str, torch.Tensor],
                      last: torch.Tensor) -> torch.Tensor:
    """q_continue's bootstrapped target: sigmoid of the next step's max(q_halt, q_continue), or its
    q_halt at the last step."""
    _, _, following = inner(z_H, z_L, data)
    return torch.sigmoid(torch.where(last, following["q_halt_logits"],
                                     torch.maximum(following["q_halt_logits"], following["q_continue_logits"])))


def learning_rate(recipe: Recipe, step: int) -> float:
    if step < recipe.warmup:
        return recipe.lr * step / max(1, recipe.warmup)
    progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return recipe.lr * (recipe.lr_min_ratio + (1 - recipe.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def train(recipe: Recipe, train_set: dict[str, np.ndarray], threads: int | None = None, steps: int | None = None,
          log: Callable[[str], None] = print) -> tuple[HRM, list[float]]:
    """Train a model on `train_set` (inputs, puzzle_identifiers, labels): the (trainable) model and
    the loss of every optimiser step. Torch's thread count and determinism flag are restored after."""
    saved = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(recipe.threads if threads is None else threads)
    torch.use_deterministic_algorithms(True)
    try:
        return _train(recipe, train_set, recipe.steps if steps is None else steps, log)
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1])


def _train(recipe: Recipe, train_set: dict[str, np.ndarray], steps: int,
           log: Callable[[str], None]) -> tuple[HRM, list[float]]:
    torch.manual_seed(recipe.seed)
    config = recipe.config
    model = init_model(config, recipe.seed)
    inner = model.inner
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "puzzle_emb" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "puzzle_emb" in n]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=0.0, betas=recipe.betas)
    loss_fn = LOSSES[recipe.loss]
    rng = np.random.default_rng(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    size, budget = recipe.batch_size, config.halt_max_steps
    data = {k: torch.from_numpy(v[:size].copy()) for k, v in train_set.items()}  # replaced at step 0
    init_H, init_L = inner.initial_state(size, config.puzzle_emb_len + data["inputs"].shape[1])
    z_H, z_L = init_H, init_L
    ACT_steps = torch.zeros(size, dtype=torch.int32)
    halted = torch.ones(size, dtype=torch.bool)
    window = {"loss": 0.0, "count": 0, "exact": 0, "steps": 0, "n": 0}
    losses = []
    start = time.perf_counter()
    for step in range(steps):
        fresh_rows = rng.integers(0, len(train_set["inputs"]), size=size)
        rows = halted.view(-1, 1)
        data = {k: torch.where(rows if v.ndim == 2 else halted, torch.from_numpy(train_set[k][fresh_rows]), v)
                for k, v in data.items()}
        z_H = torch.where(rows.unsqueeze(-1), init_H, z_H)
        z_L = torch.where(rows.unsqueeze(-1), init_L, z_L)
        ACT_steps = torch.where(halted, 0, ACT_steps)

        z_H, z_L, outputs = one_step_grad(inner, z_H, z_L, data)
        q_halt, q_continue = outputs["q_halt_logits"], outputs["q_continue_logits"]
        with torch.no_grad():
            ACT_steps = ACT_steps + 1
            last = ACT_steps >= budget
            halted = last | (halt_margin(config, q_halt, q_continue) > 0)
            explore = torch.rand(size, generator=generator) < recipe.halt_exploration_prob
            min_steps = explore * torch.randint(2, budget + 1, (size,), generator=generator, dtype=torch.int32)
            halted = halted & (ACT_steps >= min_steps)
            labels = data["labels"]
            correct = (outputs["logits"].argmax(-1) == labels).all(-1)
        lm_loss = (loss_fn(outputs["logits"], labels) / labels.shape[1]).sum()
        q_loss = F.binary_cross_entropy_with_logits(q_halt, correct.to(q_halt.dtype), reduction="sum")
        if not config.no_ACT_continue:  # TRM without ACT continue trains q_halt alone
            q_loss = q_loss + F.binary_cross_entropy_with_logits(
                q_continue, q_continue_target(inner, z_H, z_L, data, last), reduction="sum")
        loss = lm_loss + 0.5 * q_loss
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(recipe, step)
        optimizer.zero_grad(set_to_none=True)
        (loss / size).backward()
        optimizer.step()

        losses.append(loss.item() / size)
        window["loss"] += losses[-1]
        window["n"] += 1
        window["count"] += int(halted.sum())
        window["exact"] += int((halted & correct).sum())
        window["steps"] += int(ACT_steps[halted].sum())
        if (step + 1) % recipe.log_every == 0 or step + 1 == steps:
            count = max(1, window["count"])
            log(f"step {step + 1:5d}/{steps}  loss {window['loss'] / window['n']:.4f}  "
                f"train exact {window['exact'] / count:.3f}  halt step {window['steps'] / count:.2f}  "
                f"lr {learning_rate(recipe, step):.2e}  {time.perf_counter() - start:.0f} s")
            window = dict.fromkeys(window, 0)
    return model, losses


def evaluate(model: HRM, test_set: dict[str, np.ndarray], policy: str = "q-halt") -> dict[str, float]:
    """Held-out exact (every cell) and cell accuracy of the last step's answer, and the mean halting step."""
    batch = {k: torch.from_numpy(test_set[k]) for k in ("inputs", "puzzle_identifiers")}
    outputs = run(model, batch, policy)
    labels = torch.from_numpy(test_set["labels"]).long()
    right = outputs["logits"][-1].argmax(-1) == labels
    return {"exact": float(right.all(-1).float().mean()), "cell": float(right.float().mean()),
            "mean_steps": float(outputs["steps"][-1].float().mean())}


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An npz with fixed entry timestamps (same arrays, same bytes), written atomically."""
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w") as handle:
                np.lib.format.write_array(handle, np.ascontiguousarray(value), allow_pickle=False)
    os.replace(tmp, path)


def write_checkpoint(model: HRM, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_checkpoint(model, tmp)
    os.chmod(tmp, 0o644)  # safetensors creates its file private
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hrmc.hrm_ref.train", description=__doc__.split("\n")[0])
    parser.add_argument("name", choices=sorted(RECIPES))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: the recipe's 1; another count changes the weights' bits)")
    parser.add_argument("-o", "--output", type=Path, default=FIXTURES_DIR, help="output folder")
    parser.add_argument("--steps", type=int, default=None, help="override the recipe's optimiser steps (trials)")
    args = parser.parse_args(argv)
    recipe = RECIPES[args.name]
    threads = recipe.threads if args.threads is None else args.threads
    if threads != recipe.threads:
        print(f"note: {threads} threads instead of the recipe's {recipe.threads}: the weights will not match "
              f"the committed fixture bit for bit", flush=True)
    start = time.perf_counter()
    train_set, test_set = tasks.train_test_split(recipe.task, recipe.n_train, recipe.n_test, recipe.data_seed)
    print(f"{args.name}: {len(train_set['inputs'])} train / {len(test_set['inputs'])} held-out puzzles "
          f"({time.perf_counter() - start:.1f} s), {recipe.steps if args.steps is None else args.steps} steps "
          f"of batch {recipe.batch_size}, {threads} thread(s)", flush=True)
    model, _ = train(recipe, train_set, threads=threads, steps=args.steps, log=lambda line: print(line, flush=True))
    frozen = inference_copy(model)
    args.output.mkdir(parents=True, exist_ok=True)
    write_checkpoint(frozen, args.output / f"{args.name}.safetensors")
    write_npz(args.output / f"{args.name}-test.npz", test_set)
    q = evaluate(frozen, test_set, "q-halt")
    full = evaluate(frozen, test_set, "max-steps")
    print(f"held-out ({len(test_set['inputs'])} puzzles), q-halt: exact {q['exact']:.4f}  cell {q['cell']:.4f}  "
          f"mean halting step {q['mean_steps']:.2f} of {recipe.config.halt_max_steps}; "
          f"max-steps: exact {full['exact']:.4f}  cell {full['cell']:.4f}")
    print(f"wrote {args.output / args.name}.safetensors and {args.name}-test.npz in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
