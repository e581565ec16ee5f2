"""`hrmc bench --estimate ane`: the latency of an `ane` Core ML package on Apple chips, *estimated* from
its ops by an analytic model. No Apple hardware runs anything: every figure is a model, and says so.

The model is a roofline, op by op over the package's MIL program (`const` ops hold data and are not
ops; what an op reads from them counts as its weight bytes):

    op time      = max(FLOPs / chip float16 peak, bytes / chip memory bandwidth) + per-op overhead
    package time = one call's dispatch + the sum of its ops' times

FLOPs: matmul 2·m·n·k (the output's elements × 2k); softmax 5 per element (max, subtract, exp, sum,
divide); layer_norm 7 (mean, subtract, square, mean, scale, gamma, beta); a reduction 1 per input
element; data movement (reshape, concat, split, slicing, gather, pad, tile, transpose, expand_dims,
squeeze, identity) none; every other op, elementwise, 1 per output element. Bytes: every input
(weights included) and every output, at its element type's width (float16 2 bytes). The chips'
numbers, each with its source, are in `bench.ane_chips`.

Whole inference = one call of the inference function (every ACT step of the budget, unrolled); per step =
one call of the step function. A package without a step function gives per step = whole / budget; one
without an inference function, whole = budget × per step (the report names which).

What a roofline does not see, each of which moves real latency away from these figures:
- ANE tiling: work is cut into tiles across 16 cores with rows padded to 64 bytes, so small or oddly
  shaped ops (attention one head at a time: [S, 16] and [S, S] matmuls) run far below peak; published
  peaks are themselves above what has been measured (see ane_chips);
- SRAM reuse: the ANE keeps activations and weights that fit its on-chip SRAM (tens of MB) off DRAM,
  and its compiler fuses elementwise ops into the matmul before them and drops reshapes; here every
  op's bytes cross DRAM bandwidth once per op, so memory-bound ops are overestimated. Against that,
  the ANE's measured streaming bandwidth is often far below the SoC's (ANEForge's rooflines);
- CPU fallback: ops Core ML keeps off the ANE (an embedding gather on a constant table: `hrmc
  inspect` lists them) run on the CPU, and every switch between devices costs a round trip; here
  every op runs on the ANE;
- float16x2 weights compute each weight matmul twice: counted, as the ANE runs them (the ane default,
  one float16 per weight, once).
- compressed weights (int8, lut6, lut4: constexpr dequantisation ops) hold data, like `const`: the op that
  reads one is charged its compressed bytes (int8 and its scales, the packed 4- or 6-bit indices and their
  palettes), as if the ANE read them compressed and expanded them on the fly. Whether it does, or Core ML
  expands them to float16 when it loads the model (then every read is the float16 bytes), is not published
  for every chip and OS: the figures of a compressed package are the best case.

`--measured latency.json` prints, beside the estimate, what the package's check.py measured on a Mac (`hrmc
lower --mac-check`; hrmc.parity.latency): per compute unit the measured p50 and p90 of each function, the
estimate of the same function at the same batch, and the app loop, measured only (`measured_beside`).
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from hrmc.bench.ane_chips import CHIPS, MICRO, MILLI, Chip
from hrmc.errors import InputError
from hrmc.hrm_ref import HRM, random_batch
from hrmc.hrm_ref.act import resolve_budget
from hrmc.targets import TARGETS
from hrmc.targets.base import lowered_source
from hrmc.targets.coreml import DECOMPRESSING, PackageFunction, ct, function_block, lower_coreml, package_functions

MOVES = frozenset({"reshape", "expand_dims", "squeeze", "identity", "concat", "split", "slice_by_index",
                   "slice_by_size", "gather", "gather_nd", "pad", "tile", "transpose"})
# Per output element: softmax max, subtract, exp, sum, divide; layer_norm mean, subtract, square, mean, scale,
# gamma, beta.
NORMALISING_FLOPS = {"softmax": 5, "layer_norm": 7}
DATA_TYPE = ct.proto.MIL_pb2.DataType
WIDTHS = {DATA_TYPE.Value(name): width for name, width in (
    ("BOOL", 8), ("INT8", 8), ("UINT8", 8), ("FLOAT16", 16), ("BFLOAT16", 16), ("INT16", 16), ("UINT16", 16),
    ("FLOAT32", 32), ("INT32", 32), ("UINT32", 32), ("FLOAT64", 64), ("INT64", 64), ("UINT64", 64),
    ("INT4", 4), ("UINT4", 4), ("UINT6", 6), ("UINT3", 3), ("UINT2", 2), ("UINT1", 1))}  # bits
MODEL_NOTE = ("an analytic roofline model of the package's ops: an estimate, not a measurement "
              "(no Apple hardware ran it)")
FORMULA = ("per op max(FLOPs / float16 peak, bytes / memory bandwidth) + per-op overhead, plus one dispatch per "
           "package call")


@dataclass(frozen=True)
class OpCost:
    type: str
    flops: int
    bytes: int  # read and written: every input (weights included) and output
    weight_bytes: int  # of `bytes`, read from the package's constants


@dataclass
class Package:
    """One package of the set, as the model sees it."""
    role: str  # static (whole inference) or step
    name: str
    batch: int
    costs: list[OpCost] = field(repr=False)

    def to_dict(self) -> dict:
        return {"role": self.role, "name": self.name, "batch": self.batch, "ops": len(self.costs),
                "flops": sum(c.flops for c in self.costs), "bytes": sum(c.bytes for c in self.costs),
                "weight_bytes": sum(c.weight_bytes for c in self.costs)}


@dataclass(frozen=True)
class Timing:
    """A package call's estimated seconds, split by what bounds them."""
    compute: float  # ops bound by their FLOPs
    memory: float  # ops bound by their bytes
    overhead: float  # the call's dispatch and every op's overhead

    @property
    def total(self) -> float:
        return self.compute + self.memory + self.overhead

    def scaled(self, factor: float) -> Timing:
        return Timing(self.compute * factor, self.memory * factor, self.overhead * factor)


