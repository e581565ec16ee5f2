"""The fidelity contract of docs/design.md §4, as two comparisons and one report.

- step mode (the gate): both executors run one ACT step from the *same* carry, the reference's
  carry before step s (teacher forcing), for every step s of the reference trajectory. Every
  output must satisfy |a − b| ≤ atol + rtol·|b|.
  float16 executors are judged in step mode by the float16 rule: against hrm_ref float64, each output's
  RMSE at most twice that of hrm_ref running in float16 from the same carry (`float16_step`).
- trajectory mode: both executors run the whole inference. The drift per step is set beside the
  reference's own fp32 rounding noise (hrm_ref in float64 vs float32 on the same inputs) and is
  gated at max(1e-5, 10 × noise floor). A halting decision is compared only where the
  reference's q margin exceeds its own noise; closer calls are reported as ambiguous.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from hrmc.errors import InputError
from hrmc.hrm_ref import HRM, Batch, Carry
from hrmc.hrm_ref.act import halt_margin, initial_carry
from hrmc.hrm_ref.config import HRMConfig
from hrmc.lowering.cache import cached_arrays
from hrmc.lowering.export import weights_sha256
from hrmc.names import CARRY_NAMES, STATE_NAMES
from hrmc.timing import phase
from hrmc.parity.executors import TorchExecutor, make_executor
from hrmc.parity.mac_check.check import APPLE_PSNR_DB, float16_bound, rmse
from hrmc.targets.executor import Arrays, Executor

ATOL = RTOL = 1e-5
# float16 executors (the ANE), states and per-token outputs, step mode (docs/design.md §4): against hrm_ref float64
# from the same carry, RMSE ≤ HALF_FACTOR × hrm_ref float16's RMSE (FlashAttention's tests: 2 × PyTorch's own
# same-dtype error; PyTorch's compiler accuracy check: 3 × eager float16's RMSE against float64), or where that is
# less, one float16 rounding of the output: FLOAT16_ROUNDING × its RMS (float16's unit roundoff).
HALF_FACTOR = 2.0
FLOAT16_ROUNDING = 2.0 ** -11
PSNR_DB = APPLE_PSNR_DB  # Apple's bar for float16 (ml-ane-transformers): reported for each float16 output, not gated
# float16 executors, decision outputs (docs/design.md §4): |Δq| ≤ Q_ERROR_LIMIT × the reference's q scale (max |q| over
# the run). Measured: the ane packages of tiny (random) and the trained sudoku4 err by at most 3.2e-3 of it.
Q_ERROR_LIMIT = 1e-2
# A decision (halting, argmax answer) must agree wherever the reference's margin exceeds BAND_FACTOR × the most hrm_ref
# float16 changes that margin at that step (against float64, from the same carry).
BAND_FACTOR = 4
DECISION_OUTPUTS = ("q_halt_logits", "q_continue_logits")  # one number per sample: judged by decisions, not PSNR
FLOOR_FACTOR = 10  # trajectory gate: drift ≤ max(ATOL, FLOOR_FACTOR × noise floor)
DECISIONS = ("halted", "steps")
REFERENCE_KIND = "reference"  # the cache's folder for hrm_ref's runs and steps (Reference)
_CODE = ("hrm_ref", "parity")  # hrmc's code whose change makes a cached reference stale


@dataclass
class Row:
    """One output at one step."""

    output: str
    step: int
    max_abs: float
    max_rel: float
    needed: float  # the smallest atol that passes (step mode: with the given rtol)
    limit: float  # the atol it had to meet
    passed: bool
    floor: float | None = None  # the reference's own float64-vs-float32 drift (its rounding noise)
    check: str = "A vs B"  # which comparison: A vs B, or one executor's whole-inference graph vs its own steps
    psnr: float | None = None  # float16 executors: the judged side's PSNR against hrm_ref float64 (dB)
    float16_psnr: float | None = None  # float16 executors: hrm_ref float16's PSNR against float64 (the yardstick)
    ratio: float | None = None  # float16 executors: RMSE of the judged side over hrm_ref float16's, both against float64
    side: str | None = None  # float16 executors: the side judged ("A" or "B": the float16 one)
    # what `passed` judged: atol (|a−b| ≤ limit + rtol·|b|); float16: ratio (RMSE ≤ HALF_FACTOR × hrm_ref float16's),
    # rounding (RMSE ≤ one float16 rounding, where that is more), abs (|a−b| ≤ limit: q values); and, where the report
    # has a PSNR floor (--psnr), PSNR ≥ it
    gated: str = "atol"


@dataclass
class Report:
    mode: str
    executors: list[str]
    model: str
    policy: str
    budget: int
    batch: int
    seed: int
    atol: float
    rtol: float
    psnr_db: float | None = None  # float16 executors: an absolute PSNR floor (--psnr) beside the float16 rule
    rows: list[Row] = field(default_factory=list)
    halting: dict[str, Any] = field(default_factory=dict)
    answers: dict[str, Any] = field(default_factory=dict)  # float16 step mode: argmax per position, as `halting`
    task: dict[str, Any] = field(default_factory=dict)  # whole runs' final answers, halting steps, accuracy (labels)
    notes: list[str] = field(default_factory=list)
    whole_graphs: list[dict[str, Any]] = field(default_factory=list)  # step mode: each whole-inference graph checked
    first_failing_step: int | None = None  # step mode: the first step whose outputs or decisions fail (1-based)
    unrecorded: list[str] = field(default_factory=list)  # --unrecorded: artifacts without a record, run unverified
    compression: dict[str, Any] = field(default_factory=dict)  # B's compressed weights against the uncompressed model
    phases: dict[str, float] = field(default_factory=dict)  # wall seconds by phase of the command (hrmc.timing)

    @property
    def passed(self) -> bool:
        return not self.unrecorded and self.numbers_pass

    @property
    def numbers_pass(self) -> bool:
        """Every output within its limit and every decision agreed: the verdict, but for the record."""
        return (all(row.passed for row in self.rows) and not self.halting.get("mismatched", 0)
                and not self.answers.get("mismatched", 0)
                and not any(graph["halting"]["mismatched"] for graph in self.whole_graphs)
                and self.compression.get("passed", True))

    def failures(self) -> list[Row]:
        return [row for row in self.rows if not row.passed]

    def to_dict(self) -> dict[str, Any]:
        return {"unrecorded": self.unrecorded} | asdict(self) | {"passed": self.passed}


def compare(a: np.ndarray, b: np.ndarray, rtol: float) -> tuple[float, float, float]:
    """max |a−b|, max |a−b|/|b|, and the atol that |a−b| ≤ atol + rtol·|b| needs."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return np.inf, np.inf, np.inf
    difference = np.abs(a - b)
    if difference.size == 0:
        return 0.0, 0.0, 0.0
    relative = difference / np.maximum(np.abs(b), np.finfo(np.float64).tiny)
    return float(difference.max()), float(relative.max()), float(max((difference - rtol * np.abs(b)).max(), 0.0))


