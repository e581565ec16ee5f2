"""`hrmc lower --mac-check`: NAME.check/ beside NAME.mlpackage (or NAME.aimodel), so that anyone with a Mac
confirms with Core ML (or Core AI) itself what the MIL replay (or coreai-core's reference interpreter) judged here.

The folder holds `check.py` (check.py beside this module, verbatim: stand-alone, it never imports hrmc), the inputs
(the seeded random batch of the ane range check, at the package's batch), the torch float32 reference
trajectory with its decision margins and bands, and for a float16 package the float64 outputs and torch
float16's error against them at every step (`reference.npz`), what check.py must know of the package
(`record.json`: the sha256 of its files, its functions, the limits of the contract, from parity/gate.py)
and the Linux replay's verdict on the same inputs by the same comparison (`linux.json`).
"""

from __future__ import annotations

import contextlib
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from hrmc import __version__, hrm_ref
from hrmc.hrm_ref import HRM, Batch
from hrmc.hrm_ref.compression import COMPRESSIONS
from hrmc.errors import InputError
from hrmc.files import atomic_folder, check_output_folder, together
from hrmc.lowering.export import weights_sha256
from hrmc.record import Record
from hrmc.parity.mac_check import check as check_py
from hrmc.parity.gate import (BAND_FACTOR, DECISION_OUTPUTS, DECISIONS, FLOAT16_ROUNDING, FLOOR_FACTOR, HALF_FACTOR,
                              Q_ERROR_LIMIT, Reference, carry_at, float16_margins, q_margin)
from hrmc.parity.mac_check.check import rmse
from hrmc.targets.coreml import (FLAVOURS, LABEL, PARTS_FILE, ct, read_functions, replay,
                                 saved_program)
from hrmc.targets.executor import Arrays, carry_arrays

SCRIPT = "check.py"  # every check folder has it: the marker that hrmc wrote the folder
# float32 packages on a Mac: Core ML's kernels order sums differently from the reference's, so the Linux replay's
# 1e-5 + 1e-5·|b| becomes 1e-4 + 1e-4·|b| (check.py's docstring says so to its readers)
MAC_ATOL = MAC_RTOL = 1e-4


def check_folder(package: str | Path) -> Path:
    """NAME.check beside NAME.mlpackage."""
    return Path(package).with_suffix(".check")


def check_out(package: str | Path, force: bool) -> Path:
    """The check folder `lower --mac-check` will write: new, or one hrmc wrote (unless `force`)."""
    return check_output_folder(check_folder(package), marker=SCRIPT, force=force)


@contextlib.contextmanager
def beside(package: Path, force: bool) -> Iterator[Path]:
    """A temporary folder that becomes the package's check folder together with the package the block writes
    (hrmc.files.together): a failing block writes neither, and if either cannot take its place, both old
    ones stay as they were."""
    with together(), atomic_folder(check_folder(package), marker=SCRIPT, force=force) as folder:
        yield folder


def write_check(folder: Path, written: Path, shown_as: Path, *, model: HRM, seed: int,
                progress: Callable[[str], None]) -> None:
    """Fill `folder` for the package (or Core AI asset) at `written` (it will ship as `shown_as`): the reference of
    `model` on the seeded inputs, the record check.py verifies, and the Linux verdict (the MIL replay of a package,
    coreai-core's reference interpreter for an asset)."""
    shipped = (_core_ai if shown_as.suffix == ".aimodel" else _core_ml)(written)
    if shipped.record.weights_sha256 != weights_sha256(model):
        raise InputError(f"--mac-check: {shown_as.name} was lowered from other weights than the model given "
                         "(check --checkpoint/--preset)")
    if shipped.record.weights in COMPRESSIONS:  # the compiler's question: the model on its weights as stored
        model = model.with_weights_as_stored(shipped.record.weights, shipped.float_type)
    batch = hrm_ref.random_batch(model.config, shipped.batch, seed, shipped.record.seq_len)
    progress(f"--mac-check: the torch float32 reference on a seeded random batch (seed {seed}, batch {shipped.batch})")
    reference, gates = reference_trajectory(model, shipped.record.policy, shipped.record.budget, batch,
                                            shipped.float_type == "float16")
    inputs = {name: value.numpy() for name, value in batch.items()}
    record = {"package": shown_as.name, "flavour": shipped.flavour, "float_type": shipped.float_type,
              "batch": shipped.batch, "policy": shipped.record.policy, "budget": shipped.record.budget, "seed": seed,
              "hrmc": __version__, "functions": shipped.functions,
              "halting_margin": _halting_margin(reference, model), "gates": gates, "files": shipped.files}
    progress(f"--mac-check: the step and inference functions on the same inputs, on Linux ({shipped.linux['runs_with']})")
    verdict = shipped.verdict(record, inputs, reference)
    (folder / check_py.RECORD).write_text(json.dumps(record, indent=1))  # in order: the gates as judged
    np.savez(folder / check_py.INPUTS, **inputs)
    np.savez(folder / check_py.REFERENCE, **reference)
    (folder / check_py.LINUX).write_text(json.dumps({**shipped.linux, "verdict": verdict}, indent=1))
    (folder / SCRIPT).write_text(Path(check_py.__file__).read_text())
    (folder / "README.txt").write_text(shipped.readme(f"{check_folder(shown_as).name}/{SCRIPT}", shown_as))


