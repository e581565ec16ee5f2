"""Where a failing step goes wrong: first-divergence localisation inside one ACT step (`parity --localize`).

Step mode runs up to the first step that fails. That one step then runs again on both sides from the
reference's carry, with every intermediate value exposed and named as in the ONNX step graph B's code
was lowered from (`Executor.trace_step`: onnxruntime with every node output marked, the emitted MLX
module called uncompiled, the MIL replay). B's graph is walked in order; the first node whose output
exceeds the tolerance while every input it reads from another node is within it is where the
divergence starts. The tolerance is the gate's: |a − b| ≤ atol + rtol·|b| in float32; integer and bool
values must match. Where either side computes in float16, the gate's float16 rule (docs/design.md §4) judges
an output by its error against hrm_ref float64 beside hrm_ref float16's, which no ONNX value has (hrm_ref
float16 is eager PyTorch: it has no value of B's graph). So each value is measured by PSNR (B against A), held
to the bound the rule put on the failing step's outputs, as a PSNR: 20·log10(peak / limit) of the loosest
failing output (of every output, where only decisions failed), or `--psnr` if that is higher; values of one
or two numbers per sample (the q head's) by |a − b| ≤ 1e-2 × their scale, as the gate judges q.

torch has no graph: on either side, its exported graph after the `static` pipeline, run by onnxruntime in
float32, stands in for it (the gate has already compared the two: `hrmc parity torch onnx`).
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx_ir as ir

from hrmc.binding import tolerating_changes
from hrmc.hrm_ref import HRM, Batch
from hrmc.hrm_ref.act import batch_size, initial_carry, resolve_budget
from hrmc.names import MADE_BY
from hrmc.parity.executors import make_executor
from hrmc.parity.gate import (ATOL, PSNR_DB, Q_ERROR_LIMIT, RTOL, Report, carry_at, compare, failure, prepared_pair,
                              psnr, step_parity, whole_graphs_parity)
from hrmc.targets.base import structured_source
from hrmc.targets.executor import Executor, Trace

WORST = 10  # the nodes after the first divergence that the report lists, worst first
WEIGHTED = ("MatMul", "Gemm", "Gather")  # the ops that read the model's weights
MISMATCH = 1e9  # the severity of an integer or bool value that differs: beyond any float drift
CYCLE = re.compile(r"^(?:([ahl])(\d+)/)?(?:([ahl])(\d+)/)?(?:([ahl])(\d+)/)?")
LOOPS = {"a": "act step", "h": "H cycle", "l": "L cycle"}
BLOCK = re.compile(r"^(.*\blayers\.\d+)\..*$|^(.*)\.weight$")  # a parameter → its block (or head): the layer


@dataclass
class Drift:
    """One value of B's graph against A's."""

    value: str  # its name in the ONNX graph
    kind: str  # how it is measured: atol (float32), psnr (float16), q (float16, one or two per sample), exact (integers)
    max_abs: float
    measure: float  # atol: the atol it needs (with rtol); psnr: dB; q: the limit on |a−b|; exact: the share that differ
    exceeds: bool
    severity: float  # how far past the tolerance (> 1: beyond it), for ranking
    snr: float | None = None  # psnr: 20·log10(RMS / RMSE), for information: PSNR's peak makes a matmul after a
    # heavy-tailed activation look like a loss where it only carries its input's relative error on


@dataclass
class NodeDrift:
    """A node of B's graph: what made it, where it sits, and the drift of its output and inputs."""

    node: str
    op_type: str
    made_by: str  # the pass that made it ("export": the exporter's node, copied into its cycle by unroll-cycles)
    cycle: str  # which unrolled cycle it belongs to, from its loop labels
    layer: str  # the block (or head) whose weights it reads, or that of the latest node it reads from
    output: Drift
    inputs: list[Drift] = field(default_factory=list)  # those computed by other nodes, compared
    weights: list[str] = field(default_factory=list)  # the model parameters among its constants