@dataclass(frozen=True)
class Row:
    chip: str
    batch: int
    step_ms: float
    whole_ms: float
    step_from: str  # which package (or derivation) each figure comes from
    whole_from: str
    whole_compute_ms: float
    whole_memory_ms: float
    whole_overhead_ms: float


@dataclass
class EstimateReport:
    model: str
    policy: str
    budget: int
    weights: str  # how the packages store matmul weights
    chips: list[Chip]
    packages: list[Package]
    rows: list[Row] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"kind": "estimate", "target": "ane", "note": MODEL_NOTE, "formula": FORMULA, "model": self.model,
                "policy": self.policy, "budget": self.budget, "weights": self.weights,
                "chips": [chip.to_dict() for chip in self.chips],
                "packages": [package.to_dict() for package in self.packages],
                "rows": [asdict(row) for row in self.rows]}


def op_costs(function: PackageFunction) -> list[OpCost]:
    """FLOPs and bytes of every op of one function of a package (`const` ops hold data: not counted)."""
    spec, block, _ = function_block(function.path, function.name)
    tensors = {value.name: _shape(value.type) for value in spec.mlProgram.functions[function.name].inputs}
    constants: dict[str, object] = {}
    compressed: dict[str, int] = {}  # a constexpr dequantisation op's output: the bytes of what it decompresses
    costs = []
    for op in block.operations:
        tensors |= {output.name: _shape(output.type) for output in op.outputs}
        if op.type == "const":
            constants[op.outputs[0].name] = op.attributes["val"]
            continue
        read = [argument.name for binding in op.inputs.values() for argument in binding.arguments
                if argument.WhichOneof("binding") == "name"]
        if op.type in DECOMPRESSING:  # data, as a const is (its constants inline): read compressed where used
            compressed[op.outputs[0].name] = sum(
                _bytes(tensors[argument.name]) if argument.WhichOneof("binding") == "name" else
                _bytes(_shape(argument.value.type)) for binding in op.inputs.values() for argument in binding.arguments)
            continue
        sizes = {name: compressed.get(name, _bytes(tensors[name])) for name in read}
        weights = sum(size for name, size in sizes.items() if name in constants or name in compressed)
        moved = sum(sizes.values()) + sum(_bytes(tensors[o.name]) for o in op.outputs)
        costs.append(OpCost(op.type, _flops(op, tensors, constants), moved, weights))
    return costs