@dataclass(frozen=True)
class Shipped:
    """What a check folder needs of the artifact it checks."""

    record: Record  # hrmc's record of it
    flavour: str
    float_type: str
    batch: int
    functions: dict[str, str]  # role → function name: step, inference (and for an asset init, chunk)
    files: dict[str, str]  # sha256 of each file, by path inside it
    linux: dict[str, str]  # what computed the Linux verdict
    verdict: Callable[[dict[str, Any], Arrays, Arrays], dict[str, Any]]  # the Linux verdict, as check.py judges
    readme: Callable[[str, Path], str]  # README.txt, from the script's path and the artifact's name


def _core_ml(package: Path) -> Shipped:
    functions = read_functions(package)  # unverified: the package has not its final name yet
    step = functions["step"]
    return Shipped(step.record, step.flavour, _float_type(step.flavour), step.batch,
                   {"step": step.name, "inference": functions["static"].name},
                   json.loads((package / "Data" / PARTS_FILE).read_text())["files"],
                   {"runs_with": LABEL, "coremltools": ct.__version__},
                   functools.partial(linux_verdict, package), _core_ml_readme)


def _core_ml_readme(check: str, shown_as: Path) -> str:
    return (f"On a Mac, `python3 {check}` runs {shown_as.name} with Core ML predict on each compute unit and judges it "
            f"as hrmc judged it on Linux, where its MIL program was replayed instead ({check_py.LINUX}), then times it "
            "on each: every function's load (compile) time, first call and warm p50/p90, the app loop at batch 1 and "
            "at the package's batch, and where Core ML plans to run the ops (MLComputePlan, macOS 14.4 or later), into "
            f"{check_folder(shown_as).name}/{check_py.LATENCY} and a markdown table to publish, "
            f"{check_py.LATENCY_TABLE} (`hrmc bench --estimate ane --artifact {shown_as.name} --measured "
            f"{check_folder(shown_as).name}/{check_py.LATENCY}` prints the estimate beside it).\n"
            "Needs macOS 15 or later (a multifunction package) and `pip install coremltools numpy` (coremltools 8 or "
            "later).\n")


def _core_ai(asset: Path) -> Shipped:
    from hrmc.targets.coreai._coreai import VERSIONS, coreai
    from hrmc.targets.coreai.package import read_asset
    from hrmc.targets.coreai.runtime import describe, quiet_native_stderr

    record, names = read_asset(asset)
    roles = {"step": "step", "inference": "solve", "init": "init"} | {
        "chunk": name for name in names if name.startswith("chunk")}

    def verdict(record: dict[str, Any], inputs: Arrays, reference: Arrays) -> dict[str, Any]:
        """check.py's own Core AI runner, on the reference interpreter: what the Mac will run, run here."""
        runner = check_py.CoreAIAsset(coreai, VERSIONS["coreai-core"], asset)
        try:
            with quiet_native_stderr():  # the runtime's "Loading function" lines
                step, inference = (runner.predict(check_py.INTERPRETER, record["functions"][role])
                                   for role in ("step", "inference"))
            return check_py.judge(record, reference, check_py.run_functions(step, inference, record, inputs,
                                                                            reference))
        finally:
            runner.close()

    return Shipped(record, check_py.COREAI, "float32", record.batch, roles, check_py.package_files(asset),
                   {"runs_with": describe()}, verdict, _core_ai_readme)


