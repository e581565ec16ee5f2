"""`hrmc export`: hrm_ref → two ONNX models that keep their control flow, checked and labelled.

- `NAME.onnx`, the whole inference: the ACT step loop, H cycles and L cycles are nested ONNX
  Loops. The ACT loop stops on its data-dependent condition: every sample halted, or the budget.
- `NAME.step.onnx`, one ACT step with the carry as inputs and outputs (z_H, z_L, steps, halted):
  what step parity compares, read out of the first's ACT Loop rather than traced again (step.py).

The batch dimension is dynamic; the sequence length is fixed at export, because the RoPE tables
are folded to constants. Model-level metadata holds the artifact's record (`hrmc.record.Record`): hrmc's
version, the config, the policy and budget, the sha256 of the weights and where they came from (a preset,
or a checkpoint by name, sha256 and path relative to the file), and every Loop (kind and trip count). Each
Loop node also carries `hrmc.loop` and `hrmc.trip_count`, so passes read them rather than pattern-match.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import onnx
import torch

from hrmc import hrm_ref
from hrmc.hrm_ref import HRM, Batch
from hrmc.hrm_ref.act import resolve_budget
from hrmc import __version__
from hrmc.errors import HrmcError, InputError
from hrmc.files import check_output, together
from hrmc.lowering.artifact import load_proto, save_bound
from hrmc.lowering.graph import ACTGraph
from hrmc.lowering.step import step_model
from hrmc.names import LOOP, TRIP_COUNT, meta_key, unprefixed
from hrmc.record import Checkpoint, Record

EXAMPLE_BATCH = 2  # traced with 2 rows: a batch of 1 would let the exporter specialise the batch dimension
LOOP_KINDS_BY_DEPTH = {"act": ("act", "h_cycles", "l_cycles"), "step": ("h_cycles", "l_cycles")}


class ExportError(HrmcError):
    """The model could not be exported or the exported graph failed its checks."""


@dataclass(frozen=True)
class ExportedModel:
    act_path: Path
    step_path: Path
    seconds: float
    file_bytes: int
    parameter_bytes: int
    traced: bool  # False: copied from the export cache


def step_path_for(path: str | Path) -> Path:
    """`model.onnx` → `model.step.onnx` beside it."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(".onnx") + ".step.onnx")


def export_paths(out: str | Path) -> tuple[Path, Path]:
    """The pair `export_onnx` writes, `out` and its .step.onnx sibling, checked before the work."""
    out = check_output(out, ".onnx")
    return out, check_output(step_path_for(out), ".onnx")


def weights_sha256(model: HRM) -> str:
    """A digest of every weight and buffer by name, independent of the file it came from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def output_names(model: HRM, batch: Batch) -> list[str]:
    """The heads' outputs in the order `HRMInner.heads` returns them."""
    with torch.no_grad():
        start = hrm_ref.initial_carry(model, batch)
        return list(model.inner.heads(start.z_H, batch))


def _trace(module: torch.nn.Module, args: tuple, input_names: list[str], outputs: list[str],
           dynamic_shapes: Any) -> onnx.ModelProto:
    """torch.onnx's dynamo exporter, quietly; its chatter would drown hrmc's own progress lines."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, args, dynamo=True, input_names=input_names, output_names=outputs,
                                        dynamic_shapes=dynamic_shapes)
    finally:
        logger.setLevel(level)
    return program.model_proto


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    return [attribute.g for attribute in node.attribute if attribute.type == onnx.AttributeProto.GRAPH]


def _label_loops(graph: onnx.GraphProto, kinds: tuple[str, ...], trip_counts: dict[str, int | None],
                 found: list[dict[str, Any]], depth: int = 0) -> None:
    """Strip the exporter's per-node debug metadata and tag each Loop with its kind and trip count."""
    for node in graph.node:
        del node.metadata_props[:]
        if node.op_type == "Loop":
            if depth >= len(kinds):
                raise ExportError(f"unexpected Loop {node.name} nested {depth + 1} deep")
            kind = kinds[depth]
            trip = trip_counts[kind]
            node.metadata_props.add(key=LOOP, value=kind)
            node.metadata_props.add(key=TRIP_COUNT, value="" if trip is None else str(trip))
            found.append({"node": node.name, "kind": kind, "trip_count": trip, "depth": depth})
        for subgraph in _subgraphs(node):
            _label_loops(subgraph, kinds, trip_counts, found, depth + (node.op_type == "Loop"))