def _shape(value_type) -> tuple[tuple[int, ...], int]:
    """(dimensions, element width in bits) of a MIL value; an ane package's shapes are all fixed."""
    tensor = value_type.tensorType
    if not all(d.HasField("constant") for d in tensor.dimensions):
        raise InputError("the package has dynamic shapes: --estimate ane reads fixed-shape ane packages")
    return tuple(d.constant.size for d in tensor.dimensions), WIDTHS.get(tensor.dataType, 0)


def _elements(shape: tuple[tuple[int, ...], int]) -> int:
    count = 1
    for size in shape[0]:
        count *= size
    return count


def _bytes(shape: tuple[tuple[int, ...], int]) -> int:
    return -(-_elements(shape) * shape[1] // 8)  # sub-byte elements (4- and 6-bit indices) packed


def _flops(op, tensors: dict, constants: dict) -> int:
    outputs = _elements(tensors[op.outputs[0].name])
    if op.type == "matmul":
        x = tensors[op.inputs["x"].arguments[0].name][0]
        transposed = "transpose_x" in op.inputs and \
            constants[op.inputs["transpose_x"].arguments[0].name].immediateValue.tensor.bools.values[0]
        return 2 * outputs * (x[-2] if transposed else x[-1])
    if op.type in NORMALISING_FLOPS:
        return NORMALISING_FLOPS[op.type] * outputs
    if op.type.startswith("reduce_"):
        return _elements(tensors[op.inputs["x"].arguments[0].name])
    return 0 if op.type in MOVES else outputs


def package_time(costs: Iterable[OpCost], chip: Chip) -> Timing:
    """One call of a package on `chip`: per op, max(FLOPs / peak, bytes / bandwidth) plus the per-op
    overhead, summed, plus the call's dispatch."""
    compute = memory = 0.0
    ops = 0
    for cost in costs:
        ops += 1
        flops_time, bytes_time = cost.flops / chip.float16_flops, cost.bytes / chip.memory_bandwidth
        if flops_time >= bytes_time:
            compute += flops_time
        else:
            memory += bytes_time
    return Timing(compute, memory, chip.call_overhead + ops * chip.op_overhead)


def parse_chips(values: Iterable[str]) -> list[Chip]:
    """--chip, repeated or comma-separated; none given: every chip of the table."""
    names = [name.strip().lower() for value in values for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in CHIPS]
    if unknown:
        raise InputError(f"--chip: unknown chip {', '.join(unknown)}; choose from {', '.join(CHIPS)}")
    return [CHIPS[name] for name in dict.fromkeys(names)] or list(CHIPS.values())


def estimate_artifact(path: str | Path, chips: list[Chip]) -> EstimateReport:
    """The estimate of a written ane package set, at the batch it was lowered for."""
    path = Path(path)
    if path.suffix != ".mlpackage" or not path.is_dir():
        raise InputError(f"--artifact: {path}: expected an ane .mlpackage folder (from hrmc lower --target ane)")
    functions = package_functions(path)
    record = next(iter(functions.values())).record
    if record.flavour != "ane":
        raise InputError(f"--artifact: {path} is a {record.flavour} package: --estimate ane reads ane packages "
                         f"(hrmc lower --target ane)")
    packages = [_package(function) for role, function in functions.items() if role in ("static", "step")]
    report = EstimateReport(record.checkpoint.describe(), record.policy, record.budget, record.weights, chips,
                            packages)
    _add_rows(report)
    return report


def estimate_model(model: HRM, source: str, policy: str, budget: int | None, batches: list[int], seed: int,
                   chips: list[Chip], onnx_model: str | Path | None = None,
                   progress: Callable[[str], None] = lambda _: None, seq_len: int | None = None) -> EstimateReport:
    """Lower `model` as `hrmc lower --target ane` does, once per batch (in a temporary folder), and estimate
    each package set; `seq_len`: the sequence length to lower for (default: the model's)."""
    budget = resolve_budget(model, policy, budget)
    target = TARGETS["ane"]
    packages = []
    with tempfile.TemporaryDirectory(prefix="hrmc-estimate-") as folder:
        work = Path(folder)
        progress("running the ane pass pipeline" + (" on a fresh export" if onnx_model is None else ""))
        trace = random_batch(model.config, batches[0], seed, seq_len)
        structured, graphs = lowered_source(Path(onnx_model) if onnx_model else None, work, model, policy, budget,
                                            trace, target.pipeline)
        for size in batches:
            written = lower_coreml(graphs, work / f"batch{size}.mlpackage", target.name, size, structured.name,
                                   progress)
            packages += [_package(function) for function in package_functions(written).values()]
    report = EstimateReport(source, policy, budget, target.weight_storage(None), chips, packages)
    _add_rows(report)
    return report


def _package(function: PackageFunction) -> Package:
    name = function.path.name if function.name == "main" else f"{function.path.name} ({function.name})"
    return Package(function.role, name, function.batch, op_costs(function))


def _add_rows(report: EstimateReport) -> None:
    """A row per chip and batch: the step and whole-inference figures, each from its package or derived."""
    for chip in report.chips:
        for size in dict.fromkeys(package.batch for package in report.packages):
            timings = {package.role: package_time(package.costs, chip) for package in report.packages
                       if package.batch == size}
            if "step" in timings:
                step, step_from = timings["step"], "step function"
            else:
                step, step_from = timings["static"].scaled(1 / report.budget), "inference function / budget"
            if "static" in timings:
                whole, whole_from = timings["static"], "inference function"
            else:
                whole, whole_from = step.scaled(report.budget), "step function × budget"
            report.rows.append(Row(chip.name, size, _ms(step.total), _ms(whole.total), step_from, whole_from,
                                   _ms(whole.compute), _ms(whole.memory), _ms(whole.overhead)))


def _ms(seconds: float) -> float:
    return float(f"{seconds / MILLI:.4g}")


def format_estimate(report: EstimateReport) -> str:
    lines = [f"ANE latency ESTIMATE: {MODEL_NOTE}",
             f"model {report.model}, policy {report.policy}, budget {report.budget}, {report.weights} weights",
             f"{'package':<34}{'batch':>6}{'ops':>9}{'GFLOP':>10}{'MB moved':>11}{'MB weights':>12}"]
    for package in report.packages:
        figures = package.to_dict()
        lines.append(f"{package.role + ': ' + package.name:<34}{package.batch:>6}{figures['ops']:>9,}"
                     f"{figures['flops'] / 1e9:>10.2f}{figures['bytes'] / 1e6:>11.1f}"
                     f"{figures['weight_bytes'] / 1e6:>12.1f}")
    lines.append(f"{'chip':<6}{'TFLOP/s':>8}{'GB/s':>7}{'batch':>6}{'step ms':>10}{'whole ms':>11}"
                 f"   whole: compute / memory / overhead ms")
    chips = {chip.name: chip for chip in report.chips}
    for row in report.rows:
        chip = chips[row.chip]
        derived = "" if row.step_from == "step function" and row.whole_from == "inference function" else \
            f"  (step: {row.step_from}; whole: {row.whole_from})"
        lines.append(f"{row.chip:<6}{chip.float16_flops / 1e12:>8.1f}{chip.memory_bandwidth / 1e9:>7.1f}"
                     f"{row.batch:>6}{row.step_ms:>10.3g}{row.whole_ms:>11.4g}   {row.whole_compute_ms:.4g} / "
                     f"{row.whole_memory_ms:.4g} / {row.whole_overhead_ms:.4g}{derived}")
    lines.append(f"model: {FORMULA}; blind to ANE tiling, SRAM reuse, fusion and CPU fallback (bench/estimate.py)")
    for chip in report.chips:
        lines.append(f"{chip.name} ({chip.label}), {chip.call_overhead / MILLI:g} ms a call, "
                     f"{chip.op_overhead / MICRO:g} µs an op: "
                     + "; ".join(f"{what}: {source}" for what, source in chip.sources.items()))
        if chip.assumed:
            lines.append(f"  {chip.name}: NOT PUBLISHED for this chip, assumed: {', '.join(chip.assumed)}")
    lines.append(f"per-op overhead (every chip): {report.chips[0].op_overhead_source}")
    return "\n".join(lines)


def measured_beside(report: EstimateReport, measured: dict) -> dict:
    """A latency.json (check.py's, measured on a Mac: `hrmc.parity.latency.read_measured`) beside the estimate:
    per compute unit and function, the measured p50 and p90 and the estimate of that function (step: the step
    figure; static: the whole inference's; others none) at the measured batch, for the measured chip where it
    is one of the chips estimated, else for each; the app loop, measured only."""
    batch = measured["batch"]
    rows = [row for row in report.rows if row.batch == batch]
    chip = measured["measured_on"]["chip"]
    same = [row for row in rows if any(c.name == row.chip and (chip == c.label or chip.startswith(c.label + " "))
                                       for c in report.chips)]
    rows = same or rows
    functions, loops = [], []
    for unit, timed in measured["units"].items():
        for name, figures in timed.get("functions", {}).items():
            role = figures["role"]
            estimate = {row.chip: row.step_ms if role == "step" else row.whole_ms if role == "static" else None
                        for row in rows}
            functions.append({"unit": unit, "check": timed["check"], "function": name, "role": role,
                              "p50_ms": figures["p50_ms"], "p90_ms": figures["p90_ms"], "estimate_ms": estimate})
        loops += [{"unit": unit, **loop} for loop in timed.get("app_loop", [])]
    return {"package": measured["package"], "flavour": measured["flavour"], "batch": batch,
            "measured_on": measured["measured_on"], "chips": [row.chip for row in rows],
            "estimated_batches": sorted({row.batch for row in report.rows}), "functions": functions,
            "app_loop": loops, "not_timed": {unit: timed["error"] for unit, timed in measured["units"].items()
                                             if "error" in timed}}


def format_beside(beside: dict, source: str | Path) -> str:
    """The measurement beside the estimate, as `measured_beside` sets them: measured p50 and p90, then the
    estimate per chip."""
    on = beside["measured_on"]
    lines = [f"MEASURED beside the ESTIMATE: {beside['package']} ({beside['flavour']}, batch {beside['batch']}) "
             f"timed with Core ML predict on {on['chip']} (macOS {on['macos']}, coremltools {on['coremltools']}), "
             f"read from {source}"]
    if beside["flavour"] != "ane":
        lines.append(f"  measured a {beside['flavour']} package; the estimate is of an ane package")
    if not beside["chips"]:
        lines.append(f"  no estimate at batch {beside['batch']} (estimated at batch "
                     f"{', '.join(map(str, beside['estimated_batches']))}): measured only; give --batch "
                     f"{beside['batch']}, or --artifact the measured package")
    lines.append(f"{'unit':<13}{'check':<7}{'function':<14}{'role':<8}{'p50 ms':>10}{'p90 ms':>10}"
                 + "".join(f"{'est. ' + chip + ' ms':>14}" for chip in beside["chips"]))
    for row in beside["functions"]:
        estimates = "".join(f"{'-' if estimate is None else format(estimate, '.4g'):>14}"
                            for estimate in (row["estimate_ms"][chip] for chip in beside["chips"]))
        lines.append(f"{row['unit']:<13}{row['check']:<7}{row['function']:<14}{row['role']:<8}{row['p50_ms']:>10.3f}"
                     f"{row['p90_ms']:>10.3f}{estimates}")
    for unit, error in beside["not_timed"].items():
        lines.append(f"{unit:<13}not timed: {error}")
    if beside["app_loop"]:
        lines.append("app loop, measured only (until every sample has halted; batch 1: one sample):")
        lines.append(f"{'unit':<13}{'loop':<14}{'batch':>6}{'calls':>7}{'steps':>7}{'p50 ms':>10}{'p90 ms':>10}")
        lines += [f"{loop['unit']:<13}{loop['loop']:<14}{loop['batch']:>6}{loop['calls']:>7}{loop['steps']:>7}"
                  f"{loop['p50_ms']:>10.3f}{loop['p90_ms']:>10.3f}" for loop in beside["app_loop"]]
    return "\n".join(lines)


__all__ = ["EstimateReport", "OpCost", "Timing", "estimate_artifact", "estimate_model", "format_beside",
           "format_estimate", "measured_beside", "op_costs", "package_time", "parse_chips"]
