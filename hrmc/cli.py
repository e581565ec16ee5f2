"""The `hrmc` command line. Commands read as the pipeline: run → export → lower → parity → bench.

Exit codes: 0 ok; 1 a parity or gate failure; 2 bad input or usage, with one line on stderr; 130 Ctrl-C
(SIGINT), 143 SIGTERM, after cleaning up.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import click
import numpy as np

from hrmc import hrm_ref
from hrmc.hrm_ref.act import batch_size as batch_size_of
from hrmc.hrm_ref.act import resolve_budget
from hrmc.hrm_ref.batch import MAX_SEQ_LEN
from hrmc.hrm_ref.config import MAX_BUDGET, REASONING_DEPTHS
from hrmc import lowering
from hrmc import parity
from hrmc.parity.agreement import accuracy
from hrmc import __version__
from hrmc import binding
from hrmc import targets
from hrmc import timing
from hrmc.errors import GateFailure, HrmcError, InputError
from hrmc.files import LeftBehind, check_apart, check_length, check_output, size_of, work_folder

FORWARD_DTYPES = ("float32", "float64", "bfloat16", "float16")
MAX_BATCH = 65536  # the exported graphs' dynamic batch dimension goes up to this
STEPS = click.IntRange(1, MAX_BUDGET)  # --budget, --chunk
POSITIVE = click.IntRange(min=1)
SEQ_LEN = click.IntRange(1, MAX_SEQ_LEN)
SEED = click.IntRange(0, 2**32 - 1)  # numpy's seeds; --seed of every command


class UserPath(click.Path):
    """A path whose every name fits the file system: a longer one fails each call on it (ENAMETOOLONG),
    after whatever work came first."""

    def convert(self, value, param, ctx):
        try:
            check_length(value)
        except InputError as err:
            self.fail(str(err), param, ctx)
        return super().convert(value, param, ctx)


class FiniteFloat(click.ParamType):
    """A finite float of at least `low`: nan, inf and negative tolerances are usage errors, not verdicts."""

    name = "float"

    def __init__(self, low: float = 0.0) -> None:
        self.low = low

    def convert(self, value, param, ctx) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number) or number < self.low:
            self.fail(f"{value} must be a finite number of at least {self.low:g}", param, ctx)
        return number


def model_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options every command that takes a model shares."""
    options = [
        click.option("--checkpoint", type=UserPath(dir_okay=True), help="Upstream step_N checkpoint or .safetensors file."),
        click.option("--config", "config_path", type=UserPath(), help="Arch yaml for --checkpoint (default: all_config.yaml beside it)."),
        click.option("--preset", type=click.Choice(sorted(hrm_ref.PRESETS)), help=f"Built-in model (default: {hrm_ref.DEFAULT_PRESET})."),
        click.option("--policy", type=click.Choice(hrm_ref.POLICIES), default="max-steps", show_default=True, help="ACT halting policy."),
        click.option("--budget", type=STEPS,
                     help=f"ACT step budget, 1 to {MAX_BUDGET} (default: the model's halt_max_steps)."),
        click.option("--batch", "batch_size", type=click.IntRange(1, MAX_BATCH), default=4, show_default=True,
                     help="Rows of the random batch (lower --target coreml|ane: the package's fixed batch)."),
        click.option("--seed", type=SEED, default=0, show_default=True,
                     help="Seed of the random batch."),
        click.option("--json", "as_json", is_flag=True, help="Print a JSON report on stdout."),
    ]
    return functools.reduce(lambda wrapped, option: option(wrapped), reversed(options), command)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hrmc")
def cli() -> None:
    """hrmc: compile a Hierarchical Reasoning Model for Core ML (ANE) and MLX, provably unchanged."""


def model_source(checkpoint: str | None, preset: str | None) -> str:
    """What the model came from, as reports name it."""
    return checkpoint or f"preset:{preset or hrm_ref.DEFAULT_PRESET}"


def demo_default(checkpoint: str | None, preset: str | None, doing: str, why: str = "") -> str | None:
    """The preset a command works on: the one given, or with neither --checkpoint nor --preset the built-in
    demo model, which the command's first line says (a green light on the demo model is no gate of yours)."""
    if checkpoint or (preset and not why):
        return preset
    preset = preset or hrm_ref.DEFAULT_PRESET
    if preset == hrm_ref.DEFAULT_PRESET:  # a progress line, before any other: errors stay one line of their own
        progress(f"{doing} the built-in demo model {preset} ({why or 'no --checkpoint or --preset given'})")
    return preset


