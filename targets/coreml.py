"""The Core ML backend: the post-pass graph, op by op, as a MIL program → `.mlpackage` (mlprogram).

`lower_coreml(graphs, out, flavour, batch)` builds the MIL program with coremltools' Builder (`OPS` is the
op-mapping table; a node without an entry fails at lower time naming the op and the node), then
`ct.convert(..., convert_to="mlprogram")` and saves atomically. Two flavours:

- `coreml`: float32 compute precision, CPU_ONLY: parity grade.
- `ane`: float16 compute precision, CPU_AND_NE, fixed shapes and no control flow (the static graph),
  attention one head at a time (apple/ml-ane-transformers). Its other rewrites, the channels-first
  (B, C, 1, S) layout with 1×1 convolutions, are not applied: they move the sequence axis (82 for
  sudoku) last, where the ANE pads rows to 64 bytes, while HRM's widths (64·k) already fill them
  (`hrmc inspect` shows the alignment). Without a Neural Engine to time it on, we keep the layout
  whose tensors are aligned.

Core ML packages have fixed shapes here (the ANE wants them): the batch is fixed at lower time,
int64 becomes int32, and bool inputs and outputs travel as int32 (Core ML I/O has no bool).

On Linux `predict()` does not exist, so the `coreml` and `ane` executors replay the *saved* package:
its MIL program is read back and every op is rebuilt from numpy constants, so that coremltools'
own `value_inference` computes it (`FALLBACK` covers ops without one). That checks the lowering
against MIL's reference semantics, not Core ML's runtime kernels: every report says so.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import tempfile
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx_ir as ir
from google.protobuf.message import DecodeError

from hrmc.hrm_ref import HRM, Batch, Carry
from hrmc.hrm_ref.act import initial_carry, resolve_budget
from hrmc import __version__
from hrmc.binding import BindingError, Record, file_sha256, json_sha256, make_record, parse_record, verify
from hrmc.errors import InputError
from hrmc.files import atomic_folder, check_output_folder
from hrmc.lowering.artifact import PARTS_KEY
from hrmc.targets import TARGETS, LowerOptions, Target
from hrmc.targets.executor import DEFAULT_CHUNK, Arrays, Executor, carry_arrays
from hrmc.targets._nodes import LowerError, NodeReader, constant_array, op_key, require_static
from hrmc.targets.host_loop import carry_feed, run_chunks, split_step, until_steps_run

logging.getLogger("coremltools").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", module="coremltools")


@contextlib.contextmanager
def _quiet_stderr():
    """coremltools prints to stderr on import off macOS and during conversion; our reports say what matters."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
        yield


with _quiet_stderr():
    import coremltools as ct  # prints "Failed to load _MLModelProxy" lines off macOS
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import Function, Program
    from coremltools.converters.mil.mil import types as mil_types

MIL_DTYPES = {ir.DataType.FLOAT: "fp32", ir.DataType.FLOAT16: "fp16", ir.DataType.INT64: "int32",
              ir.DataType.INT32: "int32", ir.DataType.BOOL: "bool"}
MIL_TYPES = {"fp32": mil_types.fp32, "fp16": mil_types.fp16, "int32": mil_types.int32}
PARTS_FILE = "com.hrmc/parts.json"  # under Data/: the package's record (hrmc.binding)
BOOL_OUTPUTS = "hrmc.bool_outputs"  # user metadata: outputs that are bool in the ONNX graph, int32 in the package
LABEL = ("MIL reference semantics (coremltools value_inference replay on Linux, float16 matmuls summed in float32; "
         "not Core ML's runtime kernels)")


@dataclass(frozen=True)
class Flavour:
    float_type: str  # the MIL type every float tensor inside the program has
    compute_units: object
    description: str
    heads_apart: bool = False  # attention as one small matmul pair per head, no 4-D transposes (ANE)


# The program is built in its final precision, so ct.convert runs no pass pipeline: coremltools'
# passes (its fp16 pass above all) take minutes on an unrolled graph, and ours already ran on ONNX.
FLAVOURS = {"coreml": Flavour("fp32", ct.ComputeUnit.CPU_ONLY, "float32, CPU_ONLY"),
            "ane": Flavour("fp16", ct.ComputeUnit.CPU_AND_NE, "float16, CPU_AND_NE, attention per head", True)}
# float16x2: each matmul weight W as the float16 pair hi = fp16(W), lo = fp16(W - hi), stacked along the
# contracted axis and read by one matmul of [x, x], so its accumulation adds both halves before the one
# rounding of its output: float32-exact weights, twice the weight bytes and matmul work, every op still
# float16 for the ANE. float16 weights alone cost random-weight sudoku 59.4 dB on logits (docs/design.md §4).