def _finish(proto: onnx.ModelProto, kind: str, model: HRM, record: Record) -> onnx.ModelProto:
    loops: list[dict[str, Any]] = []
    trip_counts = {"act": None, "h_cycles": model.config.H_cycles, "l_cycles": model.config.L_cycles}
    _label_loops(proto.graph, LOOP_KINDS_BY_DEPTH[kind], trip_counts, loops)
    metadata = record.replace(kind=kind, loops=tuple(loops)).metadata()
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=meta_key(key), value=value)
    proto.producer_name, proto.producer_version = "hrmc", __version__
    try:
        onnx.checker.check_model(proto, full_check=True)
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise ExportError(f"exported {kind} graph fails onnx's checks: {str(err).splitlines()[0]}") from None
    return proto


def example_batch(model: HRM, batch: Batch | None) -> Batch:
    """What a trace runs on: the first row of `batch` (default: a seeded random one) repeated EXAMPLE_BATCH times."""
    batch = batch or hrm_ref.random_batch(model.config, EXAMPLE_BATCH, seed=0)
    return {name: value[:1].expand(EXAMPLE_BATCH, *value.shape[1:]).contiguous() for name, value in batch.items()}


def check_exportable(model: HRM) -> None:
    if model.config.forward_dtype != "float32":
        raise InputError(f"export takes a float32 model, got forward dtype {model.config.forward_dtype}")


def trace_onnx(model: HRM, out: str | Path, policy: str = "max-steps", budget: int | None = None,
               batch: Batch | None = None, checkpoint: Checkpoint = Checkpoint(),
               progress: Callable[[str], None] = lambda _: None) -> ExportedModel:
    """Trace `model` and write `out` (the whole ACT inference) and its `.step.onnx` sibling; both or neither.
    `checkpoint`: where the weights came from, a file's path relative to the current folder (the record keeps it
    relative to `out`). One `torch.export` trace, of the whole inference, 20 s or more whatever the model's size
    (the one-step model is read out of its ACT Loop: step.py); `export_onnx` (lowering/cache.py) traces a model
    once and copies the pair thereafter."""
    out, step_out = export_paths(out)  # before a minute of tracing, not after
    check_exportable(model)
    budget = resolve_budget(model, policy, budget)
    started = time.perf_counter()
    batch = example_batch(model, batch)
    names, outputs = list(batch), output_names(model, batch)
    record = Record(__version__, dataclasses.asdict(model.config), policy, budget, model.inner.sequence_length(batch),
                    tuple(outputs), weights_sha256(model), checkpoint.rebased(Path.cwd(), out.parent))
    rows = torch.export.Dim("batch", min=1, max=65536)
    batch_dims = tuple({0: rows} for _ in names)

    progress(f"tracing the whole ACT inference ({policy}, budget {budget}) as nested ONNX Loops")
    act = _trace(ACTGraph(model, policy, budget, names), tuple(batch.values()), names,
                 [*outputs, "halted", "steps", "steps_run"], (batch_dims,))
    act = _finish(act, "act", model, record)

    progress("reading the one-step model (carry in, carry out) out of its ACT Loop")
    step = step_model(act, outputs)
    step = _finish(step, "step", model, record)

    with together():  # the pair replaces an old pair whole, or not at all
        save_bound({"act": (out, act), "step": (step_out, step)})
    return exported_model(model, out, step_out, started, traced=True)


def exported_model(model: HRM, out: Path, step_out: Path, started: float, traced: bool) -> ExportedModel:
    parameter_bytes = sum(t.numel() * 4 for t in model.state_dict().values())
    return ExportedModel(out, step_out, time.perf_counter() - started, out.stat().st_size, parameter_bytes, traced)


def read_record(path: str | Path) -> Record:
    """The record of an exported or lowered file; an error if the file was not made by hrmc."""
    path = Path(path)
    props = unprefixed({p.key: p.value for p in load_proto(path).metadata_props})
    if "config" not in props:
        raise InputError(f"{path} was not made by hrmc export (no hrmc metadata)")
    return Record.parse(props, path)