def given(*names: str) -> dict[str, object]:
    """The options among `names` typed on the command line, with their values."""
    context = click.get_current_context()
    return {name: context.params[name] for name in names
            if context.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}


def _check_lowering_source(onnx_model: Path, checkpoint, config_path, preset, policy, budget,
                           seq_len) -> hrm_ref.HRM | None:
    """`lower --onnx-model F` lowers F as exported: model options given beside it must agree with what
    F records (weights, policy, budget, sequence length), not be silently ignored. Returns the model
    they name, if they name one."""
    from hrmc.targets.base import check_source

    record = lowering.read_record(onnx_model)
    model = hrm_ref.load_model(checkpoint, preset, config_path) if checkpoint or preset else None
    check_source(record, onnx_model, model, given("policy").get("policy", record.policy), budget or record.budget,
                 seq_len or record.seq_len)
    return model


def _check_mac_check(target: str, out: str, force: bool, onnx_model: str | None, model: hrm_ref.HRM | None) -> Path:
    """`lower --mac-check`: a Core ML package or Core AI asset to check, a new check folder (or one hrmc wrote)
    and, from an --onnx-model, the model named for the reference the folder saves. Returns the folder."""
    if not targets.TARGETS[target].mac_check:
        raise InputError(f"--mac-check: only for a Core ML package or a Core AI asset (--target coreml, ane or "
                         f"coreai), not --target {target}")
    if onnx_model is not None and model is None:
        raise InputError("--mac-check with --onnx-model: name its model too (--checkpoint or --preset), whose torch "
                         "reference the check saves")
    from hrmc.parity.mac_check.bundle import check_out

    return check_out(out, force)


def _mac_check(model: hrm_ref.HRM, seed: int):
    from hrmc.parity.mac_check.bundle import MacCheck

    return MacCheck(model, seed, progress)


def progress(message: str) -> None:
    click.echo(f"  {message}", err=True)


def echo_json(report: Any) -> None:
    """A report as standard JSON (RFC 8259 has no Infinity or NaN): a non-finite number is written as the
    string "Infinity", "-Infinity" or "NaN", which Python's float() reads back."""
    click.echo(json.dumps(_finite(report), allow_nan=False))


def _finite(value: Any) -> Any:
    """JSON values: numpy scalars as Python's, non-finite floats as strings."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def unrecorded_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--unrecorded", is_flag=True,
                        help="Run an artifact that has no record of its parts (not as hrmc wrote it, or its record "
                             "removed): unverified, reported as UNRECORDED and never a pass (exit 1 at best).")(command)


def accepting_unrecorded(given: bool):
    """Within: artifacts without a record are noted rather than refused, where the user said --unrecorded."""
    return binding.accepting_unrecorded() if given else contextlib.nullcontext([])


@cli.command()
@model_options
@click.option("--inputs", type=UserPath(),
              help="npz with 'inputs' [B, L], 'puzzle_identifiers' [B] and optionally 'labels' [B, L] "
                   "(default: a trained preset's held-out puzzles, else a seeded random batch).")
@click.option("--seq-len", type=SEQ_LEN, help="Sequence length of the random batch (default: the preset's).")
@click.option("--dtype", type=click.Choice(FORWARD_DTYPES), default="float32", show_default=True, help="Forward dtype.")
@click.option("--depth", type=click.Choice(list(REASONING_DEPTHS)), help="Fixed N×T cycles per forward (fast 1×1 … extreme 6×4).")
@click.option("--ddim-steps", type=int, default=10, show_default=True, help="Denoiser models: DDIM steps of the sample.")
@click.option("-o", "--out", type=UserPath(), help="Write the per-step outputs to this .npz file.")
def run(checkpoint, config_path, preset, policy, budget, batch_size, seed, as_json, inputs, seq_len, dtype, depth,
        ddim_steps, out) -> None:
    """Run the reference model (eager PyTorch ACT) and save every step's outputs."""
    if out:
        check_apart([check_output(out, ".npz")], [inputs, checkpoint, config_path])  # before the run, not after
    preset = demo_default(checkpoint, preset, "running")
    model = hrm_ref.load_model(checkpoint, preset, config_path, dtype, depth)
    batch, labels = hrm_ref.load_task(model, preset, inputs, batch_size, seed, seq_len)
    budget = resolve_budget(model, policy, budget)

    def step_done(step: int, carry: hrm_ref.Carry) -> None:
        progress(f"step {step}/{budget}: {int((~carry.halted).sum())} of {len(carry.halted)} samples still running")

    started = time.perf_counter()
    outputs = hrm_ref.run_outputs(model, batch, policy, budget, seed, ddim_steps, step_done)
    seconds = time.perf_counter() - started
    if out:
        hrm_ref.save_outputs(outputs, out)
    steps = outputs["steps"][-1]
    report = {
        "model": model_source(checkpoint, preset),
        "parameters": model.num_parameters(),
        "dtype": dtype, "policy": policy, "budget": budget,
        "batch": batch_size_of(batch), "seq_len": model.inner.sequence_length(batch),
        "steps_run": int(outputs["steps"].shape[0]), "halting_steps": steps.tolist(),
        "seconds": round(seconds, 3), "out": out,
    }
    if labels is not None and "logits" in outputs:
        report["accuracy"] = accuracy(outputs["logits"][-1].argmax(-1), labels)
    if as_json:
        echo_json(report)
        return
    click.echo(f"model {report['model']}: {report['parameters']:,} parameters, {dtype}")
    click.echo(f"batch {report['batch']} × {report['seq_len']} tokens, policy {policy}, budget {budget}")
    click.echo(f"ran {report['steps_run']} ACT steps in {seconds:.2f} s; halting steps per sample: {steps.tolist()}")
    if "accuracy" in report:
        click.echo(f"accuracy against labels: {100 * report['accuracy']['exact']:.2f} % exact, "
                   f"{100 * report['accuracy']['cells']:.2f} % of cells")
    if out:
        click.echo(f"wrote {out}")