def max_abs(a: np.ndarray, reference: np.ndarray) -> float:
    """max |a − reference| in float64; inf when the shapes differ."""
    return compare(a, reference, 0.0)[0]


def psnr(a: np.ndarray, reference: np.ndarray) -> float:
    """20·log10(max|reference| / RMSE), in dB; inf when equal."""
    a, reference = np.asarray(a, np.float64), np.asarray(reference, np.float64)
    rmse = float(np.sqrt(np.mean((a - reference) ** 2))) if a.size else 0.0
    peak = float(np.abs(reference).max()) if reference.size else 0.0
    return float("inf") if rmse == 0 else 20 * np.log10(max(peak, np.finfo(np.float64).tiny) / rmse)


def carry_at(trajectory: Arrays, model_start: Carry, step: int) -> Carry:
    """The reference's carry before `step` (0-based): the start, or the carry after step - 1."""
    if step == 0:
        return model_start
    return Carry(*(torch.from_numpy(np.ascontiguousarray(trajectory[name][step - 1]))
                   for name in CARRY_NAMES))


def q_margin(outputs: Arrays, config: HRMConfig) -> np.ndarray | None:
    """The halting margin per sample (`hrm_ref.act.halt_margin`) in float64; None for a model without q head."""
    if "q_halt_logits" not in outputs:
        return None
    return halt_margin(config, np.asarray(outputs["q_halt_logits"], np.float64),
                       np.asarray(outputs["q_continue_logits"], np.float64))