def _core_ai_readme(check: str, shown_as: Path) -> str:
    return (f"On a Mac with macOS 27, `python3 {check}` runs {shown_as.name} in the Core AI runtime on each compute "
            "unit (CPU only; every unit; the Neural Engine or the GPU preferred) and judges it as hrmc judged it on "
            f"Linux, in coreai-core's reference interpreter ({check_py.LINUX}), then times every function and the "
            f"app loop on each, into {check_folder(shown_as).name}/{check_py.LATENCY} and "
            f"{check_py.LATENCY_TABLE}. Elsewhere it runs the reference interpreter, the one unit there is.\n"
            "Needs `pip install coreai-core numpy`.\n")


@dataclass(frozen=True)
class MacCheck:
    """`lower --mac-check` as a target's companion (hrmc.targets.Companion): NAME.check/ beside NAME.mlpackage,
    filled from the package as written, before either appears."""

    model: HRM
    seed: int
    progress: Callable[[str], None]

    def path(self, out: Path) -> Path:
        return check_folder(out)

    @contextlib.contextmanager
    def writing(self, out: Path, force: bool) -> Iterator[Callable[[Path, Path], None]]:
        with beside(out, force) as folder:
            yield functools.partial(write_check, folder, model=self.model, seed=self.seed, progress=self.progress)


def _halting_margin(reference: Arrays, model: HRM) -> list[str]:
    """The outputs whose difference is the halting margin (`hrm_ref.act.halt_margin`), for check.py."""
    if "step.q_halt_logits" not in reference:
        return []
    return ["q_halt_logits"] if model.config.no_ACT_continue else ["q_halt_logits", "q_continue_logits"]


def _float_type(flavour: str) -> str:
    return FLAVOURS[flavour].precision


def reference_trajectory(model: HRM, policy: str, budget: int, batch: Batch,
                         half: bool) -> tuple[Arrays, dict[str, dict]]:
    """reference.npz (per step of the torch float32 trajectory: the carry fed, the outputs, the decisions'
    margins and bands, and for float16 packages the float64 outputs and torch float16's RMSE against them; the
    whole run's final answers and halting steps with theirs) and the gate of each output, as hrmc's Linux gate
    (parity/gate.py) sets them, from the same reference (`Reference.prepared`).

    The bands per step are what `step_parity` computes: float16, BAND_FACTOR × the most hrm_ref float16 changes
    each margin from the same carry (`float16_margins`); float32, the width of the Mac tolerance, 2·(atol +
    rtol·|b|). The whole run's (check.py's band for the inference function against the step function
    chained): BAND_FACTOR × what hrm_ref float16 changes in it (float16), FLOOR_FACTOR × what float64 changes
    in it (float32: trajectory mode's noise floor); a sample whose halting step changes with them is a close
    call."""
    ref = Reference.prepared(model, policy, budget, batch, float16=half)
    run, reference = ref.run32, ref.float32
    other = ref.float16.run(batch) if half else ref.run64
    config, start = reference.model.config, hrm_ref.initial_carry(reference.model, batch)
    steps: dict[str, list[np.ndarray]] = {}
    for s in range(run["steps"].shape[0]):
        carry = carry_at(run, start, s)
        out = reference.step(carry, batch)
        arrays = {f"carry.{name}": value for name, value in carry_arrays(carry).items()}
        arrays |= {f"step.{name}": value for name, value in out.items()}
        arrays |= (_float16_step(ref.float64.step(carry, batch), ref.float16.step(carry, batch), config) if half
                   else _tolerance_bands(out, config))
        for name, value in arrays.items():
            steps.setdefault(name, []).append(value)
    arrays = {name: np.stack(values) for name, values in steps.items()} | _run_bands(run, other, config, half)
    q_scale = max((float(np.abs(run[name]).max()) for name in DECISION_OUTPUTS if name in run), default=0.0)
    floats = [name for name, value in out.items() if value.dtype.kind == "f" and name not in DECISIONS]
    gates = {name: ({"gate": "abs", "limit": Q_ERROR_LIMIT * q_scale} if name in DECISION_OUTPUTS
                    else {"gate": "float16", "factor": HALF_FACTOR, "rounding": FLOAT16_ROUNDING}) if half
             else {"gate": "tolerance", "atol": MAC_ATOL, "rtol": MAC_RTOL} for name in floats}
    return arrays, gates