class Builder(NodeReader):
    """Maps one ONNX graph's nodes to MIL ops inside the current Function; `env` holds the MIL vars."""

    def __init__(self, source: str, float_type: str = "fp32", heads_apart: bool = False,
                 weight_pairs: bool = False) -> None:
        super().__init__(source)
        self.env = {}
        self.float_type, self.heads_apart, self.weight_pairs = float_type, heads_apart, weight_pairs
        self.float_dtype = np.float16 if float_type == "fp16" else np.float32

    def scalar(self, value: float) -> np.ndarray:
        """A float constant in the program's float type."""
        return self.float_dtype(value)

    def array(self, array: np.ndarray) -> np.ndarray:
        """A constant as MIL takes it: int64 as int32, floats in the program's float type."""
        array = _mil_array(array)
        return array.astype(self.float_dtype) if array.dtype.kind == "f" else array

    def const(self, value: ir.Value | None) -> np.ndarray | None:
        """Constants of the graph, and values MIL inferred while building (shapes at the fixed batch)."""
        array = constant_array(value)
        if array is not None or value is None:
            return array
        var = self.env.get(value.name)
        return None if var is None or var.val is None else np.asarray(var.val)

    def var(self, value: ir.Value):
        if value.name not in self.env:
            array = constant_array(value)
            if array is None:
                raise self.fail(f"input {value.name!r} is not defined")
            # one const per initializer, however many unrolled steps read it: weights are never copied
            self.env[value.name] = mb.const(val=self.array(array))
        return self.env[value.name]

    def matmul(self, x: ir.Value, y: ir.Value, transpose_y: bool = False):
        """x·y, or x·yᵀ; a constant float32 y in float16 pairs when the lowering asks for them (float16x2)."""
        weight = constant_array(y)
        if not self.weight_pairs or weight is None or weight.dtype != np.float32:
            return mb.matmul(x=self.var(x), y=self.var(y), transpose_y=transpose_y)
        key = f"{y.name} (float16 pair)"
        if key not in self.env:
            high = weight.astype(np.float16)
            low = (weight - high.astype(np.float32)).astype(np.float16)
            self.env[key] = mb.const(val=np.concatenate([high, low], axis=-1 if transpose_y else -2))
        doubled = mb.concat(values=[self.var(x), self.var(x)], axis=-1)
        return mb.matmul(x=doubled, y=self.env[key], transpose_y=transpose_y)

    def emit(self, node: ir.Node) -> None:
        self.node, key = node, op_key(node)
        if key not in OPS:
            raise self.fail(f"no MIL lowering for op {key!r}")
        results = OPS[key](self, node)
        results = results if isinstance(results, (list, tuple)) else [results]
        for output, result in zip(node.outputs, results):
            self.env[output.name] = result