@dataclass
class Reference:
    """hrm_ref on the compared batch, in float32 (the reference) and float64 (its noise floor, and the truth a
    float16 executor is measured against): executors for the teacher-forced steps, and their whole runs, which
    every check reads and which run once; with `float16`, hrm_ref in float16 too (the float16 rule's
    yardstick). The one place the reference model is chosen: every one of them runs `model`.

    What it computes depends only on the model, the policy, the budget and the inputs, so it is cached like an
    export (lowering/cache.py `cached_arrays`): the whole runs, and each dtype's teacher-forced steps
    (`teacher_forced`). A second gate of the same model on the same inputs (another executor, another artifact
    of it: examples/ci/gate.sh gates five) reads them instead of running hrm_ref again.

    `kept`: the teacher-forced steps by (dtype, step), for every gate this reference serves."""

    float32: TorchExecutor
    float64: TorchExecutor
    run32: Arrays
    run64: Arrays
    float16: TorchExecutor | None = None
    kept: dict[tuple[str, int], Arrays] = field(default_factory=dict)

    @classmethod
    def prepared(cls, model: HRM, policy: str, budget: int, batch: Batch, float16: bool = False,
                 float32: TorchExecutor | None = None,
                 progress: Callable[[str], None] = lambda _: None) -> "Reference":
        """`float32`: a float32 TorchExecutor already prepared on `model` (the gate's A), which serves as the
        reference too: the gate computes each of its steps and runs once."""
        executors = {"float32": float32} if float32 is not None else {}
        for dtype in ("float32", "float64") + (("float16",) if float16 else ()):
            if dtype not in executors:
                executors[dtype] = TorchExecutor(dtype)
                executors[dtype].prepare(model, policy, budget, batch)
        runs = cached_arrays(REFERENCE_KIND, _defined(executors["float32"], batch, "runs"), _CODE,
                             lambda: {"run32": executors["float32"].run(batch), "run64": executors["float64"].run(batch)},
                             progress, "hrm_ref's float32 and float64 runs on these inputs")
        return cls(executors["float32"], executors["float64"], runs["run32"], runs["run64"], executors.get("float16"))

    def teacher_forced(self, batch: Batch, dtypes: tuple[str, ...],
                       progress: Callable[[str], None] = lambda _: None) -> None:
        """Keep every teacher-forced step of the float32 trajectory in each of `dtypes` (float64, float16), from
        the cache or computed (and cached): what a whole gate reads. Without it, `step` computes each as asked
        (`parity --localize` stops at the first failing step)."""
        start, steps = initial_carry(self.float32.model, batch), range(self.run32["steps"].shape[0])
        for dtype in [dtype for dtype in dtypes if any((dtype, s) not in self.kept for s in steps)]:
            def compute(dtype: str = dtype) -> dict[str, Arrays]:
                return {str(s): self.step(dtype, s, carry_at(self.run32, start, s), batch) for s in steps}

            kept = cached_arrays(REFERENCE_KIND, _defined(self.float32, batch, f"{dtype} steps"), _CODE, compute,
                                 progress, f"hrm_ref's {dtype} steps from the reference's carry")
            self.kept |= {(dtype, int(s)): outputs for s, outputs in kept.items()}

    def step(self, dtype: str, s: int, carry: Carry, batch: Batch) -> Arrays:
        """hrm_ref in `dtype` on step `s` from `carry`, the float32 trajectory's carry before it; computed once and
        kept. In float32 while no row has halted, that step is the one the trajectory ran: read from it, the same
        bits (hrm_ref.run is hrm_ref.step on the same carry; a halted row's outputs are frozen in the run)."""
        if dtype == "float32" and not bool(carry.halted.any()):
            return {name: values[s] for name, values in self.run32.items()}
        if (dtype, s) not in self.kept:
            self.kept[dtype, s] = getattr(self, dtype).step(carry, batch)
        return self.kept[dtype, s]

    def serves(self, model: HRM, float16: bool) -> bool:
        return self.float32.model is model.with_dtype("float32") and (self.float16 is not None or not float16)