@cli.command()
@model_options
@click.option("--inputs", type=UserPath(), help="npz whose sequence length the export fixes (default: the preset's).")
@click.option("--seq-len", type=SEQ_LEN, help="Sequence length to export for (default: the preset's).")
@click.option("-o", "--out", type=UserPath(), required=True, help="The .onnx file; NAME.step.onnx is written beside it.")
def export(checkpoint, config_path, preset, policy, budget, batch_size, seed, as_json, inputs, seq_len, out) -> None:
    """Export to ONNX with the ACT loop and H/L cycles kept as ONNX Loops (plus the one-step model)."""
    check_apart(lowering.export_paths(out), [checkpoint, config_path, inputs])  # before a minute of tracing
    preset = demo_default(checkpoint, preset, "exporting")
    model = hrm_ref.load_model(checkpoint, preset, config_path)
    batch = hrm_ref.load_inputs(model, inputs, batch_size, seed, seq_len, preset)
    result = lowering.export_onnx(model, out, policy, budget, batch, hrm_ref.model_origin(checkpoint, preset), progress)
    report = {"out": str(result.act_path), "step_model": str(result.step_path), "seconds": round(result.seconds, 1),
              "traced": result.traced, "file_bytes": result.file_bytes, "parameter_bytes": result.parameter_bytes,
              "loops": list(lowering.read_record(result.act_path).loops)}
    if as_json:
        echo_json(report)
        return
    how = "" if result.traced else " (the model's trace from the export cache)"
    click.echo(f"wrote {result.act_path} and {result.step_path} in {result.seconds:.1f} s{how}")
    click.echo(f"{result.file_bytes:,} bytes for {result.parameter_bytes:,} bytes of float32 weights "
               f"({result.file_bytes / result.parameter_bytes:.3f}×)")
    for loop in report["loops"]:
        trips = "until every sample halted" if loop["trip_count"] is None else f"{loop['trip_count']} trips"
        click.echo(f"{'  ' * loop['depth']}Loop {loop['kind']}: {trips}")


@cli.command("passes")
def list_passes() -> None:
    """List the graph passes and the named pipelines."""
    from hrmc import passes

    click.echo("passes:")
    for name in passes.PASSES:
        click.echo(f"  {name:<22}{passes.describe(name)}")
    click.echo("pipelines (hrmc lower --pipeline NAME):")
    for name, steps in passes.PIPELINES.items():
        click.echo(f"  {name:<22}{' → '.join(steps)}")
    aliases = ", ".join(f"{old} = {new}" for old, new in passes.PIPELINE_ALIASES.items())
    click.echo(f"  (the 0.1 names still work: {aliases})")


@cli.command()
@model_options
@click.option("--target", type=click.Choice(list(targets.TARGETS)), default="onnx", show_default=True,
              help="Backend to lower to.")