def _mil_array(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    return array.astype(np.int32) if array.dtype == np.int64 else array


def _binary(function: str) -> Callable[[Builder, ir.Node], object]:
    return lambda b, n: getattr(mb, function)(x=b.var(n.inputs[0]), y=b.var(n.inputs[1]))


def _unary(function: str) -> Callable[[Builder, ir.Node], object]:
    return lambda b, n: getattr(mb, function)(x=b.var(n.inputs[0]))


def _div(b: Builder, n: ir.Node):
    x, y = b.var(n.inputs[0]), b.var(n.inputs[1])
    if mil_types.is_float(x.dtype):
        return mb.real_div(x=x, y=y)
    # ONNX integer Div truncates toward zero; MIL's floor_div floors: divide magnitudes, then sign.
    magnitude = mb.floor_div(x=mb.abs(x=x), y=mb.abs(x=y))
    return mb.mul(x=magnitude, y=mb.mul(x=mb.sign(x=x), y=mb.sign(x=y)))


def _slice(b: Builder, n: ir.Node):
    x = b.var(n.inputs[0])
    rank = x.rank
    begin, end, stride = [0] * rank, [0] * rank, [1] * rank
    begin_mask, end_mask = [True] * rank, [True] * rank
    for start, stop, axis, step in b.slice_arguments(n):
        axis %= rank
        begin[axis], stride[axis], begin_mask[axis] = start, step, False
        if stop is not None:
            end[axis], end_mask[axis] = stop, False
    return mb.slice_by_index(x=x, begin=begin, end=end, stride=stride, begin_mask=begin_mask, end_mask=end_mask)


def _reshape(b: Builder, n: ir.Node):
    x, dims = b.var(n.inputs[0]), b.ints(n.inputs[1], "the shape")
    if not b.attr("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return mb.reshape(x=x, shape=np.array(dims, np.int32))


def _split(b: Builder, n: ir.Node):
    x, axis = b.var(n.inputs[0]), b.attr("axis", 0)
    if b.optional(n, 1) is not None:
        return mb.split(x=x, split_sizes=np.array(b.ints(n.inputs[1], "split sizes"), np.int32), axis=axis)
    return mb.split(x=x, num_splits=len(n.outputs), axis=axis)


def _gemm(b: Builder, n: ir.Node):
    if b.attr("alpha", 1.0) != 1.0 or b.attr("beta", 1.0) != 1.0 or b.attr("transA", 0):
        raise b.fail("only Gemm with alpha = beta = 1 and no transA is mapped")
    y = b.matmul(n.inputs[0], n.inputs[1], transpose_y=bool(b.attr("transB", 0)))
    return y if b.optional(n, 2) is None else mb.add(x=y, y=b.var(n.inputs[2]))


def _pad(b: Builder, n: ir.Node):
    pads = b.ints(n.inputs[1], "pads")
    half = len(pads) // 2
    fill = b.const(n.inputs[2]) if b.optional(n, 2) is not None else 0.0
    pairs = [v for axis in range(half) for v in (pads[axis], pads[half + axis])]
    x = b.var(n.inputs[0])
    fill = b.scalar(float(fill)) if mil_types.is_float(x.dtype) else np.int32(fill)
    return mb.pad(x=x, pad=np.array(pairs, np.int32), mode="constant", constant_val=fill)


def _expand(b: Builder, n: ir.Node):
    x, shape = b.var(n.inputs[0]), b.ints(n.inputs[1], "the shape")
    target = np.broadcast_shapes(tuple(x.shape), tuple(shape))
    if x.rank < len(target):
        x = mb.expand_dims(x=x, axes=list(range(len(target) - x.rank)))
    reps = [t // s for t, s in zip(target, x.shape)]
    return x if all(r == 1 for r in reps) else mb.tile(x=x, reps=reps)


def _reduce(function: str) -> Callable[[Builder, ir.Node], object]:
    def lower(b: Builder, n: ir.Node):
        axes = None if b.optional(n, 1) is None else b.ints(n.inputs[1], "axes")
        x, keep = b.var(n.inputs[0]), bool(b.attr("keepdims", 1))
        if x.val is not None:  # fold it here: coremltools' loader re-folds it with a numpy bool that numpy 2 refuses
            reduce = {"reduce_min": np.min, "reduce_max": np.max, "reduce_sum": np.sum, "reduce_mean": np.mean}[function]
            return mb.const(val=np.asarray(reduce(x.val, axis=None if axes is None else tuple(axes), keepdims=keep)))
        return getattr(mb, function)(x=x, axes=axes, keep_dims=keep)
    return lower


def _cast(b: Builder, n: ir.Node):
    to = ir.DataType(b.attr("to"))
    if to not in MIL_DTYPES:
        raise b.fail(f"cast to {to.name} has no MIL type")
    dtype = b.float_type if to in (ir.DataType.FLOAT, ir.DataType.FLOAT16) else MIL_DTYPES[to]
    return mb.cast(x=b.var(n.inputs[0]), dtype=dtype)


def _shape(b: Builder, n: ir.Node):
    shape = np.array(b.var(n.inputs[0]).shape[b.attr("start", 0):b.attr("end")], np.int32)
    return mb.const(val=shape)


def _rms_norm(b: Builder, n: ir.Node):
    """Explicit ops with the graph's own eps: Core ML's fused rms_norm rescales (docs/design.md §3)."""
    x, epsilon = b.var(n.inputs[0]), float(b.const(n.inputs[1]))
    mean = mb.reduce_mean(x=mb.mul(x=x, y=x), axes=[-1], keep_dims=True)
    return mb.real_div(x=x, y=mb.sqrt(x=mb.add(x=mean, y=b.scalar(epsilon))))


def _rope(b: Builder, n: ir.Node):
    x = b.var(n.inputs[0])
    front, back = mb.split(x=x, num_splits=2, axis=-1)
    rotated = mb.concat(values=[mb.mul(x=back, y=b.scalar(-1)), front], axis=-1)
    return mb.add(x=mb.mul(x=x, y=b.var(n.inputs[1])), y=mb.mul(x=rotated, y=b.var(n.inputs[2])))


def _attend(q, k, v, scale):
    """softmax(q·kᵀ · scale)·v over the last two axes."""
    scores = mb.mul(x=mb.matmul(x=q, y=k, transpose_y=True), y=scale)
    return mb.matmul(x=mb.softmax(x=scores, axis=-1), y=v)


def _attention(b: Builder, n: ir.Node):
    """q, k, v are [B, S, heads, D]. Batched over heads with transposes, or (ANE) one head at a time
    as apple/ml-ane-transformers does: [B, S, D] matmuls only, split from and concatenated back into
    [B, S, heads·D]."""
    scale = b.var(n.inputs[3])
    if not b.heads_apart:
        q, k, v = (mb.transpose(x=b.var(value), perm=[0, 2, 1, 3]) for value in n.inputs[:3])
        return mb.transpose(x=_attend(q, k, v, scale), perm=[0, 2, 1, 3])
    batch, length, heads, width = b.var(n.inputs[0]).shape
    q, k, v = (_heads(mb.reshape(x=b.var(value), shape=[batch, length, heads * width]), heads)
               for value in n.inputs[:3])
    joined = mb.concat(values=[_attend(*head, scale) for head in zip(q, k, v)], axis=2)
    return mb.reshape(x=joined, shape=[batch, length, heads, width])


def _heads(x, heads: int) -> list:
    return [x] if heads == 1 else list(mb.split(x=x, num_splits=heads, axis=2))


# The op-mapping table: every op the `fused` / `fused-fp16` pipelines emit for hrmc's models.
OPS: dict[str, Callable[[Builder, ir.Node], object]] = {
    "Add": _binary("add"), "Sub": _binary("sub"), "Mul": _binary("mul"), "Div": _div, "Pow": _binary("pow"),
    "Max": _binary("maximum"), "Min": _binary("minimum"), "Mod": _binary("mod"),
    "MatMul": lambda b, n: b.matmul(n.inputs[0], n.inputs[1]),
    "Equal": _binary("equal"), "Greater": _binary("greater"), "GreaterOrEqual": _binary("greater_equal"),
    "Less": _binary("less"), "LessOrEqual": _binary("less_equal"),
    "And": _binary("logical_and"), "Or": _binary("logical_or"), "Not": _unary("logical_not"),
    "Sqrt": _unary("sqrt"), "Exp": _unary("exp"), "Tanh": _unary("tanh"), "Sigmoid": _unary("sigmoid"),
    "Abs": _unary("abs"), "Sin": _unary("sin"), "Cos": _unary("cos"), "Floor": _unary("floor"),
    "Neg": lambda b, n: mb.mul(x=b.var(n.inputs[0]), y=b.scalar(-1)),
    "Reciprocal": lambda b, n: mb.inverse(x=b.var(n.inputs[0]), epsilon=0.0),
    "Identity": lambda b, n: mb.identity(x=b.var(n.inputs[0])),
    "Cast": _cast, "Shape": _shape, "Expand": _expand, "Slice": _slice, "Reshape": _reshape, "Split": _split,
    "Gemm": _gemm, "Pad": _pad,
    "CumSum": lambda b, n: mb.cumsum(x=b.var(n.inputs[0]), axis=b.ints(n.inputs[1], "the axis")[0],
                                     exclusive=bool(b.attr("exclusive", 0)), reverse=bool(b.attr("reverse", 0))),
    "Constant": lambda b, n: mb.const(val=b.array(b.const(n.outputs[0]))),
    "Where": lambda b, n: mb.select(cond=b.var(n.inputs[0]), a=b.var(n.inputs[1]), b=b.var(n.inputs[2])),
    "Concat": lambda b, n: mb.concat(values=[b.var(v) for v in n.inputs], axis=b.attr("axis")),
    "Gather": lambda b, n: mb.gather(x=b.var(n.inputs[0]), indices=b.var(n.inputs[1]), axis=b.attr("axis", 0)),
    "Unsqueeze": lambda b, n: mb.expand_dims(x=b.var(n.inputs[0]), axes=b.ints(n.inputs[1], "axes")),
    "Squeeze": lambda b, n: mb.squeeze(x=b.var(n.inputs[0]), axes=b.ints(n.inputs[1], "axes")),
    "Transpose": lambda b, n: mb.transpose(x=b.var(n.inputs[0]), perm=list(b.attr("perm"))),
    "Softmax": lambda b, n: mb.softmax(x=b.var(n.inputs[0]), axis=b.attr("axis", -1)),
    "ReduceMin": _reduce("reduce_min"), "ReduceMax": _reduce("reduce_max"), "ReduceSum": _reduce("reduce_sum"),
    "ReduceMean": _reduce("reduce_mean"),
    "hrmc.RMSNorm": _rms_norm, "hrmc.Rope": _rope, "hrmc.Attention": _attention,
    "hrmc.SwiGLU": lambda b, n: mb.mul(x=mb.silu(x=b.var(n.inputs[0])), y=b.var(n.inputs[1])),
}


def build_program(model: ir.Model, batch: int, source: str, float_type: str = "fp32",
                  heads_apart: bool = False, weight_pairs: bool = False) -> Program:
    """The MIL program of a static ONNX graph at a fixed batch size.

    int64 becomes int32; bool inputs and outputs travel as int32 (Core ML I/O has no bool) and float
    ones in `float_type` (float16 I/O, from iOS 16, spares the ANE a cast at each end).
    """
    graph = model.graph
    require_static(graph, source, "Core ML")
    inside = {value.name: _inside_type(value, float_type) for value in graph.inputs}
    specs = {}
    for value in graph.inputs:
        dims = [batch if not isinstance(d, int) else d for d in value.shape]
        specs[value.name] = mb.placeholder(shape=dims, dtype=MIL_TYPES["int32" if inside[value.name] == "bool"
                                                                         else inside[value.name]])
    builder = Builder(source, float_type, heads_apart, weight_pairs)
    # MIL names unnamed ops from a process-wide counter (ct.convert clears it after, a replay does not):
    # start from zero so the names, and so the package bytes, depend on this graph only
    mb.name_count.clear()
    with Function(specs, opset_version=ct.target.iOS17) as function:
        for value in graph.inputs:
            var = function.inputs[value.name]
            builder.env[value.name] = mb.cast(x=var, dtype="bool") if inside[value.name] == "bool" else var
        for node in graph:
            builder.emit(node)
        outputs = []
        for value in graph.outputs:
            var = builder.env[value.name]
            if var.dtype == mil_types.bool:
                var = mb.cast(x=var, dtype="int32")
            outputs.append(mb.identity(x=var, name=value.name))
        function.set_outputs(outputs)
    program = Program()
    program.add_function("main", function)
    return program


def _inside_type(value: ir.Value, float_type: str) -> str:
    """The MIL type a graph input has inside the program."""
    if value.dtype not in MIL_DTYPES:
        raise LowerError(f"graph input {value.name!r} is {value.dtype.name}, which has no MIL type")
    inside = MIL_DTYPES[value.dtype]
    return float_type if inside in ("fp32", "fp16") else inside


@dataclass(frozen=True)
class CoreMLPackage:
    path: Path
    flavour: str
    batch: int
    bool_outputs: tuple[str, ...]  # bool in the ONNX graph, int32 in the package (Core ML I/O has no bool)
    meta: dict[str, str]  # hrmc's metadata, without the `hrmc.` prefix


def package_paths(out: str | Path, roles: list[str], chunk: int | None = None) -> dict[str, Path]:
    """Where `hrmc lower` puts each graph's package: NAME.mlpackage, NAME.step.mlpackage, NAME.chunkK.mlpackage."""
    out = Path(out)
    names = {"static": out, "step": out.with_name(f"{out.stem}.step.mlpackage"),
             "chunk": out.with_name(f"{out.stem}.chunk{chunk}.mlpackage")}
    return {role: names[role] for role in roles}


def lower_coreml(graphs: dict[str, Path], out: str | Path, flavour: str, batch: int, source: str,
                 progress: Callable[[str], None] = lambda _: None, force: bool = False,
                 weights: str | None = None) -> dict[str, Path]:
    """Build, convert and save one package per graph ({"static": …, "step": …, "chunk": …}) as a bound
    set (each records every package's files, hrmc.binding); all appear at once, or none. An existing
    folder is replaced only if hrmc wrote it (or `force`). `weights`: one of the flavour's (its default)."""
    weights = TARGETS[flavour].weight_storage(weights) or _plain_weights(flavour)
    chunk = int(ir.load(str(graphs["chunk"])).metadata_props["hrmc.chunk"]) if "chunk" in graphs else None
    paths = package_paths(out, list(graphs), chunk)
    with contextlib.ExitStack() as stack:
        temporaries = {role: stack.enter_context(atomic_folder(path, marker=f"Data/{PARTS_FILE}", force=force))
                       for role, path in paths.items()}
        for role, graph in graphs.items():
            progress(f"converting the {role} graph (batch {batch})")
            _save_package(_convert(graph, flavour, batch, source, weights), temporaries[role])
        files = {role: _package_files(temporary) for role, temporary in temporaries.items()}
        record = make_record({role: (paths[role], json_sha256(_flat(files[role]))) for role in paths})
        for role, temporary in temporaries.items():
            (temporary / "Data" / PARTS_FILE).parent.mkdir()
            (temporary / "Data" / PARTS_FILE).write_text(json.dumps({"files": files[role], "set": record},
                                                                     indent=1, sort_keys=True))
    return paths


def _plain_weights(flavour: str) -> str:
    """One weight in the flavour's float type: a target with no choice, and packages written before the choice."""
    return "float16" if FLAVOURS[flavour].float_type == "fp16" else "float32"


def _convert(graph: Path, flavour: str, batch: int, source: str, weights: str):
    """The MLModel of one static ONNX graph, with hrmc's metadata."""
    model = ir.load(str(graph))
    chosen = FLAVOURS[flavour]
    program = build_program(model, batch, f"{source} ({graph.name})", chosen.float_type, chosen.heads_apart,
                            weight_pairs=weights == "float16x2")
    with _quiet_stderr(), _unprinted(program):
        package = ct.convert(program, convert_to="mlprogram", compute_precision=ct.precision.FLOAT32,
                             compute_units=chosen.compute_units, minimum_deployment_target=ct.target.iOS17,
                             pass_pipeline=ct.PassPipeline.EMPTY)
    meta = {key.removeprefix("hrmc."): value for key, value in model.metadata_props.items() if key != PARTS_KEY}
    bools = [value.name for value in model.graph.outputs if value.dtype == ir.DataType.BOOL]
    package.short_description = (f"HRM lowered by hrmc {__version__} ({flavour}: {chosen.description}, {weights} "
                                 f"weights) from {source}")
    package.version = __version__
    package.user_defined_metadata.update({"hrmc.version": __version__, "hrmc.flavour": flavour, "hrmc.batch": str(batch),
                                          "hrmc.weights": weights,
                                          **{f"hrmc.{k}": v for k, v in meta.items()},
                                          BOOL_OUTPUTS: json.dumps(bools)})
    for value in model.graph.inputs:
        package.input_description[value.name] = f"{value.name} ({value.dtype.name.lower()} in the ONNX graph)"
    for value in model.graph.outputs:
        package.output_description[value.name] = f"{value.name} ({value.dtype.name.lower()} in the ONNX graph)"
    return package


def _save_package(package, folder: Path) -> None:
    package.save(str(folder))
    _make_reproducible(folder)


@contextlib.contextmanager
def _unprinted(program: Program):
    """coremltools formats the whole program into its debug log messages (eager f-strings) even with
    debug logging off: about 40 % of converting sudoku's unrolled program. Print nothing meanwhile."""
    cls = type(program)
    printed = cls.__str__
    cls.__str__ = lambda self: f"<MIL program, {sum(len(f.operations) for f in self.functions.values())} ops>"
    try:
        yield
    finally:
        cls.__str__ = printed


def _make_reproducible(package: Path) -> None:
    """Same input, same bytes: coremltools writes random manifest ids and protobuf maps in hash order."""
    manifest_path = package / "Manifest.json"
    manifest = json.loads(manifest_path.read_text())
    ids = {old: str(uuid.uuid5(uuid.NAMESPACE_URL, entry["path"])) for old, entry in manifest["itemInfoEntries"].items()}
    manifest["itemInfoEntries"] = {ids[old]: entry for old, entry in sorted(manifest["itemInfoEntries"].items(),
                                                                               key=lambda item: item[1]["path"])}
    manifest["rootModelIdentifier"] = ids[manifest["rootModelIdentifier"]]
    manifest["itemInfoEntries"][str(uuid.uuid5(uuid.NAMESPACE_URL, PARTS_FILE))] = {
        "author": "com.hrmc", "description": "sha256 of every file of this package and of its set (hrmc lower)",
        "name": Path(PARTS_FILE).name, "path": PARTS_FILE}
    manifest_path.write_text(json.dumps(manifest, indent=4))
    spec_path = package / "Data" / _root_model(manifest)
    spec = ct.proto.Model_pb2.Model()
    spec.ParseFromString(spec_path.read_bytes())
    spec_path.write_bytes(spec.SerializeToString(deterministic=True))


def _package_files(package: Path) -> dict[str, str]:
    """sha256 of every file in a package but its parts record, by path inside the package."""
    return {str(path.relative_to(package)): file_sha256(path) for path in sorted(package.rglob("*"))
            if path.is_file() and path != package / "Data" / PARTS_FILE}


def _flat(files: dict[str, str]) -> Record:
    return {name: {"file": name, "sha256": digest} for name, digest in files.items()}


def package_set(package: str | Path) -> dict[str, Path]:
    """{role: path} of the packages `hrmc lower` wrote together with `package`, each file of each
    checked against the records they hold. Packages written before hrmc recorded parts: the package
    alone, unverified."""
    package = Path(package)
    record_path = package / "Data" / PARTS_FILE
    if not record_path.is_file():
        read_package(package)  # names what is wrong with a package that is not one
        return {"static": package}
    own = _read_parts(record_path)
    for role, part in own["set"].items():
        sibling = package.parent / part["file"]
        parts = own if sibling == package else _read_parts(sibling / "Data" / PARTS_FILE, package)
        if parts["set"] != own["set"]:
            raise BindingError(f"{sibling}: does not belong with {package.name} (written by another run)")
        verify(_flat(parts["files"]), _package_files(sibling), sibling, sibling / "Data" / PARTS_FILE)
        if json_sha256(_flat(parts["files"])) != part["sha256"]:
            raise BindingError(f"{sibling}: not the package {package.name} was written with (another run)")
    return {role: package.parent / part["file"] for role, part in own["set"].items()}


def _read_parts(path: Path, reader: Path | None = None) -> dict:
    if not path.is_file():
        what = f" ({reader.name} records it as part of its set)" if reader else ""
        raise BindingError(f"{path.parent.parent}: missing or not written by hrmc lower{what}")
    try:
        parts = json.loads(path.read_text())
        parse_record(parts["set"], path)
        if not all(isinstance(v, str) for v in parts["files"].values()):
            raise TypeError
        return parts
    except (ValueError, KeyError, TypeError, AttributeError):
        raise BindingError(f"{path}: its record of the package's parts is unreadable (edited by hand?)") from None


def _root_model(manifest: dict) -> str:
    """The spec's path under the package's Data folder, as its manifest names it."""
    return manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]["path"]


def read_package(package: str | Path):
    """The spec and the weights folder of a saved package, read from its files. Not through
    MLModel, whose package handle rewrites Manifest.json on close: reading must not change the file."""
    path = Path(package)
    manifest_path = path / "Manifest.json"
    if not manifest_path.is_file():
        raise InputError(f"{path} is not an .mlpackage (no Manifest.json)")
    try:
        manifest = json.loads(manifest_path.read_text())
        root = _root_model(manifest)
    except (ValueError, KeyError) as error:
        raise InputError(f"{manifest_path}: not a Core ML package manifest ({error})") from None
    spec_path = path / "Data" / root
    if not spec_path.is_file():
        raise InputError(f"{spec_path} (the model spec {manifest_path} names) not found")
    spec = ct.proto.Model_pb2.Model()
    try:
        spec.ParseFromString(spec_path.read_bytes())
    except DecodeError:
        raise InputError(f"{spec_path}: not a Core ML model spec") from None
    return spec, spec_path.parent / "weights"


def _main_block(package: str | Path):
    """The spec, the main function's block and the weights folder of a saved mlprogram package."""
    spec, weights = read_package(package)
    if spec.WhichOneof("Type") != "mlProgram":
        raise InputError(f"{package} is not an mlprogram package")
    function = spec.mlProgram.functions["main"]
    return spec, function.block_specializations[function.opset], weights


def op_counts(package: str | Path) -> dict[str, int]:
    """How many ops of each type the saved package's main function has."""
    return _count_ops(_main_block(package)[1])


def _count_ops(block) -> dict[str, int]:
    counts: dict[str, int] = {}
    for op in block.operations:
        counts[op.type] = counts.get(op.type, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


# Ops the Neural Engine never runs (apple/ml-ane-transformers, docs/design.md §3).
ANE_NEVER = {"while_loop": "control flow", "cond": "control flow"}
LOOKUPS = ("gather", "gather_nd")  # on a constant table: an embedding lookup, which falls back to CPU
ANE_ALIGNMENT_BYTES = 64  # the ANE pads a tensor's last axis to 64 bytes
FLOAT32, FLOAT16 = ct.proto.MIL_pb2.DataType.Value("FLOAT32"), ct.proto.MIL_pb2.DataType.Value("FLOAT16")
ELEMENT_BYTES = {FLOAT32: 4, FLOAT16: 2}


def readiness(package: str | Path) -> dict:
    """The ANE-readiness report of `hrmc inspect`: what in this package keeps work off the Neural Engine.
    The package and its set are verified against their recorded parts first."""
    parts = package_set(package)
    spec, block, weights_folder = _main_block(package)
    findings: dict[str, int] = {}
    tensors = []
    constants = {output.name for op in block.operations if op.type == "const" for output in op.outputs}

    def note(finding: str) -> None:
        findings[finding] = findings.get(finding, 0) + 1

    for op in block.operations:
        if op.type in ANE_NEVER:
            note(f"{op.type}: {ANE_NEVER[op.type]}")
        if op.type in LOOKUPS and op.inputs["x"].arguments[0].name in constants:
            note(f"{op.type} on a constant table: an embedding lookup, falls back to CPU")
        for output in op.outputs:
            tensor = output.type.tensorType
            dims = [d.constant.size if d.HasField("constant") else None for d in tensor.dimensions]
            if None in dims:
                note("dynamic shapes")
            elif op.type != "const" and tensor.dataType == FLOAT32:
                note("float32 tensors (CPU/GPU only)")
            if op.type != "const" and None not in dims and dims and tensor.dataType in ELEMENT_BYTES:
                tensors.append((int(np.prod(dims)), output.name, dims, ELEMENT_BYTES[tensor.dataType]))
    largest = [{"name": name, "shape": dims,
                "last_axis_bytes": dims[-1] * width, "aligned": dims[-1] * width % ANE_ALIGNMENT_BYTES == 0}
               for _, name, dims, width in sorted(tensors, reverse=True)[:8]]
    weights = weights_folder / "weight.bin"
    if not weights.is_file():
        raise InputError(f"{weights}: missing (the package's weights)")
    meta = dict(spec.description.metadata.userDefined)
    return {"package": str(package), "flavour": meta.get("hrmc.flavour"), "ops": _count_ops(block),
            "not_on_ane": findings, "largest_tensors": largest,
            "weight_bytes": weights.stat().st_size,
            "compute_plan": _compute_plan(package),
            "set": {role: path.name for role, path in parts.items()}, "bound": (Path(package) / "Data" / PARTS_FILE).is_file()}


def _compute_plan(package: str | Path) -> dict[str, int] | str:
    """On macOS, Core ML's own plan: how many ops each device would run. Elsewhere, why not."""
    if platform.system() != "Darwin":
        return "needs macOS (coremltools' MLComputePlan)"
    from coremltools.models.compute_plan import MLComputePlan

    compiled = ct.models.MLModel(str(package)).get_compiled_model_path()
    plan = MLComputePlan.load_from_path(compiled, compute_units=ct.ComputeUnit.ALL)
    devices: dict[str, int] = {}
    for operation in plan.model_structure.program.functions["main"].block.operations:
        usage = plan.get_compute_device_usage_for_mlprogram_operation(operation)
        device = type(usage.preferred_compute_device).__name__ if usage else "none"
        devices[device] = devices.get(device, 0) + 1
    return devices


def _matmul(x: np.ndarray, y: np.ndarray, transpose_x: bool = False, transpose_y: bool = False) -> np.ndarray:
    """MIL's matmul. numpy multiplies float16 operands one output element at a time, adding in float32
    and rounding once (1.4 s for one projection of sudoku): the same float32 sums through BLAS, rounded
    once, take 0.05 s. Only the order of the float32 additions differs (one float16 ulp on 0.06 % of
    the elements), as it does between any two kernels."""
    x, y = (np.swapaxes(a, -1, -2) if flag else a for a, flag in ((x, transpose_x), (y, transpose_y)))
    if x.dtype == np.float16 and y.dtype == np.float16:
        return np.matmul(x.astype(np.float32), y.astype(np.float32)).astype(np.float16)
    return np.matmul(x, y)


FALLBACK: dict[str, Callable[..., np.ndarray]] = {
    "silu": lambda x: x / (1 + np.exp(-x)),  # MIL's silu has no value_inference
    "matmul": _matmul,
}


def saved_program(package: str | Path) -> Function:
    """The main function of the MIL program a saved package holds, read back from its files."""
    from coremltools.converters.mil.frontend.milproto.load import load as load_milproto

    spec, weights = read_package(package)
    return load_milproto(spec, spec.specificationVersion, str(weights)).functions["main"]


def replay(main: Function, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a saved program's main function op by op with numpy values (MIL reference semantics)."""
    values = {name: _mil_array(feed[name]) for name in main.inputs}
    with Function({}, opset_version=main.opset_version):
        for op in main.operations:
            if op.op_type == "const":
                values[op.outputs[0].name] = op.outputs[0].val
                continue
            arguments = {name: _replay_value(var, values) for name, var in op.inputs.items()}
            if op.op_type in FALLBACK:
                results = [FALLBACK[op.op_type](**arguments)]
            else:
                built = getattr(mb, op.op_type)(**arguments)
                results = [var.val for var in (built if isinstance(built, (list, tuple)) else [built])]
            for output, result in zip(op.outputs, results):
                values[output.name] = np.asarray(result)
    return {var.name: values[var.name] for var in main.outputs}


def _replay_value(var, values):
    if isinstance(var, (list, tuple)):
        return [_replay_value(v, values) for v in var]
    value = values[var.name] if var.name in values else var.val  # strings (modes) stay Python strings
    # numpy scalars as Python scalars: MIL's value_inference passes them to numpy as `keepdims` and the like
    scalar = isinstance(value, (np.generic, np.ndarray)) and np.ndim(value) == 0 and np.asarray(value).dtype.kind in "biu"
    return value.item() if scalar else value


def package_info(path: Path) -> CoreMLPackage:
    """What the executor needs to know of a saved package: flavour, batch, bool outputs, hrmc's metadata."""
    spec = read_package(path)[0]
    meta = {k.removeprefix("hrmc."): v for k, v in spec.description.metadata.userDefined.items() if k.startswith("hrmc.")}
    if "flavour" not in meta or "batch" not in meta:
        raise InputError(f"{path} was not written by hrmc lower (no hrmc metadata)")
    if BOOL_OUTPUTS.removeprefix("hrmc.") in meta:
        bools = tuple(json.loads(meta[BOOL_OUTPUTS.removeprefix("hrmc.")]))
    else:  # packages written before the key: their output descriptions say it
        bools = tuple(o.name for o in spec.description.output if o.shortDescription.endswith("(bool in the ONNX graph)"))
    return CoreMLPackage(path, meta["flavour"], int(meta["batch"]), bools, meta)


class CoreMLExecutor(Executor):
    """Packages of one flavour, shipped (`artifact`) or lowered afresh from the `fused`-pipeline graphs, run
    with predict on macOS and replayed elsewhere. `chunked` drives the chunk (or step) package from the host loop."""

    def __init__(self, flavour: str, onnx_model: str | Path | None = None, chunked: bool = False,
                 chunk: int | None = None, artifact: str | Path | None = None) -> None:
        self.flavour, self.chunked, self.chunk, self.graph_calls = flavour, chunked, chunk, 0
        self.name = f"{flavour}-chunked" if chunked else flavour
        self.precision = TARGETS[flavour].precision
        self.onnx_model = Path(onnx_model) if onnx_model else None
        self.artifact = Path(artifact) if artifact else None

    def prepare(self, model: HRM, policy: str, budget: int | None, batch: Batch) -> None:
        from hrmc.targets.onnx import check_source, lowered_source

        self.policy, self.budget = policy, resolve_budget(model, policy, budget)
        self.size, seq_len = next(iter(batch.values())).shape[0], model.inner.sequence_length(batch)
        self.packages: dict[str, CoreMLPackage] = {}
        self.loaded: dict[str, object] = {}  # each package is loaded once (an MLModel, or its MIL program), not per call
        self.start = carry_arrays(initial_carry(model, batch))
        self.on_macos = platform.system() == "Darwin"
        if self.artifact is not None:
            self.paths = package_set(self.artifact)
            for role, path in self.paths.items():
                info = self.packages[role] = package_info(path)
                check_source(info.meta, path, model, policy, self.budget, seq_len)
                if info.flavour != self.flavour:
                    raise InputError(f"{path} is a {info.flavour} package: the {self.name} executor runs "
                                     f"{self.flavour} packages")
                if info.batch != self.size:
                    raise InputError(f"{path} was lowered for batch {info.batch}: run with --batch {info.batch} "
                                     f"(or inputs of {info.batch} rows)")
            if "step" not in self.paths:
                raise InputError(f"{self.artifact}: its set has no step package (lower it again with hrmc lower)")
            steps = int(self.packages["chunk"].meta["chunk"]) if "chunk" in self.packages else 1
            if self.chunked and self.chunk not in (None, steps):
                raise InputError(f"--chunk {self.chunk}: {self.artifact} was lowered with {steps}-step chunks")
        else:
            self._folder = tempfile.TemporaryDirectory(prefix="hrmc-coreml-")
            chunk = (self.chunk or DEFAULT_CHUNK) if self.chunked else None
            structured, self.graphs = lowered_source(self.onnx_model, Path(self._folder.name), model, policy,
                                                     self.budget, batch, "fused", chunk)
            self.source = structured.name
            steps = chunk if "chunk" in self.graphs else 1
        self.chunk = steps if self.chunked else None

    def package(self, role: str) -> CoreMLPackage:
        """Without an artifact each package is built when first needed: step mode converts no more than it runs."""
        role = role if role != "chunk" or self.chunk != 1 else "step"
        if role not in self.packages:
            if self.artifact is not None:
                raise InputError(f"{self.artifact}: its set has no {role} package")
            out = Path(self._folder.name) / f"{role}.mlpackage"
            path = lower_coreml({role: self.graphs[role]}, out, self.flavour, self.size, self.source)[role]
            self.packages[role] = package_info(path)
        return self.packages[role]

    def call(self, role: str, feed: dict[str, np.ndarray]) -> Arrays:
        """Run one package on numpy inputs; outputs come back with the ONNX graph's types (float32 for floats)."""
        package = self.package(role)
        floats = np.float16 if FLAVOURS[self.flavour].float_type == "fp16" else np.float32
        # the package's I/O: floats in its float type, everything else int32
        feed = {name: value.astype(floats if value.dtype.kind == "f" else np.int32) for name, value in feed.items()}
        if package.path not in self.loaded:
            self.loaded[package.path] = (
                ct.models.MLModel(str(package.path), compute_units=FLAVOURS[self.flavour].compute_units)
                if self.on_macos else saved_program(package.path))
        program = self.loaded[package.path]
        values = program.predict(feed) if self.on_macos else replay(program, feed)
        return {name: value.astype(bool) if name in package.bool_outputs
                else value.astype(np.float32) if value.dtype == np.float16 else value for name, value in values.items()}

    def step(self, carry: Carry, batch: Batch) -> Arrays:
        return split_step(self.call("step", carry_feed(carry, batch)), chunked=True)

    def run(self, batch: Batch) -> Arrays:
        if self.chunk is not None:
            trajectory, self.graph_calls = run_chunks(lambda feed: self.call("chunk", feed), self.start, batch,
                                                      self.chunk)
            return trajectory
        return until_steps_run(self.call("static", {name: value.numpy() for name, value in batch.items()}))

    def whole_graph(self) -> str:
        role = "static" if self.chunk is None else "chunk"
        name = self.paths[role].name if self.artifact is not None and role in self.paths else f"the {role} package"
        return name + (" in a host loop" if self.chunk else "")

    def describe(self) -> str:
        how = "Core ML predict" if platform.system() == "Darwin" else LABEL
        chunks = f", {self.chunk}-step chunks with a host loop" if self.chunk else ""
        shipped = f"shipped artifact {self.artifact.name}, " if self.artifact else ""
        return (f"{self.name} ({shipped}mlprogram, {FLAVOURS[self.flavour].description}, {self.weights()} weights"
                f"{chunks}, coremltools {ct.__version__}; {how})")

    def weights(self) -> str:
        """How the packages store their weights (packages written before the key stored them plainly)."""
        if self.artifact is None:
            return TARGETS[self.flavour].weight_storage(None) or _plain_weights(self.flavour)
        return next(iter(self.packages.values())).meta.get("weights", _plain_weights(self.flavour))


def executor(name: str, onnx_model: str | Path | None, chunk: int | None,
             artifact: str | Path | None) -> CoreMLExecutor:
    return CoreMLExecutor(name.removesuffix("-chunked"), onnx_model, name.endswith("-chunked"), chunk, artifact)


def lower(target: Target, graphs: dict[str, Path], out: str | Path, options: LowerOptions) -> list[Path]:
    return list(lower_coreml(graphs, out, target.name, options.batch, options.source, options.progress,
                             options.force, options.weights).values())


def check_out(target: Target, out: str | Path, chunk: int | None, force: bool) -> None:
    """Every package `lower` will write: new, or a set hrmc wrote (unless `force`)."""
    roles = ["static", "step"] + (["chunk"] if chunk and chunk > 1 else [])
    for path in package_paths(out, roles, chunk).values():
        check_output_folder(path, target.suffix, f"Data/{PARTS_FILE}", force)


__all__ = ["FLAVOURS", "LABEL", "OPS", "CoreMLExecutor", "CoreMLPackage", "LowerError", "lower_coreml",
           "op_counts", "check_out", "executor", "lower",
           "package_info", "package_paths", "package_set", "read_package", "readiness", "replay", "saved_program"]