def _defined(reference: TorchExecutor, batch: Batch, what: str) -> dict:
    """What a cached reference computation (`what`) depends on: the model's weights and config, the policy and
    budget, the inputs' bytes, torch and its thread count (a sum's order, so its float32 bits, can follow it)."""
    model = reference.model
    return {"what": what, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "weights": weights_sha256(model), "config": asdict(model.config), "policy": reference.policy,
            "budget": reference.budget,
            "inputs": {name: [str(value.dtype), list(value.shape), hashlib.sha256(value.numpy().tobytes()).hexdigest()]
                       for name, value in batch.items()}}


def prepared_pair(a: str, b: str, model: HRM, batch: Batch, policy: str, budget: int, *, onnx_model: str | None,
                  chunk: int | None, artifact: str | None, progress,
                  reference: Reference | None = None) -> tuple[list[Executor], Reference]:
    """Executors A and B (B running its shipped `artifact` where one is named) prepared on `batch`, and the
    reference every comparison reads (`reference`: one already prepared for these gates)."""
    executors = [make_executor(a, onnx_model=onnx_model, chunk=chunk),
                 make_executor(b, onnx_model=onnx_model, chunk=chunk, artifact=artifact)]
    progress(f"preparing executor {executors[1].name}")  # B first: how it stores its weights says what A runs
    with phase(f"prepare B ({executors[1].name})"):
        executors[1].prepare(model, policy, budget, batch)
    model = as_stored(model, *executors)
    half = any(executor.precision == "float16" for executor in executors)
    if reference is not None and not reference.serves(model, half):
        raise ValueError(f"the shared reference was prepared for another model than {executors[1].name}'s gate")
    # A is the reference only when it is hrm_ref float32 itself: its runs and steps may come from the cache
    torch_float32 = type(executors[0]) is TorchExecutor and executors[0].dtype == "float32"
    if reference is not None and torch_float32:
        return [reference.float32, executors[1]], reference  # A is the reference: prepared, its steps kept
    progress(f"preparing executor {executors[0].name}")
    with phase(f"prepare A ({executors[0].name})"):
        executors[0].prepare(model, policy, budget, batch)
    if reference is not None:
        return executors, reference
    with phase("reference runs (hrm_ref float32, float64" + (", float16)" if half else ")")):
        a = executors[0]
        reusable = torch_float32 and a.model is model.with_dtype("float32")
        return executors, Reference.prepared(model, policy, budget, batch, float16=half, float32=a if reusable else None,
                                             progress=progress)


def as_stored(model: HRM, a: Executor, b: Executor) -> HRM:
    """The model the gate compares B with (the compiler's question): where B (prepared) stores its weights
    compressed (int8, lut6, lut4), hrm_ref on them exactly as stored, decompressed (`HRM.with_weights_as_stored`),
    which A runs too; else `model`. What the compression costs is the other question (parity.compression)."""
    storage = b.compression()
    if storage is None:
        return model
    if a.name != "torch":
        raise InputError(f"B stores its weights as {storage}: the gate compares it with hrm_ref on those weights (parity "
                         f"torch {b.name}), not with {a.name}")
    return model.with_weights_as_stored(storage, b.precision)


