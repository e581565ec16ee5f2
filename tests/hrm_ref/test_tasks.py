"""Task generators, the training loop and the trained fixtures (models trained on real tasks)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from hrmc import hrm_ref
from hrmc.hrm_ref import tasks, train
from hrmc.hrm_ref.presets import TRAINED_PRESETS, test_set_path

SMALL = {"sudoku4": 300, "sudoku6": 120}
# Held-out exact accuracy (q-halt) each committed fixture must keep; docs/fixtures.md has the figures.
EXACT_BAR = {"sudoku4": 0.95, "sudoku6": 0.93, "trm-sudoku4": 0.95}  # measured: 1.000, 0.957 and 0.977


@pytest.fixture(scope="module", params=sorted(SMALL))
def generated(request) -> tuple[str, np.ndarray, np.ndarray]:
    name = request.param
    return (name, *tasks.sudoku_puzzles(tasks.TASKS[name], SMALL[name], seed=7))


def test_same_seed_same_arrays() -> None:
    for name in SMALL:
        a, b = tasks.sudoku_dataset(name, 50, seed=3), tasks.sudoku_dataset(name, 50, seed=3)
        assert a.keys() == b.keys() == {"inputs", "puzzle_identifiers", "labels"}
        assert all(np.array_equal(a[k], b[k]) and a[k].dtype == np.int32 for k in a)
        assert not np.array_equal(a["inputs"], tasks.sudoku_dataset(name, 50, seed=4)["inputs"])


def test_solutions_are_valid(generated) -> None:
    name, _, solutions = generated
    task = tasks.TASKS[name]
    assert all(tasks.is_valid_solution(grid.reshape(task.size, task.size), task.box_rows, task.box_cols)
               for grid in solutions)


def test_validity_check_rejects_broken_grids() -> None:
    grid = tasks.random_grid(np.random.default_rng(0), 2, 3)
    assert tasks.is_valid_solution(grid, 2, 3)
    assert not tasks.is_valid_solution(grid, 3, 2)  # rows and columns fine, boxes of the other shape not
    swapped = grid.copy()
    swapped[0, [0, 1]] = swapped[0, [1, 0]]  # the row still holds every digit, two columns do not
    assert not tasks.is_valid_solution(swapped, 2, 3)


def test_puzzles_match_their_solutions_and_are_unique(generated) -> None:
    name, puzzles, solutions = generated
    task = tasks.TASKS[name]
    given = puzzles > 0
    assert np.array_equal(puzzles[given], solutions[given])
    blanks = (~given).sum(1)
    assert blanks.min() >= task.min_blanks and blanks.max() <= task.max_blanks
    assert all(tasks.count_solutions(p.reshape(task.size, task.size), task.box_rows, task.box_cols) == 1
               for p in puzzles)
    assert len({p.tobytes() for p in puzzles}) == len(puzzles)


def test_encoding_is_upstreams(generated) -> None:
    name, puzzles, solutions = generated
    task = tasks.TASKS[name]
    data = tasks.encode(puzzles, solutions)
    assert data["inputs"].shape == data["labels"].shape == (len(puzzles), task.seq_len)
    assert data["inputs"].min() >= tasks.BLANK and data["inputs"].max() < task.vocab_size  # no pad in a puzzle
    assert data["labels"].min() == 2 and data["labels"].max() == task.vocab_size - 1
    given = data["inputs"] != tasks.BLANK
    assert np.array_equal(data["inputs"][given], data["labels"][given])
    assert not data["puzzle_identifiers"].any()


def test_train_and_test_are_disjoint() -> None:
    train_set, test_set = tasks.train_test_split("sudoku4", 400, 100, seed=5)
    assert len(train_set["inputs"]) == 400 and len(test_set["inputs"]) == 100
    held_out = {row.tobytes() for row in test_set["inputs"]}
    assert not any(row.tobytes() in held_out for row in train_set["inputs"])


def test_count_solutions_sees_ambiguity() -> None:
    empty = np.zeros((4, 4), dtype=np.int64)
    assert tasks.count_solutions(empty, 2, 2, limit=1000) == 288  # every 4×4 grid
    assert tasks.count_solutions(np.full((4, 4), 1), 2, 2) == 0


@pytest.mark.parametrize("name", ["sudoku4", "trm-sudoku4"])
def test_training_steps_change_the_weights(monkeypatch, name: str) -> None:
    recipe = dataclasses.replace(train.RECIPES[name], batch_size=8, warmup=1, log_every=1)
    data = tasks.sudoku_dataset("sudoku4", 32, seed=11)
    lines: list[str] = []
    look_aheads = []  # TRM without ACT continue has no q_continue target, so no look-ahead forward
    q_continue_target = train.q_continue_target

    def counted(*args):
        look_aheads.append(args)
        return q_continue_target(*args)

    monkeypatch.setattr(train, "q_continue_target", counted)
    threads = torch.get_num_threads()
    model, losses = train.train(recipe, data, steps=3, log=lines.append)
    assert len(look_aheads) == (0 if recipe.config.no_ACT_continue else 3)
    assert torch.get_num_threads() == threads and len(lines) == 3 and len(losses) == 3
    assert all(np.isfinite(losses))
    start = train.init_model(recipe.config, recipe.seed)
    changed = [key for key, value in model.state_dict().items()
               if not torch.equal(value, start.state_dict()[key])]
    assert "inner.lm_head.weight" in changed and "inner.L_level.layers.0.self_attn.qkv_proj.weight" in changed
    assert "inner.q_head.bias" in changed
    frozen = train.inference_copy(model)
    assert not any(p.requires_grad for p in frozen.parameters())
    assert all(torch.equal(a, b) for a, b in zip(frozen.state_dict().values(), model.state_dict().values()))


@pytest.mark.parametrize("name", ["sudoku4", "trm-sudoku4"])
def test_one_step_gradient_keeps_upstreams_graph(name: str) -> None:
    """HRM keeps a graph for the last L-step and H-step; TRM for its whole last H cycle. The values
    are the inference forward's, bit for bit."""
    model = train.init_model(hrm_ref.PRESETS[name], seed=0)
    inner, config = model.inner, model.config
    batch = {k: torch.from_numpy(v) for k, v in tasks.sudoku_dataset("sudoku4", 4, seed=2).items()}
    calls: list[tuple[str, bool]] = []
    levels = [inner.L_level] + ([inner.H_level] if config.family == "hrm" else [])
    hooks = [level.register_forward_hook(lambda module, args, out: calls.append(
        ("L" if module is inner.L_level else "H", torch.is_grad_enabled()))) for level in levels]
    z_H, z_L = inner.initial_state(4, inner.positions(batch))
    try:
        new_H, new_L, outputs = train.one_step_grad(inner, z_H, z_L, batch)
    finally:
        for hook in hooks:
            hook.remove()
    H, L = config.H_cycles, config.L_cycles
    h_by = "L" if config.family == "trm" else "H"  # TRM's one network does the H-steps too
    schedule = [level for _ in range(H) for level in ["L"] * L + [h_by]]
    with_graph = L + 1 if config.family == "trm" else 2
    assert calls == [(level, i >= len(schedule) - with_graph) for i, level in enumerate(schedule)]
    assert not new_H.requires_grad and not new_L.requires_grad and outputs["logits"].requires_grad
    with torch.no_grad():
        expected = inner(z_H, z_L, batch)
    assert torch.equal(new_H, expected[0]) and torch.equal(new_L, expected[1])
    assert all(torch.equal(outputs[k], expected[2][k]) for k in outputs)