@dataclass
class Localization:
    executors: list[str]
    traced: list[str]  # how each side's values were read
    model: str
    policy: str
    budget: int
    batch: int
    seed: int
    measure: str  # "atol" or "psnr"
    tolerance: str
    step: int | None = None  # the first failing step (1-based); None: no step fails
    failing: list[str] = field(default_factory=list)  # what the gate failed at that step
    first: NodeDrift | None = None
    after: list[NodeDrift] = field(default_factory=list)  # the worst nodes after the first, worst first
    compared: int = 0  # values compared
    values: int = 0  # values B's graph computes
    changed: list[str] = field(default_factory=list)  # artifact parts that differ from their records
    unrecorded: list[str] = field(default_factory=list)  # --unrecorded: artifacts without a record, run unverified
    whole_graphs: list[str] = field(default_factory=list)  # no step fails: the other graphs that fail the gate
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.step is None and not self.changed and not self.unrecorded and not self.whole_graphs

    def to_dict(self) -> dict[str, Any]:
        return {"unrecorded": self.unrecorded} | asdict(self) | {"passed": self.passed}


def localize(a: str, b: str, model: HRM, batch: Batch, *, policy: str, budget: int | None, atol: float = ATOL,
             rtol: float = RTOL, psnr_db: float | None = None, seed: int = 0, model_name: str = "",
             onnx_model: str | None = None, chunk: int | None = None, artifact: str | None = None,
             progress: Callable[[str], None] = lambda _: None) -> Localization:
    """Run step mode up to its first failing step, and localise the divergence inside that step. `psnr_db`: the
    gate's optional PSNR floor on float16 outputs (--psnr)."""
    budget = resolve_budget(model, policy, budget)
    with tolerating_changes() as changed, tempfile.TemporaryDirectory(prefix="hrmc-localize-") as work:
        if onnx_model is None:  # one export for every graph made afresh here, not one per side
            progress("exporting the model")
            onnx_model = str(structured_source(None, Path(work), model, policy, budget, batch))
        executors, reference = prepared_pair(a, b, model, batch, policy, budget, onnx_model=onnx_model, chunk=chunk,
                                             artifact=artifact, progress=progress)
        report = Report("step", [e.describe() for e in executors], model_name, policy, budget, batch_size(batch),
                        seed, atol, rtol, psnr_db)
        progress("step mode, up to the first failing step")
        step_parity(*executors, reference, batch, report, until_failure=True)
        half = "float16" in (executors[0].precision, executors[1].precision)
        threshold, tolerance = None, f"|a−b| ≤ {atol:g} + {rtol:g}·|b|"
        if half:
            threshold, tolerance = (_float16_threshold(report) if report.first_failing_step else
                                    (None, "the float16 rule: RMSE against hrm_ref float64 ≤ 2 × hrm_ref float16's"))
        found = Localization(report.executors, [], model_name, policy, budget, report.batch, seed,
                             "psnr" if half else "atol", tolerance, step=report.first_failing_step, changed=changed)
        if found.step is None:
            found.whole_graphs = _failing_whole_graphs(executors, reference, batch, report, progress)
            found.notes.append("every step graph output agrees at every step of the reference trajectory: nothing to "
                               "localise (--localize walks step graphs; the other graphs were gated as parity gates "
                               "them)")
            return found
        found.failing = _failing(report)
        carry = carry_at(reference.run32, initial_carry(model, batch), found.step - 1)
        traces = []
        for executor in executors:
            progress(f"step {found.step} again on {executor.name}, every intermediate value kept")
            trace = _tracer(executor, model, policy, budget, batch, onnx_model).trace_step(carry, batch)
            if executor.name == "torch":
                trace.how = f"torch's exported graph after the static pipeline stands in for it: {trace.how}"
            traces.append(trace)
        found.traced = [trace.how for trace in traces]
        _walk(found, *traces, model, atol, rtol, threshold)
    return found