def step_parity(a: Executor, b: Executor, ref: Reference, batch: Batch, report: Report,
                until_failure: bool = False) -> Report:
    """Teacher-forced: every step of the reference trajectory, from the reference's carry (`until_failure`:
    up to the first step that fails, `report.first_failing_step`).

    float32 executors: every output within |a − b| ≤ limit + rtol·|b|, limit = max(atol, 10 × the
    reference's own float64-vs-float32 error on that step): atol wherever the reference itself is
    that exact (random weights: ~1e-6), its own rounding edge where it is not (a trained model's
    logits of magnitude 30–40: 5e-5). A halting decision may differ only within tolerance of a tie.
    float16 executors (`float16_step`): the float16 rule, the float16 side against hrm_ref float64 with hrm_ref
    float16 as the yardstick, all from the same carry. Beside each row: the reference's own one-step rounding
    noise (float64 vs float32 from the same carry).
    """
    reference, trajectory = ref.float32, ref.run32
    start = initial_carry(reference.model, batch)
    judged = [side for side, executor in (("A", a), ("B", b)) if executor.precision == "float16"]
    q_scale = max((float(np.abs(trajectory[name]).max()) for name in DECISION_OUTPUTS if name in trajectory),
                  default=0.0)
    decisions = {"halting": Decisions(), "answers": Decisions()}
    for s in range(trajectory["steps"].shape[0]):
        carry = carry_at(trajectory, start, s)
        out_32 = ref.step("float32", s, carry, batch)
        out_a = out_32 if a is reference else a.step(carry, batch)  # A may be the reference itself
        out_b = b.step(carry, batch)
        out_64 = ref.step("float64", s, carry, batch)
        if judged:
            float16_step({"A": out_a, "B": out_b}, judged, out_32, out_64, ref.step("float16", s, carry, batch), s + 1,
                         q_scale, report, decisions, reference.model.config)
        else:
            float32_step(out_a, out_b, out_32, out_64, s + 1, report, decisions, reference.model.config)
        if report.first_failing_step is None and (report.failures() or any(d.mismatched for d in decisions.values())):
            report.first_failing_step = s + 1
            if until_failure:
                break
    report.halting = decisions["halting"].as_dict()
    if judged:
        report.answers = decisions["answers"].as_dict()
        report.notes += float16_notes(report, q_scale, judged)
    report.notes.append("step mode: both executors start every step from the reference's (torch float32) carry; "
                        f"floor = hrm_ref float64 vs float32 on that step; limit = max(atol, {FLOOR_FACTOR} × floor)")
    return report


@dataclass
class Decisions:
    """Decisions compared: those that differ where the reference called them clearly, and the close calls."""

    compared: int = 0
    mismatched: int = 0
    ambiguous: int = 0
    smallest_clear_margin: float = float("inf")

    def add(self, differs: np.ndarray, close: np.ndarray, margin: np.ndarray | None = None) -> None:
        self.compared += int(differs.size)
        self.mismatched += int((differs & ~close).sum())
        self.ambiguous += int((differs & close).sum())
        if margin is not None and (~close).any():
            self.smallest_clear_margin = min(self.smallest_clear_margin, float(np.abs(margin)[~close].min()))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def float32_step(out_a: Arrays, out_b: Arrays, out_32: Arrays, out_64: Arrays, step: int, report: Report,
                 decisions: dict[str, Decisions], config: HRMConfig) -> None:
    """One step of the float32 contract: every output within max(atol, 10 × the reference's own rounding
    on that step) + rtol·|b|; a halting decision may differ only within tolerance of a tie."""
    for name in [n for n in out_b if n in out_a and n not in DECISIONS]:
        max_abs, max_rel, needed = compare(out_a[name], out_b[name], report.rtol)
        floor = compare(out_32[name], out_64[name], 0.0)[0]
        # atol, unless the reference's own float32 rounding on this step is larger (a trained model's large
        # logits): then FLOOR_FACTOR × that floor, as trajectory mode gates
        limit = max(report.atol, FLOOR_FACTOR * floor)
        report.rows.append(Row(name, step, max_abs, max_rel, needed, limit, needed <= limit, floor))
    differs = (out_a["halted"] != out_b["halted"]) | (out_a["steps"] != out_b["steps"])
    margin = q_margin(out_b, config)
    close = np.zeros_like(differs) if margin is None else (
        np.abs(margin) <= 2 * (report.atol + report.rtol * np.abs(out_b["q_halt_logits"])))
    decisions["halting"].add(differs, close)


def float16_row(name: str, step: int, got: np.ndarray, yardstick: np.ndarray, exact: np.ndarray, noise: float,
                q_scale: float, psnr_db: float | None) -> Row:
    """One float16 output at one step (docs/design.md §4): `got` (the float16 side) and `yardstick` (hrm_ref
    float16) against `exact` (hrm_ref float64), all from the same carry. States and per-token outputs: RMSE ≤
    max(HALF_FACTOR × the yardstick's, one float16 rounding of the output), and PSNR ≥ `psnr_db` if given; q values
    (one number per sample, where PSNR depends on the batch): |Δq| ≤ Q_ERROR_LIMIT × `q_scale`, their RMSE ratio
    and PSNRs for information. `noise`: the float32 reference's own error on it (float64 vs float32)."""
    error, yardstick_error = rmse(got, exact), rmse(yardstick, exact)
    largest, relative, _ = compare(got, exact, 0.0)
    ratio = error / yardstick_error if yardstick_error else (0.0 if error == 0 else float("inf"))
    measured = dict(psnr=float(psnr(got, exact)), float16_psnr=float(psnr(yardstick, exact)), ratio=float(ratio))
    if name in DECISION_OUTPUTS:
        limit = Q_ERROR_LIMIT * q_scale
        return Row(name, step, largest, relative, largest, limit, bool(largest <= limit), noise, gated="abs", **measured)
    limit, rule = float16_bound(yardstick_error, exact, HALF_FACTOR, FLOAT16_ROUNDING)
    passed = bool(error <= limit) and (psnr_db is None or bool(measured["psnr"] >= psnr_db))
    return Row(name, step, largest, relative, error, limit, passed, noise, gated=rule, **measured)