@click.option("--pipeline", help="Named pass pipeline (see `hrmc passes`; default: the target's own).")
@click.option("--dump-after", help="Also write the graph right after this pass (OUT.after-PASS.onnx).")
@click.option("--strip", help="Comma-separated outputs to remove (strip-heads), e.g. hex_logits,free_energy.")
@click.option("--chunk", type=STEPS, help="Also lower a K-step chunk graph with the carry in and out.")
@click.option("--onnx-model", type=UserPath(), help="Start from this exported file instead of exporting afresh.")
@click.option("--seq-len", type=SEQ_LEN, help="Sequence length to export for (default: the preset's).")
@click.option("-o", "--out", type=UserPath(), required=True,
              help="onnx: OUT.onnx (OUT.step.onnx beside it); mlx: a folder; coreml, ane: OUT.mlpackage; coreai: OUT.aimodel.")
@click.option("--force", is_flag=True, help="Replace an output folder that hrmc did not write.")
@click.option("--weights", type=click.Choice(list(dict.fromkeys(w for t in targets.TARGETS.values() for w in t.weights))),
              help="ane: one float16 per weight (the default) or a float16 pair (float32-exact, twice the bytes and "
                   "matmul work); coreml, coreai: float32 (the default); ane, coreml, coreai: int8 (per output "
                   "channel) or lut6, lut4 (a k-means palette per 16 output channels), matmul weights of 2048 "
                   "elements or more, kept compressed in the package or asset.")
@click.option("--mac-check", is_flag=True,
              help="coreml, ane, coreai: also write OUT.check/ beside OUT.mlpackage (OUT.aimodel), a stand-alone "
                   "script with the torch reference on the --seed batch, to confirm on a Mac with Core ML (Core AI) "
                   "what the Linux replay (coreai-core's interpreter) judged (python3 OUT.check/check.py).")
@click.option("--author", help="coreml, ane, coreai: the package's author, as Xcode and an app show it.")
@click.option("--license", "license_", help="coreml, ane, coreai: the package's license.")
@click.option("--model-version", help="coreml, ane, coreai: your model's version (hrmc's own is in its metadata).")
@click.option("--description", help="coreml, ane, coreai: what the model does, first in the package's description.")
def lower(checkpoint, config_path, preset, policy, budget, batch_size, seed, as_json, target, pipeline, dump_after, strip,
          chunk, onnx_model, seq_len, out, force, weights, mac_check, author, license_, model_version,
          description) -> None:
    """Lower to a static graph (no Loop or If) for a target, through a named pass pipeline."""
    from hrmc import passes

    declared = targets.TARGETS[target]
    about = targets.About(author or "", license_ or "", model_version or "", description or "")
    if about != targets.About() and declared.suffix not in (".mlpackage", ".aimodel"):
        raise InputError(f"--author, --license, --model-version and --description describe a Core ML package or a "
                         f"Core AI asset (--target coreml, ane or coreai), not --target {target}")
    if declared.pipeline is None:
        for flag, value in (("--pipeline", pipeline), ("--onnx-model", onnx_model), ("--dump-after", dump_after),
                            ("--strip", strip)):
            if value:
                raise InputError(f"{flag}: the {target} target converts the model itself (torch.export), "
                                 "not an ONNX graph")
    else:
        pipeline = pipeline or declared.pipeline
        # Checked here too, because an export of a minute may come before the pipeline runs.
        passes.pipeline_passes(pipeline)
    outputs = targets.check_outputs(declared, out, chunk, force, weights, dump_after)
    model, inputs, batch = None, [checkpoint, config_path], None
    if onnx_model is not None:
        model = _check_lowering_source(Path(onnx_model), checkpoint, config_path, preset, policy, budget, seq_len)
        inputs += passes.structured_parts(Path(onnx_model)).values()
        policy = given("policy").get("policy")  # else as the export records
    else:
        preset = demo_default(checkpoint, preset, "lowering")
        model = hrm_ref.load_model(checkpoint, preset, config_path)  # exported below
        batch = hrm_ref.load_inputs(model, None, batch_size, seed, seq_len, preset)
    if model is not None:
        declared.check_storable(model)
    if mac_check:
        outputs.append(_check_mac_check(target, out, force, onnx_model, model))
    check_apart(outputs, inputs)
    options = targets.LowerOptions(batch=batch_size, force=force, weights=weights, seed=seed, progress=progress,
                                   companion=_mac_check(model, seed) if mac_check else None, about=about)
    with work_folder("lower") as folder:
        result = targets.lower(declared, out, Path(folder), structured=Path(onnx_model) if onnx_model else None,
                               model=model, policy=policy, budget=budget, batch=batch,
                               origin=hrm_ref.model_origin(checkpoint, preset) if onnx_model is None else None,
                               pipeline=pipeline, options=options,
                               strip=tuple(filter(None, (strip or "").split(","))), chunk=chunk, dump_after=dump_after)
    if as_json:
        echo_json({"target": target, "pipeline": pipeline, "files": [str(p) for p in result.written],
                   "seconds": round(result.seconds, 2)})
        return
    for path in result.written:
        click.echo(f"wrote {path} ({size_of(path):,} bytes)")
    through = f" (pipeline {pipeline})" if pipeline else " (torch.export, no pass pipeline)"
    click.echo(f"lowered for {target}{through} in {result.seconds:.1f} s")