def _float16_step(out_64: Arrays, out_16: Arrays, config) -> dict[str, np.ndarray]:
    """One step of a float16 package's reference: every float output of hrm_ref float64 (`exact.`), hrm_ref
    float16's RMSE against it (`float16_error.`), and the decisions' float64 margins with their bands."""
    floats = [name for name, value in out_64.items() if value.dtype.kind == "f" and name not in DECISIONS]
    arrays = {f"exact.{name}": out_64[name] for name in floats}
    arrays |= {f"float16_error.{name}": np.float64(rmse(out_16[name], out_64[name])) for name in floats}
    for decision, (margin, band) in float16_margins(out_64, out_16, config).items():
        arrays |= {f"step.{decision}_margin": margin, f"step.{decision}_band": np.full(margin.shape, band)}
    return arrays


def _tolerance_band(value: np.ndarray) -> np.ndarray:
    """Where two values each within the Mac tolerance of the reference may swap a decision."""
    return 2 * (MAC_ATOL + MAC_RTOL * np.abs(value))


def _top2(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The top logit per position, and its lead over the second."""
    top = np.sort(np.asarray(logits, np.float64), axis=-1)
    return top[..., -1], top[..., -1] - top[..., -2]


def _tolerance_bands(out: Arrays, config) -> dict[str, np.ndarray]:
    """One step of a float32 package's reference: the decisions' margins, with the Mac tolerance's width."""
    bands = {}
    margin = q_margin(out, config)
    if margin is not None:
        bands |= {"step.halting_margin": margin, "step.halting_band": _tolerance_band(out["q_halt_logits"])}
    if "logits" in out:
        top, lead = _top2(out["logits"])
        bands |= {"step.answers_margin": lead, "step.answers_band": _tolerance_band(top)}
    return bands


def _run_bands(run: Arrays, other: Arrays, config, half: bool) -> dict[str, np.ndarray]:
    """The whole run's final answers and halting steps, with the reference's margins and bands."""
    factor = BAND_FACTOR if half else FLOOR_FACTOR
    halting = run["steps"][-1]
    arrays = {"run.steps": halting}
    if "logits" in run:
        top, lead = _top2(run["logits"][-1])
        band = np.full(lead.shape, factor * np.abs(other["logits"][-1] - run["logits"][-1]).max())
        arrays |= {"run.answers": run["logits"][-1].argmax(-1), "run.answers_margin": lead,
                   "run.answers_band": band if half else np.maximum(band, _tolerance_band(top))}
    margin, margin_other = q_margin(run, config), q_margin(other, config)
    if margin is not None:
        common = min(len(margin), len(margin_other))
        # the closest call each sample had while it ran (halted samples keep their last outputs)
        ran = np.arange(len(margin))[:, None] < halting[None, :]
        closest = np.where(ran, np.abs(margin), np.inf).min(axis=0)
        band = factor * np.abs(margin_other[:common] - margin[:common]).max(axis=0)
        if not half:
            band = np.maximum(band, _tolerance_band(run["q_halt_logits"]).max(axis=0))
        arrays |= {"run.halting_margin": closest,
                   "run.halting_band": np.where(other["steps"][-1] != halting, np.inf, band)}
    return arrays


def linux_verdict(package: Path, record: dict[str, Any], inputs: Arrays, reference: Arrays) -> dict[str, Any]:
    """What check.py will judge on the Mac, judged here by the same code on the MIL replay of the package."""
    step, inference = (saved_program(package, record["functions"][role]) for role in ("step", "inference"))
    runs = check_py.run_functions(lambda feed: replay(step, feed), lambda feed: replay(inference, feed), record,
                                inputs, reference)
    return check_py.judge(record, reference, runs)
