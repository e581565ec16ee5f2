"""The host loop on fake graphs over small arrays (targets/host_loop.py): the trajectory `run_chunks` makes of
k-step chunks, against one worked out directly, how often it calls the graph, and which graph
`TargetExecutor.run` calls for which chunk."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hrmc.hrm_ref import Carry
from hrmc.names import CARRY_NAMES
from hrmc.targets.base import TargetExecutor
from hrmc.targets.executor import Arrays
from hrmc.targets.host_loop import carry_feed, run_chunks, split_step, until_steps_run

WIDTH = 2  # of the fake states and logits
INPUT = 0.5  # every input of the fake batch


def start_carry(size: int) -> Arrays:
    """The carry `run` starts from (`carry_arrays(initial_carry(…))`): no sample halted yet."""
    z = np.arange(size * WIDTH, dtype=np.float32).reshape(size, WIDTH)
    return {"z_H": z, "z_L": -z, "steps": np.zeros(size, np.int32), "halted": np.zeros(size, bool)}


def batch(size: int) -> dict[str, torch.Tensor]:
    return {"inputs": torch.full((size, WIDTH), INPUT)}


def step(carry: Arrays, inputs: np.ndarray, halt_at: np.ndarray) -> tuple[Arrays, Arrays]:
    """One ACT step as a step graph computes it (hrm_ref.step): a halted row keeps its carry but not its
    outputs, which are computed for every row; row i halts at its step halt_at[i]."""
    halted = carry["halted"]
    steps = carry["steps"] + ~halted
    z_H, z_L = carry["z_H"] + 1, carry["z_L"] - 1
    kept = halted[:, None]
    following = {"z_H": np.where(kept, carry["z_H"], z_H), "z_L": np.where(kept, carry["z_L"], z_L), "steps": steps,
                 "halted": halted | (steps >= halt_at)}
    return following, {"logits": z_H + inputs, "q": z_L[:, 0]}


class Graph:
    """The k-step graph `chunk-budget k` makes of `step`: the carry in and out (`<carry>_next`), outputs and
    `halted_per_step` / `steps_per_step` stacked [k, …]; it keeps the feed of every call."""

    def __init__(self, k: int, halt_at: np.ndarray) -> None:
        self.k, self.halt_at, self.feeds = k, halt_at, []

    def __call__(self, feed: dict[str, np.ndarray]) -> Arrays:
        self.feeds.append(feed)
        carry, per_step = {name: feed[name] for name in CARRY_NAMES}, []
        for _ in range(self.k):
            carry, outputs = step(carry, feed["inputs"], self.halt_at)
            per_step.append(outputs | {"halted_per_step": carry["halted"], "steps_per_step": carry["steps"]})
        return {f"{name}_next": carry[name] for name in CARRY_NAMES} | {
            name: np.stack([outputs[name] for outputs in per_step]) for name in per_step[0]}


def expected(halt_at: np.ndarray) -> Arrays:
    """The trajectory worked out directly: after step t, row i has taken min(t, halt_at[i]) steps and shows the
    outputs of the last of them; the trajectory ends at the last halting step."""
    start = start_carry(len(halt_at))
    taken = np.minimum.outer(np.arange(1, halt_at.max() + 1), halt_at)  # [steps run, batch]
    return {"logits": start["z_H"] + taken[..., None] + INPUT, "q": start["z_L"][:, 0] - taken,
            "halted": taken == halt_at, "steps": taken}


def assert_trajectory(trajectory: Arrays, halt_at: np.ndarray) -> None:
    want = expected(halt_at)
    assert trajectory.keys() == want.keys()
    for name, value in want.items():
        assert np.array_equal(trajectory[name], value), (name, trajectory[name], value)


def drive(halt_at: list[int], chunk: int) -> tuple[Arrays, int, Graph]:
    """`run_chunks` over a fake chunk graph of `chunk` steps; the trajectory, its count of calls, the graph."""
    halt_at = np.array(halt_at, np.int32)
    graph = Graph(chunk, halt_at)
    trajectory, calls = run_chunks(graph, start_carry(len(halt_at)), batch(len(halt_at)), chunk)
    return trajectory, calls, graph


@settings(max_examples=200, deadline=None)
@given(halt_at=st.lists(st.integers(1, 9), min_size=1, max_size=4), chunk=st.integers(1, 12))
def test_chunks_of_any_size_give_the_step_by_step_trajectory(halt_at: list[int], chunk: int) -> None:
    trajectory, calls, graph = drive(halt_at, chunk)
    assert_trajectory(trajectory, np.array(halt_at))
    assert calls == len(graph.feeds) == math.ceil(max(halt_at) / chunk)  # no call once every sample halted


def test_the_loop_stops_once_every_sample_halted() -> None:
    """Two 4-step calls run 8 steps; the last sample halts at the 6th, where the trajectory ends."""
    trajectory, calls, _ = drive([2, 6], chunk=4)
    assert calls == 2 and trajectory["steps"].shape == (6, 2) and trajectory["steps"][-1].tolist() == [2, 6]
    assert trajectory["halted"][:, 1].tolist() == [False] * 5 + [True]


def test_halted_rows_keep_their_last_outputs() -> None:
    trajectory, _, graph = drive([1, 3], chunk=3)
    computed = graph(graph.feeds[0])["logits"][:, 0]  # the graph's own, for the row halted at step 1: they move on
    assert not np.array_equal(computed[1], computed[0])
    assert (trajectory["logits"][:, 0] == trajectory["logits"][0, 0]).all()
    assert (trajectory["q"][:, 0] == trajectory["q"][0, 0]).all() and trajectory["steps"][:, 0].tolist() == [1, 1, 1]


def test_a_budget_the_chunk_does_not_divide() -> None:
    """`max-steps` with budget 5 in 2-step chunks: three calls, the last one's second step dropped."""
    trajectory, calls, _ = drive([5, 5, 5], chunk=2)
    assert calls == 3 and {value.shape[0] for value in trajectory.values()} == {5}
    assert trajectory["steps"][:, 0].tolist() == [1, 2, 3, 4, 5] and trajectory["halted"][-1].all()