@cli.command()
@model_options
@click.option("--executors", default="torch,static,chunked", show_default=True,
              help=f"Comma-separated executors to time ({', '.join(parity.EXECUTORS)}).")
@click.option("--runs", type=POSITIVE, default=5, show_default=True, help="Timed runs per executor (after one warm-up).")
@click.option("--onnx-model", type=UserPath(), help="The structured export the ONNX-based executors start from.")
@click.option("--chunk", type=STEPS, help="Steps per graph call of the chunked executors (default 4).")
@click.option("--estimate", type=click.Choice(["ane"]),
              help="Time nothing: estimate the ane package's latency per Apple chip from its ops (an analytic "
                   "roofline model, not a measurement), at --batch (default: 1 and 8).")
@click.option("--chip", "chips", multiple=True,
              help="--estimate: the chips to model, repeated or comma-separated (m1, m2, m3, m4, a17, a18; "
                   "default all).")
@click.option("--artifact", type=UserPath(),
              help="--estimate: an ane .mlpackage (hrmc lower --target ane) to estimate at its own batch, "
                   "instead of lowering the model.")
@click.option("--measured", type=UserPath(),
              help="--estimate: a latency.json that the package's check.py wrote on a Mac (hrmc lower --mac-check), "
                   "printed beside the estimate (at its package's batch, unless --batch).")
@click.option("--inputs", type=UserPath(), help="npz inputs to time on (default: a seeded random batch).")
@click.option("--seq-len", type=SEQ_LEN, help="Sequence length of the random batch (default: the model's).")
def bench(checkpoint, config_path, preset, policy, budget, batch_size, seed, as_json, executors, runs,
          onnx_model, chunk, estimate, chips, artifact, measured, inputs, seq_len) -> None:
    """Time the whole inference on each executor, with GFLOP/s against this machine's matmul peak (or,
    with --estimate ane, estimate the ANE's latency from the lowered package's ops)."""
    from hrmc import bench as benchmarks

    if estimate:
        _estimate(checkpoint, config_path, preset, policy, budget, batch_size, seed, as_json, onnx_model, chips,
                  artifact, measured, inputs, seq_len)
        return
    for name, value in (("--artifact", artifact), ("--measured", measured)):
        if value is not None:
            raise InputError(f"{name}: only read with --estimate ane")
    names = [name for name in executors.split(",") if name]
    unknown = [name for name in names if name not in parity.EXECUTORS]
    if unknown or not names:
        raise InputError(f"--executors: unknown executor {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(parity.EXECUTORS)}")
    preset = demo_default(checkpoint, preset, "timing")
    model = hrm_ref.load_model(checkpoint, preset, config_path)
    batch = hrm_ref.load_inputs(model, inputs, batch_size, seed, seq_len, preset)
    report = benchmarks.run_bench(model, batch, names, policy=policy, budget=budget, runs=runs,
                                  preset=model_source(checkpoint, preset), onnx_model=onnx_model, chunk=chunk,
                                  progress=progress)
    echo_json(report.to_dict()) if as_json else click.echo(benchmarks.format_bench(report))