def _float16_threshold(report: Report) -> tuple[float, str]:
    """The PSNR each float16 value of the failing step must keep, and its description: the float16 rule's limit
    on the loosest failing output of that step (of any output, where only decisions failed) as a PSNR,
    20·log10(peak / limit); the report's --psnr floor where that is higher."""
    rows = [row for row in report.rows if row.step == report.first_failing_step and row.check == "A vs B"
            and row.gated in ("ratio", "rounding") and row.needed > 0]
    rows = [row for row in rows if not row.passed] or rows
    bounds = {row.output: row.psnr + 20 * np.log10(row.needed / row.limit) for row in rows}
    if not bounds:
        floor = report.psnr_db if report.psnr_db is not None else PSNR_DB
        return floor, f"PSNR ≥ {floor:g} dB (no float16 output to take a bound from)"
    output = min(bounds, key=bounds.get)
    if report.psnr_db is not None and report.psnr_db > bounds[output]:
        return report.psnr_db, f"PSNR ≥ {report.psnr_db:g} dB (--psnr)"
    return float(bounds[output]), (f"PSNR ≥ {bounds[output]:.1f} dB (the float16 rule's limit on {output} at step "
                                   f"{report.first_failing_step}, as a PSNR; hrm_ref float16 has no per-value twin)")


def _tracer(executor: Executor, model: HRM, policy: str, budget: int, batch: Batch, onnx_model: str) -> Executor:
    """What traces `executor`'s values: itself, or for torch its exported graph (static pipeline, onnxruntime)."""
    if executor.name != "torch":
        return executor
    stand_in = make_executor("static", onnx_model=onnx_model)
    stand_in.prepare(model, policy, budget, batch)
    return stand_in


def _failing_whole_graphs(executors: list[Executor], reference, batch: Batch, report: Report,
                          progress: Callable[[str], None]) -> list[str]:
    """The gate's second half, where every step passes: each whole-inference (and chunk) graph against the
    executor's own steps; those that fail, named."""
    progress("running the whole inference on both")
    whole_graphs_parity(executors, [executor.run(batch) for executor in executors], reference, batch, report,
                        progress)
    failing = {row.check for row in report.failures()}
    failing |= {graph["check"] for graph in report.whole_graphs if graph["halting"]["mismatched"]}
    return [f"{graph['graph']} ({graph['check']})" for graph in report.whole_graphs if graph["check"] in failing]


def _failing(report: Report) -> list[str]:
    rows = [f"{row.output} ({failure(row, report.psnr_db)})" for row in report.failures()
            if row.step == report.first_failing_step]
    for what, counts in (("halting decisions", report.halting), ("answers", report.answers)):
        if counts.get("mismatched"):
            rows.append(f"{counts['mismatched']} {what} differ")
    return rows or ["decisions differ"]


def _walk(found: Localization, trace_a: Trace, trace_b: Trace, model: HRM, atol: float, rtol: float,
          psnr_db: float | None) -> None:
    graph = ir.load(str(trace_b.graph)).graph
    weights = _weights_read(graph, model)
    computed = {value.name for node in graph for value in node.outputs}
    drifts = {name: _drift(name, trace_a.values[name], trace_b.values[name], atol, rtol, psnr_db, found.batch)
              for name in computed if name in trace_a.values and name in trace_b.values}
    drifts = {name: drift for name, drift in drifts.items() if drift is not None}
    found.compared, found.values = len(drifts), len(computed)
    nodes, layer, order = [], {}, {}
    for node in graph:
        order[node] = len(order)
        cycle = _cycle(node)
        layer[node] = _layer(node, weights, layer, order)
        outputs = [drifts[value.name] for value in node.outputs if value.name in drifts]
        if not outputs:
            continue
        inputs = [drifts[value.name] for value in node.inputs
                  if value is not None and value.producer() is not None and value.name in drifts]
        nodes.append(NodeDrift(node.name, node.op_type, node.metadata_props.get(MADE_BY, "—"), cycle,
                               layer[node] or "—", max(outputs, key=lambda drift: drift.severity), inputs,
                               weights.get(node.name, [])))
    first = next((index for index, node in enumerate(nodes)
                  if node.output.exceeds and not any(drift.exceeds for drift in node.inputs)), None)
    if first is None:
        found.notes.append("no node's output exceeds the tolerance while its inputs are within it: the values "
                           "compared agree, so the divergence is in values the two sides do not share")
        return
    found.first = nodes[first]
    found.after = sorted(nodes[first + 1:], key=lambda node: -node.output.severity)[:WORST]