def test_trained_presets_are_listed_with_their_files() -> None:
    assert set(TRAINED_PRESETS) <= set(hrm_ref.PRESETS)
    for name in TRAINED_PRESETS:
        assert test_set_path(name).is_file() and hrm_ref.presets.checkpoint_path(name).is_file()
        recipe = train.RECIPES[name]
        task = tasks.TASKS[recipe.task]
        assert hrm_ref.PRESETS[name].vocab_size == task.vocab_size and hrm_ref.PRESETS[name].seq_len == task.seq_len
        with np.load(test_set_path(name)) as held_out:  # the committed test set is the generator's
            assert {k: held_out[k].tolist() for k in held_out.files} == \
                {k: v.tolist() for k, v in tasks.sudoku_dataset(task, recipe.n_test, recipe.data_seed).items()}


@pytest.mark.parametrize("name", TRAINED_PRESETS)
def test_trained_fixture_solves_its_held_out_puzzles(name: str) -> None:
    model = hrm_ref.build_preset(name)
    assert model.config == hrm_ref.PRESETS[name]
    batch = hrm_ref.load_batch(model.config, test_set_path(name))
    with np.load(test_set_path(name)) as held_out:
        labels = torch.from_numpy(held_out["labels"]).long()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batch 256 of a tiny model: a second thread gains little and, on a busy machine, costs 3×
    try:
        outputs = hrm_ref.run(model, batch, "q-halt")
    finally:
        torch.set_num_threads(threads)
    right = outputs["logits"][-1].argmax(-1) == labels
    exact = right.all(-1).float().mean().item()
    assert exact >= EXACT_BAR[name], f"{name}: {exact:.3f} of held-out puzzles solved"
    assert right.float().mean().item() >= exact
    mean_steps = outputs["steps"][-1].float().mean().item()
    if name in ("sudoku4", "trm-sudoku4"):  # TRM's q head halts every held-out puzzle at step 1
        assert mean_steps < model.config.halt_max_steps, "the q head should halt before the budget"