def _estimate(checkpoint, config_path, preset, policy, budget, batch_size, seed, as_json, onnx_model, chips,
              artifact, measured, inputs, seq_len) -> None:
    """`bench --estimate ane`: the shipped package at its own batch, or the model lowered at each batch; with
    --measured, what check.py measured on a Mac beside it."""
    from hrmc.bench import estimate
    from hrmc.parity.latency import read_measured

    chosen = estimate.parse_chips(chips)  # before a lowering of minutes
    latency = read_measured(measured) if measured is not None else None
    if artifact is not None:
        report = estimate.estimate_artifact(artifact, chosen)
    else:
        preset = demo_default(checkpoint, preset, "estimating")
        model = hrm_ref.load_model(checkpoint, preset, config_path)
        if inputs is not None:  # the inputs fix the sequence length the package is lowered for
            seq_len = model.inner.sequence_length(hrm_ref.load_inputs(model, inputs, batch_size, seed, seq_len, preset))
        batches = ([batch_size] if "batch_size" in given("batch_size") else [latency["batch"]] if latency is not None
                   else [1, 8])  # beside a measurement, its package's batch
        report = estimate.estimate_model(model, model_source(checkpoint, preset), policy, budget, batches, seed, chosen,
                                         onnx_model, progress, seq_len)
    beside = estimate.measured_beside(report, latency) if latency is not None else None
    if as_json:
        echo_json(report.to_dict() | ({"measured": {"file": str(measured), **beside}} if beside else {}))
        return
    click.echo(estimate.format_estimate(report))
    if beside:
        click.echo(estimate.format_beside(beside, measured))


@cli.command()
@click.argument("package", type=UserPath())
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--ranges", is_flag=True,
              help="Replay the whole inference in float32 and report every op within 2× of float16's limits.")