def failure(row: Row, psnr_db: float | None = None) -> str:
    """Why a row failed, in words (`psnr_db`: the report's --psnr floor)."""
    if row.ratio is None or row.gated == "abs":
        return f"max |a−b| {row.max_abs:.3g} > {row.limit:.3g}"
    if row.needed > row.limit:
        allowed = (f"{HALF_FACTOR:g} × hrm_ref float16's {row.needed / row.ratio:.3g}" if row.gated == "ratio"
                   else "one float16 rounding")
        return (f"RMSE {row.needed:.3g} > {row.limit:.3g} = {allowed}: {row.ratio:.2f} × hrm_ref float16's error; "
                f"PSNR {row.psnr:.1f} dB, hrm_ref float16 {row.float16_psnr:.1f} dB")
    return f"PSNR {row.psnr:.1f} dB < {psnr_db:g} dB (--psnr)"


def float16_margins(exact: Arrays, yardstick: Arrays, config: HRMConfig) -> dict[str, tuple[np.ndarray, float]]:
    """Each decision's margin in the float64 reference (`exact`), and the band it must clear at this step:
    BAND_FACTOR × the most hrm_ref float16 (`yardstick`, from the same carry) changes that margin. Halting: the
    halting margin per sample (`q_margin`); answers: per position, the top logit's lead over the second, and
    the change of the difference between those two classes."""
    margins = {}
    margin = q_margin(exact, config)
    if margin is not None:
        change = np.abs(q_margin(yardstick, config) - margin).max(initial=0.0)
        margins["halting"] = margin, BAND_FACTOR * float(change)
    if "logits" in exact:
        logits, other = np.asarray(exact["logits"], np.float64), np.asarray(yardstick["logits"], np.float64)
        order = np.argsort(logits, axis=-1)
        first, second = order[..., -1:], order[..., -2:-1]
        lead = (np.take_along_axis(logits, first, -1) - np.take_along_axis(logits, second, -1))[..., 0]
        moved = (np.take_along_axis(other, first, -1) - np.take_along_axis(other, second, -1))[..., 0]
        margins["answers"] = lead, BAND_FACTOR * float(np.abs(moved - lead).max(initial=0.0))
    return margins


def float16_step(outputs: dict[str, Arrays], judged: list[str], out_32: Arrays, out_64: Arrays, out_16: Arrays,
                 step: int, q_scale: float, report: Report, decisions: dict[str, Decisions], config: HRMConfig) -> None:
    """One step of the float16 contract (docs/design.md §4): each `judged` side's (`outputs` by side) states and
    per-token outputs by the float16 rule, its q values on their absolute error against the q scale (both
    against hrm_ref float64, `float16_row`); A's and B's decisions wherever the reference's margin clears its
    band (`float16_margins`)."""
    out_a, out_b = outputs["A"], outputs["B"]
    for side in judged:
        got = outputs[side]
        for name in [n for n in got if n in out_64 and n not in DECISIONS]:
            noise = max_abs(out_32[name], out_64[name])
            row = float16_row(name, step, got[name], out_16[name], out_64[name], noise, q_scale, report.psnr_db)
            row.side = side
            report.rows.append(row)
    margins = float16_margins(out_64, out_16, config)
    if "halting" in margins:  # halting: the sign of the halting margin
        margin, band = margins["halting"]
        differs = (out_a["halted"] != out_b["halted"]) | (out_a["steps"] != out_b["steps"])
        decisions["halting"].add(differs, np.abs(margin) <= band, margin)
    if "answers" in margins and "logits" in out_a and "logits" in out_b:  # answers: the argmax per position
        margin, band = margins["answers"]
        differs = out_a["logits"].argmax(-1) != out_b["logits"].argmax(-1)
        decisions["answers"].add(differs, margin <= band, margin)