def test_one_step_chunks_are_stacked_and_called_once_a_step() -> None:
    trajectory, calls, graph = drive([2, 4], chunk=1)
    assert graph(graph.feeds[0])["logits"].shape == (1, 2, WIDTH)  # the step graph: outputs stacked [1, …]
    assert calls == 4 and trajectory["logits"].shape == (4, 2, WIDTH)
    assert_trajectory(trajectory, np.array([2, 4]))


def test_each_call_starts_from_the_carry_the_last_one_ended_with() -> None:
    _, _, graph = drive([3, 7], chunk=2)
    feeds = list(graph.feeds)
    for before, after in zip(feeds, feeds[1:]):
        ended = graph(before)
        assert all(np.array_equal(after[name], ended[f"{name}_next"]) for name in CARRY_NAMES)
        assert np.array_equal(after["inputs"], np.full((2, WIDTH), INPUT, np.float32))


def test_carry_feed_gives_the_graph_float32_states_and_the_batch_as_numpy() -> None:
    start = start_carry(2)
    wide = start | {"z_H": start["z_H"].astype(np.float64)}
    carry = Carry(*(torch.from_numpy(start[name]) for name in CARRY_NAMES))
    for given_carry in (wide, carry):
        feed = carry_feed(given_carry, batch(2))
        assert feed.keys() == {*CARRY_NAMES, "inputs"} and isinstance(feed["inputs"], np.ndarray)
        assert feed["z_H"].dtype == feed["z_L"].dtype == np.float32
        assert all(np.array_equal(feed[name], start[name]) for name in CARRY_NAMES)


def test_split_step_names_one_steps_outputs_as_executors_do() -> None:
    """A 1-step chunk graph's outputs [1, …] unstacked, and a plain step graph's as they are; the carry without
    `_next`, and no `_per_step` outputs."""
    halt_at, start = np.array([1, 2], np.int32), start_carry(2)
    stacked = Graph(1, halt_at)(carry_feed(start, batch(2)))
    carry, outputs = step(start, np.full((2, WIDTH), INPUT, np.float32), halt_at)
    plain = {f"{name}_next": value for name, value in carry.items()} | outputs
    for values, chunked in ((stacked, True), (plain, False)):
        split = split_step(values, chunked)
        assert split.keys() == carry.keys() | outputs.keys()
        assert all(np.array_equal(split[name], value) for name, value in (carry | outputs).items())


@settings(max_examples=50, deadline=None)
@given(sizes=st.integers(1, 8).flatmap(lambda budget: st.tuples(st.just(budget), st.integers(1, budget))))
def test_until_steps_run_cuts_every_output_to_the_steps_run(sizes: tuple[int, int]) -> None:
    budget, steps_run = sizes
    buffers = {"logits": np.arange(budget * 3 * WIDTH, dtype=np.float32).reshape(budget, 3, WIDTH),
               "halted": np.arange(budget * 3).reshape(budget, 3) % 2 == 0}
    cut = until_steps_run(buffers | {"steps_run": np.array(steps_run, np.int64)})
    assert cut.keys() == buffers.keys()
    assert all(np.array_equal(cut[name], value[:steps_run]) for name, value in buffers.items())


def whole_graph(halt_at: np.ndarray, budget: int):
    """The whole-inference graph: every output over the budget's steps [budget, …], `steps_run` of them run."""
    trajectory = expected(halt_at)
    steps_run = len(trajectory["steps"])
    padded = {name: np.pad(value, [(0, budget - steps_run)] + [(0, 0)] * (value.ndim - 1))
              for name, value in trajectory.items()}
    return lambda feed: padded | {"steps_run": np.array(steps_run)}


class FakeExecutor(TargetExecutor):
    """`TargetExecutor.run` over the fake graphs by role (`static`: the whole inference, budget 8; `step`: the
    1-step chunk graph; `chunk`: the k-step one); it keeps the role of every call."""

    name = "fake"
    open_shipped = open_fresh = trace = None  # abstract in TargetExecutor; `run` needs none of them

    def __init__(self, chunk: int | None, halt_at: np.ndarray) -> None:
        self.chunk, self.start, self.roles = chunk, start_carry(len(halt_at)), []
        self.graphs = {"static": whole_graph(halt_at, budget=8), "step": Graph(1, halt_at),
                       "chunk": Graph(chunk or 1, halt_at)}

    def call(self, role: str, feed: dict) -> Arrays:
        self.roles.append(role)
        return self.graphs[role](feed)

    def graph_name(self, role: str) -> str:
        return f"{role}.onnx"


@pytest.mark.parametrize("chunk, role, calls", [(None, "static", 1), (1, "step", 5), (2, "chunk", 3),
                                               (5, "chunk", 1), (6, "chunk", 1)])
def test_run_calls_the_graph_its_chunk_asks_for(chunk: int | None, role: str, calls: int) -> None:
    """No chunk: the whole-inference graph, once; 1-step chunks: the step graph (no chunk graph is lowered for
    them); longer ones: the chunk graph, until every sample halted."""
    executor = FakeExecutor(chunk, np.array([3, 5], np.int32))
    trajectory = executor.run(batch(2))
    assert executor.roles == [role] * calls and (chunk is None or executor.graph_calls == calls)
    assert_trajectory(trajectory, np.array([3, 5]))