@click.option("--inputs", type=UserPath(), help="--ranges: npz inputs (default: a seeded random batch).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="--ranges: seed of the random batch.")
@unrecorded_option
def inspect(package, as_json, ranges, inputs, seed, unrecorded) -> None:
    """ANE-readiness report of a Core ML package: op counts, what keeps work off the ANE, tensors, weights."""
    path = Path(package)
    if path.suffix != ".mlpackage" or not path.is_dir():
        raise InputError(f"{path}: expected an .mlpackage folder (from hrmc lower --target coreml|ane)")
    if inputs is not None and not ranges:
        raise InputError("--inputs: only read with --ranges")
    from hrmc.targets.coreml import range_report, readiness

    with accepting_unrecorded(unrecorded) as unverified:
        report = range_report(path, inputs, seed) if ranges else readiness(path)
    report = {"unrecorded": list(unverified)} | report
    if ranges:
        _print_ranges(report, as_json)
    else:
        _print_readiness(report | {"bound": not unverified}, as_json)
    if unverified:
        raise GateFailure(f"{path}: no record of its parts: reported as it is, not verified")


def _print_readiness(report: dict, as_json: bool) -> None:
    """`inspect`: the ANE-readiness report."""
    from hrmc.targets.coreml import ANE_ALIGNMENT_BYTES

    path = report["package"]
    if as_json:
        echo_json(report)
        return
    for note in report["unrecorded"]:
        click.echo(f"UNRECORDED: {note}")
    click.echo(f"{path}: flavour {report['flavour']}, {report['weights']} weights")
    click.echo("functions: " + ", ".join(f"{name} ({function['role']}, {function['ops']:,} ops)"
                                         for name, function in report["functions"].items()))
    per_parameter = report["weight_bytes_per_float16_parameter"]
    click.echo(f"weights: {report['weight_bytes']:,} bytes in one file" + (
        f", {per_parameter:.3f}× the float16 bytes of the model's {report['parameters']:,} parameters"
        if per_parameter else ""))
    click.echo("parts: " + ("every file matches its recorded sha256" if report["bound"]
                            else "no record of its parts (--unrecorded): not verified"))
    click.echo(f"ops of {next(iter(report['functions']))}: " + ", ".join(f"{op} {count}"
                                                                          for op, count in report["ops"].items()))
    click.echo("kept off the ANE: " + ("; ".join(f"{what} ×{count}" for what, count in report["not_on_ane"].items())
                                       or "nothing found"))
    click.echo(f"largest activations (last axis vs the ANE's {ANE_ALIGNMENT_BYTES}-byte alignment):")
    for tensor in report["largest_tensors"]:
        click.echo(f"  {tensor['name']:<24}{str(tensor['shape']):<20}{tensor['last_axis_bytes']:>6} B  "
                   f"{'aligned' if tensor['aligned'] else 'padded'}")
    click.echo(f"compute plan: {report['compute_plan']}")


def _print_ranges(report: dict, as_json: bool) -> None:
    """`inspect --ranges`; exit 1 where a value overflows float16 on the ANE."""
    if as_json:
        echo_json(report)
    else:
        for note in report["unrecorded"]:
            click.echo(f"UNRECORDED: {note}")
        limits = ", ".join(f"{what} {limit:g}" for what, limit in report["limits"].items())
        click.echo(f"{report['package']}: {report['ops']:,} ops, {report['replay']} on {report['inputs']}")
        click.echo(f"limits: {limits}; reported within {report['headroom']:g}× of them")
        for title, rows in (("near a limit", report["flagged"]), ("tightest", report["tightest"])):
            click.echo(f"{title}:" + ("" if rows else " none"))
            if len(rows) > 20:
                click.echo(f"  (the 20 tightest of {len(rows)}; --json lists every one)")
            for row in rows[:20]:
                node = f"  ONNX {row['node']}" if row["node"] else ""
                headroom = "OVERFLOW" if row["overflows"] else f"{row['headroom']:.2f}×"
                click.echo(f"  {row['op']:<14}{row['name']:<28}{row['max_abs']:>12.6g} / {row['limit']:<8g}"
                           f"{headroom:>10}{node}")
    if report["overflows"]:
        raise GateFailure(f"float16 overflow: {report['overflows'][0]}")


@cli.command("parity")
@click.argument("a", type=click.Choice(list(parity.EXECUTORS)))
@click.argument("b", type=click.Choice(list(parity.EXECUTORS)))
@model_options
@click.option("--mode", type=click.Choice(parity.MODES), default="step", show_default=True,
              help="step: teacher-forced, every output of every step (the gate); trajectory: whole runs vs the noise floor.")
@click.option("--atol", type=FiniteFloat(), default=parity.ATOL, show_default=True, help="Absolute tolerance.")
@click.option("--rtol", type=FiniteFloat(), default=parity.RTOL, show_default=True, help="Relative tolerance.")
@click.option("--psnr", "psnr_db", type=FiniteFloat(low=1.0),
              help="float16 executors (ane): an absolute PSNR floor in dB, against hrm_ref float64, beside the float16 "
                   f"rule (default none; each report says whether {parity.PSNR_DB:g} dB, Apple's bar, is met).")
@click.option("--onnx-model", type=UserPath(), help="The structured export the executors lower from (not shipped).")
@click.option("--artifact", type=UserPath(),
              help="B's shipped artifact, run as it is: a .onnx (its .step.onnx beside it), an MLX folder or a .mlpackage.")
@click.option("--chunk", type=STEPS, help="Steps per graph call of the chunked executor (default 4).")
@click.option("--inputs", type=UserPath(),
              help="npz inputs, 'labels' optional (default: a trained preset's held-out puzzles, else a seeded random batch).")
@click.option("--seq-len", type=SEQ_LEN, help="Sequence length of the random batch.")
@click.option("--localize", is_flag=True,
              help="Step mode up to the first failing step, then name the first node of that step that diverges.")
@unrecorded_option
@click.option("--max-accuracy-drop", type=FiniteFloat(), default=0.0, show_default=True,
              help="B with compressed weights (int8, lut6, lut4), labelled inputs: how many percentage points fewer "
                   "puzzles it may solve exactly than the uncompressed model.")
@click.option("--profile", is_flag=True,
              help="Also print the wall time of each phase (loading, export, lowering, each side's runs, the "
                   "comparison); --json always carries them as `phases`.")
def parity_command(a, b, checkpoint, config_path, preset, policy, budget, batch_size, seed, as_json, mode, atol, rtol,
                   psnr_db, onnx_model, artifact, chunk, inputs, seq_len, localize, unrecorded, max_accuracy_drop,
                   profile) -> int:
    """Run executors A and B on the same inputs and gate the drift (exit 1 on failure).

    Step mode (the default) checks every graph B runs: its step graph against A from the same carry,
    and its whole-inference graph against its own steps chained. --localize runs an artifact whose
    files no longer match their record too (it says so, and exits 1)."""
    if localize and mode != "step":
        raise InputError(f"--localize works in step mode, not --mode {mode}")
    started = time.perf_counter()
    with accepting_unrecorded(unrecorded) as unverified, timing.recording() as phases:
        if artifact is None:
            preset = demo_default(checkpoint, preset, "gating")
        else:  # what it records: its model, policy, budget, batch and sequence length
            typed = given("checkpoint", "preset", "policy", "budget", "batch_size", "seq_len")
            with binding.tolerating_changes() if localize else contextlib.nullcontext():  # it notes them itself
                record = targets.artifact_record(b, artifact)
            taken = parity.artifact_options(record, Path(artifact), typed)
            checkpoint, preset = taken.get("checkpoint", checkpoint), taken.get("preset", preset)
            policy, budget = taken.get("policy", policy), taken.get("budget", budget)
            batch_size, seq_len = taken.get("batch_size", batch_size), taken.get("seq_len", seq_len)
            if not (checkpoint or typed.get("preset")):  # its weights' sha256 is checked: another model is refused
                name = Path(artifact).name
                preset = demo_default(None, preset, "gating",
                                      f"{name} was made from it" if preset else f"{name} records no model")
        with timing.phase("load the model and inputs"):
            model = hrm_ref.load_model(checkpoint, preset, config_path)
            batch, labels = hrm_ref.load_task(model, preset, inputs, batch_size, seed, seq_len)
        if localize:
            found = parity.localize(a, b, model, batch, policy=policy, budget=budget, atol=atol, rtol=rtol,
                                    psnr_db=psnr_db, seed=seed, model_name=model_source(checkpoint, preset),
                                    onnx_model=onnx_model, chunk=chunk, artifact=artifact, progress=progress)
        else:
            report = parity.check_parity(a, b, model, batch, policy=policy, budget=budget, mode=mode, atol=atol,
                                         rtol=rtol, psnr_db=psnr_db, seed=seed,
                                         model_name=model_source(checkpoint, preset), onnx_model=onnx_model,
                                         chunk=chunk, artifact=artifact, labels=labels,
                                         max_accuracy_drop=max_accuracy_drop, progress=progress)
    if localize:
        found.unrecorded = list(unverified)
        echo_json(found.to_dict()) if as_json else click.echo(parity.format_localization(found))
        return 0 if found.passed else 1
    report.unrecorded, report.phases = list(unverified), phases
    echo_json(report.to_dict()) if as_json else click.echo(parity.format_report(report))
    if profile and not as_json:
        click.echo("\n".join(timing.format_phases(phases, time.perf_counter() - started)))
    return 0 if report.passed else 1


class Terminated(SystemExit):
    """SIGTERM (sent by `timeout`, CI cancellation, `docker stop`), raised where the program is so that every
    `finally` cleans up as for Ctrl-C. A SystemExit: click lets it through, and no `except Exception` stops it."""


def _terminate(number: int, frame) -> None:
    raise Terminated(128 + number)


def _warning_line(shown: Callable[..., None], message, category, filename, lineno, file=None, line=None) -> None:
    """hrmc's own warnings (hrmc.files.LeftBehind) in one line; others' as they were `shown`."""
    if issubclass(category, LeftBehind):
        click.echo(f"hrmc: warning: {message}", err=True)
    else:
        shown(message, category, filename, lineno, file, line)


# hrmc builds graphs of millions of small objects in reference cycles (onnx-ir nodes and values, MIL ops and vars,
# torch.export's graphs): at Python's default thresholds (700, 10, 10) the cyclic collector walked them all 17 times
# in one `lower --target ane` of sudoku, 4.6 s of 34 s; at these, twice (1.9 s), at the same peak memory.
COLLECTOR_THRESHOLDS = (10_000, 10, 10)


def run() -> None:
    """The `hrmc` console script: `main`, then the exit functions (a temporary folder still open is removed), then
    the process ends without the interpreter's teardown, which frees every object one by one and collected
    a lowering's million-object graphs after the work was done: 3 s of sudoku's `lower --target ane` and its export."""
    code = main()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more can be said
            stream.flush()
    os._exit(code)


@contextlib.contextmanager
def _fewer_collections():
    previous = gc.get_threshold()
    gc.set_threshold(*COLLECTOR_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*previous)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user mistakes end in one line on stderr, never a traceback. SIGTERM cleans up as
    Ctrl-C does and ends in one line too (exit 143; Ctrl-C: 130)."""
    handled = threading.current_thread() is threading.main_thread()  # where Python runs signal handlers
    previous = signal.signal(signal.SIGTERM, _terminate) if handled else None
    try:
        with warnings.catch_warnings(), _fewer_collections():
            warnings.showwarning = functools.partial(_warning_line, warnings.showwarning)
            return _main(argv)
    except Terminated as err:
        click.echo("hrmc: terminated", err=True)
        return err.code
    finally:
        if handled:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None) -> int:
    try:
        result = cli.main(args=argv, prog_name="hrmc", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as err:
        click.echo(err.ctx.get_help(), err=True)
        return 2
    except click.ClickException as err:
        click.echo(f"hrmc: error: {err.format_message()}", err=True)
        return 2
    except click.Abort:
        click.echo("hrmc: aborted", err=True)
        return 130
    except HrmcError as err:
        click.echo(f"hrmc: error: {err}", err=True)
        return err.exit_code
    return result if isinstance(result, int) else 0


if __name__ == "__main__":  # the interpreter's own exit: a profiler around it (`python -m cProfile -m hrmc.cli`) reports
    sys.exit(main())