def float16_notes(report: Report, q_scale: float, judged: list[str]) -> list[str]:
    """What the float16 contract judged, for the report."""
    sides = " and ".join(judged)
    floor = f"; and PSNR ≥ {report.psnr_db:g} dB (--psnr)" if report.psnr_db is not None else ""
    return [f"float16 contract: {sides} (float16) judged against hrm_ref float64 from the reference's carry, hrm_ref "
            f"float16 from the same carry its yardstick (x16): states and per-token outputs need RMSE ≤ "
            f"{HALF_FACTOR:g} × x16's (rule ratio), or where that is less one float16 rounding of the output, "
            f"2⁻¹¹ × its RMS (rule rounding){floor}; q values |Δq| ≤ {Q_ERROR_LIMIT:g} × the q scale ({q_scale:.3g}, "
            "max |q| of the reference run; rule abs), their ratio and PSNRs for information",
            f"decisions: every halting decision and answer (argmax per position) of A and B must agree wherever "
            f"the reference's margin exceeds {BAND_FACTOR:g} × the most hrm_ref float16 changes it at that step "
            "(closer calls: ambiguous, counted)",
            f"≥ {PSNR_DB:g} dB: whether the output meets Apple's float16 bar (ml-ane-transformers), for information"]


def _pad(trajectory: Arrays, steps: int) -> Arrays:
    """Repeat the last step up to `steps`: after every sample halted, nothing changes."""
    return {name: np.concatenate([value, np.repeat(value[-1:], steps - len(value), axis=0)])
            for name, value in trajectory.items()}


def chained_run(executor: Executor, start: Carry, batch: Batch) -> Arrays:
    """The whole inference as `executor`'s own step graph chained from `start`, carry fed back: what its
    whole-inference graph must reproduce. Halted rows keep their last outputs, as hrm_ref.run does; the carry's
    states after each step come with them, as in hrm_ref.run."""
    carry, history, last = start, {}, None
    while not bool(carry.halted.all()):
        outputs = executor.step(carry, batch)
        halted_before = carry.halted.numpy()
        heads = {name: value for name, value in outputs.items() if name not in DECISIONS + STATE_NAMES}
        if last is not None:
            heads = {name: np.where(halted_before.reshape((-1,) + (1,) * (value.ndim - 1)), last[name], value)
                     for name, value in heads.items()}
        last = heads
        for name, value in (heads | {name: outputs[name] for name in DECISIONS + STATE_NAMES}).items():
            history.setdefault(name, []).append(value)
        carry = Carry(*(torch.from_numpy(np.ascontiguousarray(outputs[name])) for name in CARRY_NAMES))
    return {name: np.stack(values) for name, values in history.items()}