def _layer(node: ir.Node, weights: dict[str, list[str]], layer: dict[ir.Node, str], order: dict[ir.Node, int]) -> str:
    """The block (or head) a node belongs to: the one whose weights it reads, else that of the latest node it
    reads from that has one (a residual add belongs to the block whose output it adds); "" before any weight."""
    for weight in weights.get(node.name, []):
        if BLOCK.match(weight):
            return BLOCK.sub(lambda match: match.group(1) or match.group(2), weight)
    producers = sorted((value.producer() for value in node.inputs if value is not None and value.producer() in order),
                       key=order.get, reverse=True)
    return next((layer[producer] for producer in producers if layer[producer]), "")


def _drift(name: str, a: np.ndarray, b: np.ndarray, atol: float, rtol: float, psnr_db: float | None,
           batch: int) -> Drift | None:
    """Value `name`, `b` against `a`, or None where they cannot be compared (different sizes). In float16,
    a value of one or two numbers per sample (the q head's) is measured as the contract measures q values:
    |a − b| ≤ Q_ERROR_LIMIT × its scale (here max |a|), not by PSNR, which punishes a q near zero."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        if a.size != b.size:
            return None
        b = b.reshape(a.shape)  # a package may hold a value in another layout of the same elements
    if a.dtype.kind in "biu" or b.dtype.kind in "biu":
        a, b = a.astype(np.int64), b.astype(np.int64)
        share = float(np.mean(a != b)) if a.size else 0.0
        return Drift(name, "exact", float(np.abs(a - b).max(initial=0)), share, share > 0, MISMATCH if share else 0.0)
    max_abs, _, needed = compare(a, b, rtol)
    if psnr_db is None:
        return Drift(name, "atol", max_abs, needed, needed > atol, needed / atol)
    if a.size <= 2 * batch:
        limit = Q_ERROR_LIMIT * float(np.abs(a).max(initial=0.0))
        return Drift(name, "q", max_abs, limit, max_abs > limit, max_abs / limit if limit else MISMATCH * (max_abs > 0))
    db = psnr(a, b)
    return Drift(name, "psnr", max_abs, db, db < psnr_db, 10 ** ((psnr_db - db) / 20), _snr(a, b))


def _snr(a: np.ndarray, reference: np.ndarray) -> float:
    """20·log10(RMS(reference) / RMSE), in dB; inf when equal."""
    a, reference = np.asarray(a, np.float64), np.asarray(reference, np.float64)
    rmse, rms = (float(np.sqrt(np.mean(x ** 2))) for x in (a - reference, reference))
    return float("inf") if rmse == 0 else 20 * np.log10(max(rms, np.finfo(np.float64).tiny) / rmse)


def _cycle(node: ir.Node) -> str:
    """The unrolled cycle a node belongs to, from the tag unroll-cycles puts before its outputs' names
    (a fused node keeps its outputs' names, not its node's)."""
    name = next((value.name for value in node.outputs if value.name), node.name or "")
    match = CYCLE.match(name)
    tags = [(match.group(i), int(match.group(i + 1))) for i in (1, 3, 5) if match.group(i)]
    return ", ".join(f"{LOOPS[kind]} {index + 1}" for kind, index in tags) or "outside the cycles"


def _weights_read(graph: ir.Graph, model: HRM) -> dict[str, list[str]]:
    """The weights each node that multiplies or looks up by a constant reads, by node name: the model
    parameter that holds it, found by content (as stored, or transposed: the exporter names the weights
    it lifts out of its loops val_N), or a note that none does."""
    modules = {}
    for name, parameter in model.named_parameters():
        array = parameter.detach().float().numpy()
        for stored in (array, array.T):
            modules[_digest(stored)] = name.removeprefix("inner.")
    found = {}
    for node in graph:
        if node.op_type not in WEIGHTED:
            continue
        for value in node.inputs:
            if value is not None and value.const_value is not None and value.const_value.dtype == ir.DataType.FLOAT:
                module = modules.get(_digest(value.const_value.numpy()))
                found.setdefault(node.name, []).append(
                    module or f"{value.name} (held by none of the model's parameters: changed after lowering?)")
    return found


def _digest(array: np.ndarray) -> str:
    array = np.ascontiguousarray(array, np.float32)
    return hashlib.sha256(array.tobytes() + str(array.shape).encode()).hexdigest()


def format_localization(found: Localization) -> str:
    lines = [f"localise: A = {found.executors[0]}", f"          B = {found.executors[1]}",
             f"model {found.model}, policy {found.policy}, budget {found.budget}, batch {found.batch}, "
             f"seed {found.seed}, tolerance {found.tolerance}"]
    lines = [f"UNRECORDED: {note}" for note in found.unrecorded] + lines
    lines += [f"CHANGED: {change}; localised as it is" for change in found.changed]
    if found.step is None:
        lines += [f"note: {note}" for note in found.notes]
        lines.append(_verdict(found))
        return "\n".join(lines)
    lines.append(f"first failing step: {found.step} ({'; '.join(found.failing)})")
    if found.first is not None:
        first = found.first
        lines += [f"first divergence: node {first.node} ({first.op_type}, made by {first.made_by}; {first.cycle}; "
                  f"layer {first.layer})",
                  f"  output {first.output.value}: {_measured(first.output)}  ✗"]
        lines += [f"  input  {drift.value}: {_measured(drift)}  ✓" for drift in first.inputs] or [
            "  (its other inputs are the graph's inputs or constants)"]
        lines += [f"  reads  {weight}" for weight in first.weights]
        columns = [("node", [node.node for node in found.after]), ("op", [node.op_type for node in found.after]),
                   ("made by", [node.made_by for node in found.after]), ("cycle", [node.cycle for node in found.after]),
                   ("layer", [node.layer for node in found.after]),
                   ("drift", [_measured(node.output, short=True) for node in found.after])]
        widths = [max(len(title), *map(len, cells)) + 2 for title, cells in columns]
        lines.append(f"the {len(found.after)} worst nodes after it:")
        lines += ["  " + "".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                  for row in zip(*[[title, *cells] for title, cells in columns])]
    if found.traced:
        lines += [f"note: A's values: {found.traced[0]}",
                  f"note: B's values: {found.traced[1]}; of the {found.values} values its graph computes, "
                  f"{found.compared} were computed by both and compared"]
    lines += [f"note: {note}" for note in found.notes]
    lines.append(f"FAIL: from step {found.step}" + (f", first at node {found.first.node}" if found.first else ""))
    return "\n".join(lines)


def _verdict(found: Localization) -> str:
    """The last line where no step fails: what else fails the gate, if anything."""
    if found.whole_graphs:
        return f"FAIL: not in a step graph: {'; '.join(found.whole_graphs)}"
    if found.changed:
        return "FAIL: the artifact differs from its record"
    if found.unrecorded:
        return "UNRECORDED: the numbers agree, but nothing shows these files are what hrmc wrote: not a pass"
    return "PASS"


def _measured(drift: Drift, short: bool = False) -> str:
    if drift.kind == "exact":
        return f"{drift.measure:.1%} of elements differ"
    if drift.kind == "q":
        return f"max |a−b| {drift.max_abs:.3g}" + ("" if short else f", limit {Q_ERROR_LIMIT:g} × max |a| = {drift.measure:.3g}")
    if drift.kind == "psnr":
        return f"PSNR {drift.measure:.1f} dB, SNR {drift.snr:.1f}" + ("" if short else f", max |a−b| {drift.max_abs:.3g}")
    return f"max |a−b| {drift.max_abs:.3g}" + ("" if short else f", needs atol {drift.measure:.3g}")


__all__ = ["Localization", "format_localization", "localize"]