def _drift(run_a: Arrays, run_b: Arrays, ref32: Arrays, ref64: Arrays, report: Report, check: str,
           config: HRMConfig) -> dict[str, Any]:
    """Drift rows of two whole runs against the reference's noise floor; returns the halting comparison."""
    length = max(run["steps"].shape[0] for run in (run_a, run_b, ref32, ref64))
    run_a, run_b, ref32, ref64 = (_pad(run, length) for run in (run_a, run_b, ref32, ref64))
    halting_a, halting_b = run_a["steps"][-1], run_b["steps"][-1]
    # A sample is a close call if the reference's q margin, at some step up to its halting, is
    # within FLOOR_FACTOR × its own float64-vs-float32 noise.
    margin32, margin64 = q_margin(ref32, config), q_margin(ref64, config)
    if margin64 is None:
        close = np.zeros(halting_a.shape, bool)
    else:
        noise = np.abs(margin64 - margin32)
        close = (np.abs(margin64) <= np.maximum(FLOOR_FACTOR * noise, report.atol)).any(axis=0)
    close |= ref32["steps"][-1] != ref64["steps"][-1]
    differs = halting_a != halting_b
    compared = ~(differs & close) & (ref32["steps"][-1] == ref64["steps"][-1])
    for name in [n for n in run_b if n in run_a and n in ref64 and n not in DECISIONS + STATE_NAMES]:
        envelope = 0.0
        for s in range(length):
            max_abs, max_rel, _ = compare(run_a[name][s][compared], run_b[name][s][compared], report.rtol)
            floor, _, _ = compare(ref32[name][s][compared], ref64[name][s][compared], 0.0)
            # rounding noise, once in the recurrence, stays: a one-number output whose float32 and float64
            # happen to agree at one step (sudoku's q_continue at step 11: 7e-7 after 5e-6) is a dip, not a floor
            envelope = max(envelope, floor)
            limit = max(report.atol, FLOOR_FACTOR * envelope)
            report.rows.append(Row(name, s + 1, max_abs, max_rel, max_abs, limit, max_abs <= limit, floor, check=check))
    return {"mismatched": int((differs & ~close).sum()), "ambiguous": int((differs & close).sum()),
            "steps_a": halting_a.tolist(), "steps_b": halting_b.tolist(), "left_out": int((~compared).sum())}


def trajectory_parity(run_a: Arrays, run_b: Arrays, ref: Reference, report: Report) -> Report:
    """Whole runs of A and B, drift per step, gated against the reference's float64-vs-float32 noise floor."""
    report.halting = _drift(run_a, run_b, ref.run32, ref.run64, report, "A vs B", ref.float32.model.config)
    report.notes.append(f"trajectory mode: drift gated at max({report.atol:g}, {FLOOR_FACTOR} × noise floor); "
                        "noise floor = hrm_ref float64 vs float32 on the same inputs")
    if report.halting["left_out"]:
        report.notes.append(f"{report.halting['left_out']} sample(s) with a close halting call left out of the drift rows")
    return report


def whole_graph_parity(executor: Executor, whole: Arrays, ref: Reference, batch: Batch, report: Report,
                       progress: Callable[[str], None] = lambda _: None) -> Report:
    """Step mode's second half: every whole-inference graph the executor holds, run whole (`whole`: what its
    `run` returned; then its `other_runs`), against its own step graph (which step parity has just checked
    against the reference) chained from the initial carry, drift gated at max(atol, 10 × the reference's noise
    floor) as trajectory mode gates.

    Not against the reference's whole run: the recurrence is chaotic on random weights (docs/design.md §4),
    and where the noise floor grows 30-fold in one step (random-weight TRM sudoku, 42 layers a step) a
    correct executor's whole run crosses 10 × the floor by chance. Trajectory mode is that comparison.
    """
    against = "its own step graph chained from the initial carry"
    model = ref.float32.model
    whole_runs = {executor.whole_graph(): whole} if executor.whole_graph() is not None else {}
    runs = whole_runs | executor.other_runs(batch)
    if not runs:
        return report
    progress(f"checking {executor.name}'s whole-inference graphs ({'; '.join(runs)}) against its steps")
    chained = chained_run(executor, initial_carry(model, batch), batch)
    for graph, run in runs.items():
        check = f"{executor.name} {'whole' if graph in whole_runs else 'chunk graph'} vs its steps"
        halting = _drift(run, chained, ref.run32, ref.run64, report, check, model.config)
        report.whole_graphs.append({"executor": executor.name, "graph": graph, "check": check, "against": against,
                                    "halting": halting})
    return report


def whole_graphs_parity(executors: list[Executor], runs: list[Arrays], ref: Reference, batch: Batch, report: Report,
                        progress: Callable[[str], None] = lambda _: None) -> Report:
    """Every graph each executor holds besides its step graph (`whole_graph_parity`), `runs` their whole runs."""
    for executor, run in zip(executors, runs):
        whole_graph_parity(executor, run, ref, batch, report, progress)
    if report.whole_graphs:
        report.notes.append(f"whole-inference graphs: run whole and compared with the executor's own step graph "
                            f"chained from the initial carry, drift gated at max({report.atol:g}, {FLOOR_FACTOR} × "
                            "noise floor) as in trajectory mode; the step graph is the one gated against the "
                            "reference (the whole runs against the reference's: --mode trajectory)")
    return report
