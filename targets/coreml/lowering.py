"""The Core ML lowering: one static ONNX graph → a MIL program at a fixed batch, through coremltools' Builder.

`Builder` walks the graph node by node and emits each node's MIL ops through the op table (`OPS`,
ops.py); `build_program` wraps the result in the program's main function, with the graph's inputs
and outputs in the types Core ML I/O has. A flavour (`FLAVOURS`) says in which precision the
program is built, on which compute units it runs and how it computes attention.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import onnx_ir as ir

from hrmc.hrm_ref.compression import (COMPRESSIONS, Compressed, compress, compressible, lut_shape, read_int8,
                                     read_lut)
from hrmc.targets import FLOAT16_MAX, TARGETS, Target
from hrmc.targets._nodes import LowerError, NodeReader, constant_array, op_key, require_static
from hrmc.targets.coreml._coremltools import Function, Program, ct, mb, mil_types
from hrmc.targets.coreml.ops import MIL_DTYPES, MIL_TYPES, OPS, mil_array


@dataclass(frozen=True)
class Flavour:
    """What the Core ML backend does for one of its targets, beside what the `Target` says (its precision and
    weight storages)."""

    target: Target
    compute_units: object
    units_and_layout: str  # for the package's description, after the precision
    heads_apart: bool = False  # attention as one small matmul pair per head, no 4-D transposes (ANE)
    overflow_safe_norm: bool = False  # RMSNorm as a layer_norm over [x, −x]: no x² to overflow float16 (ANE)

    @property
    def precision(self) -> str:
        """Its Target's: every float tensor inside the program is of it."""
        return self.target.precision

    @property
    def float_type(self) -> str:
        """The MIL name of its precision."""
        return {"float16": "fp16", "float32": "fp32"}[self.precision]

    @property
    def description(self) -> str:
        return f"{self.precision}, {self.units_and_layout}"


# The program is built in its final precision, so ct.convert runs no pass pipeline: coremltools'
# passes (its fp16 pass above all) take minutes on an unrolled graph, and ours already ran on ONNX.
FLAVOURS = {"coreml": Flavour(TARGETS["coreml"], ct.ComputeUnit.CPU_ONLY, "CPU_ONLY"),
            "ane": Flavour(TARGETS["ane"], ct.ComputeUnit.CPU_AND_NE,
                           "CPU_AND_NE, attention per head, overflow-safe RMSNorm", True, True)}
# float16x2: each matmul weight W as the float16 pair hi = fp16(W), lo = fp16(W - hi), stacked along the
# contracted axis and read by one matmul of [x, x], so its accumulation adds both halves before the one
# rounding of its output: float32-exact weights, twice the weight bytes and matmul work, every op still
# float16 for the ANE. float16 weights alone cost random-weight sudoku 59.4 dB on logits (docs/design.md §4).
# int8, lut6, lut4: each compressible matmul weight (hrm_ref.compression) as Core ML's iOS 18 constexpr
# dequantisation op over its compressed constants, so the package (and the device's memory) holds them compressed:
#   int8  constexpr_blockwise_shift_scale(data int8 [K, N], scale [1, N])  (a scale per output channel)
#   lutB  constexpr_lut_to_dense(indices uintB [K, N], lut [1, N/G, 2**B, 1])  (a palette per G output channels)
# (for a transposed weight [N, K], scale [N, 1] and lut [N/G, 1, 2**B, 1]); the tables in the program's float type.
DECOMPRESSING = {"constexpr_blockwise_shift_scale": "int8", "constexpr_lut_to_dense": "lut"}


def _float16_halves(weight: np.ndarray) -> list[np.ndarray]:
    """hi = fp16(W) and lo = fp16(W − hi): W to float32's precision in two float16 arrays."""
    high = weight.astype(np.float16)
    return [high, (weight - high.astype(np.float32)).astype(np.float16)]


def _storable(array: np.ndarray, float_dtype: type, name: str, source: str) -> np.ndarray:
    """A float constant as a program of `float_dtype` stores it; one beyond float16's range cannot be (as a pair
    its halves would be inf and −inf, whose sum is NaN): refused, naming it."""
    if float_dtype is np.float16 and array.dtype.kind == "f" and array.size:
        finite = array[np.isfinite(array)]
        if finite.size and float(np.abs(finite).max()) > FLOAT16_MAX:
            raise LowerError(f"{source}: constant {name!r} {list(array.shape)} holds {float(np.abs(finite).max()):g}, "
                             f"beyond float16's {FLOAT16_MAX:g}: a float16 program cannot store it (lower it for "
                             "--target coreml, in float32)")
    return array


def compressed_const(weight: Compressed):
    """The MIL op that holds a compressed weight, decompressed when Core ML loads or runs the program."""
    bits = COMPRESSIONS[weight.storage]
    if bits is None:
        return mb.constexpr_blockwise_shift_scale(data=weight.values, scale=weight.table)
    indices = weight.values.astype(mil_types.nptype_from_builtin(mil_types.string_to_builtin(f"uint{bits}")))
    return mb.constexpr_lut_to_dense(indices=indices, lut=weight.table.reshape(lut_shape(weight.values.shape,
                                                                                        weight.axis, bits)))


def stored_compressed(op) -> Compressed:
    """The compressed weight a (saved, read back) constexpr dequantisation op holds, as hrm_ref.compression
    writes it: what the weight check compares with the model's."""
    if DECOMPRESSING[op.op_type] == "int8":
        return read_int8(op.data.val, np.asarray(op.scale.val))
    return read_lut(op.indices.val, np.asarray(op.lut.val))


def plain_weights(flavour: str) -> str:
    """One weight in the flavour's float type: a target with no choice, and packages written before the choice."""
    return FLAVOURS[flavour].precision


class Builder(NodeReader):
    """Maps one ONNX graph's nodes to MIL ops inside the current Function; `env` holds the MIL vars."""

    def __init__(self, source: str, flavour: Flavour, weight_pairs: bool = False,
                 compression: str | None = None) -> None:
        super().__init__(source)
        self.env = {}
        self.float_type, self.heads_apart = flavour.float_type, flavour.heads_apart
        self.overflow_safe_norm, self.weight_pairs = flavour.overflow_safe_norm, weight_pairs
        self.compression = compression  # int8, lut6, lut4: compressible matmul weights so stored
        self.float_dtype = np.float16 if flavour.float_type == "fp16" else np.float32

    def scalar(self, value: float) -> np.ndarray:
        """A float constant in the program's float type."""
        return self.float_dtype(value)

    def array(self, array: np.ndarray, name: str = "") -> np.ndarray:
        """A constant as MIL takes it: int64 as int32, floats in the program's float type."""
        array = _storable(mil_array(array), self.float_dtype, name, self.source)
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
            self.env[value.name] = mb.const(val=self.array(array, value.name))
        return self.env[value.name]

    def matmul(self, x: ir.Value, y: ir.Value, transpose_y: bool = False, bias: ir.Value | None = None):
        """x·y (or x·yᵀ) + bias. A constant float32 y in float16 pairs when the lowering asks for them
        (float16x2). In float16, a constant bias joins a constant y as extra contracted rows, read by
        ones, so product and bias are summed in one accumulation and rounded once: on the trained sudoku4
        the q head's W·z reaches 12–13, where float16's step is 2⁻⁷, and was rounded again after its
        bias (+6 dB on the q values at steps 3–8, docs/design.md §3). A compressible y where the lowering
        compresses weights: its constexpr dequantisation op, its bias (if any) added after."""
        weight = constant_array(y)
        offset = None if bias is None else constant_array(bias)
        if self.compression and weight is not None and weight.dtype == np.float32 and compressible(weight.shape):
            key = f"{y.name} ({self.compression}, channels on axis {0 if transpose_y else 1})"
            if key not in self.env:
                compressed = compress(_storable(weight, self.float_dtype, y.name, self.source), self.compression,
                                      0 if transpose_y else 1, self.float_dtype)
                self.env[key] = compressed_const(compressed)
            product = mb.matmul(x=self.var(x), y=self.env[key], transpose_y=transpose_y)
            return product if bias is None else mb.add(x=product, y=self.var(bias))
        pairs = self.weight_pairs and weight is not None and weight.dtype == np.float32
        folded = self.float_type == "fp16" and weight is not None and offset is not None
        if not (pairs or folded):
            product = mb.matmul(x=self.var(x), y=self.var(y), transpose_y=transpose_y)
            return product if bias is None else mb.add(x=product, y=self.var(bias))
        axis = -1 if transpose_y else -2  # the contracted axis of y
        key = f"{y.name}{' + ' + bias.name if folded else ''} ({'float16 pair' if pairs else 'float16'})"
        if key not in self.env:
            _storable(weight, np.float16, y.name, self.source)
            if folded:
                _storable(offset, np.float16, bias.name, self.source)
            halves = _float16_halves(weight) if pairs else [weight.astype(np.float16)]
            rows = []
            if folded:
                column = offset.reshape((-1, 1) if transpose_y else (1, -1))
                rows = _float16_halves(column.astype(np.float32)) if pairs else [column.astype(np.float16)]
            self.env[key] = mb.const(val=np.concatenate(halves + rows, axis=axis))
        pieces = [self.var(x)] * (2 if pairs else 1)
        if folded:
            ones = (*self.var(x).shape[:-1], 2 if pairs else 1)
            pieces.append(mb.const(val=np.ones(ones, np.float16)))
        joined = pieces[0] if len(pieces) == 1 else mb.concat(values=pieces, axis=-1)
        product = mb.matmul(x=joined, y=self.env[key], transpose_y=transpose_y)
        return product if bias is None or folded else mb.add(x=product, y=self.var(bias))

    def emit(self, node: ir.Node) -> None:
        self.node, key = node, op_key(node)
        if key not in OPS:
            raise self.fail(f"no MIL lowering for op {key!r}")
        results = OPS[key](self, node)
        results = results if isinstance(results, (list, tuple)) else [results]
        for output, result in zip(node.outputs, results):
            self.env[output.name] = result


@dataclass
class MilProgram:
    """A built MIL program, and by function: the ONNX node each op computes (by the op's first output
    name; the range report names it), and the MIL value that holds each ONNX value (the localisation
    compares them): names a user can find in the ONNX graph."""

    program: Program
    origins: dict[str, dict[str, str]] = field(default_factory=dict)
    values: dict[str, dict[str, str]] = field(default_factory=dict)


def build_program(graphs: Mapping[str, ir.Model], batch: int, source: str, flavour: Flavour = FLAVOURS["coreml"],
                  weight_pairs: bool = False, compression: str | None = None) -> MilProgram:
    """The MIL program of static ONNX graphs at a fixed batch size, one function per graph (by name);
    the first is the default function. `compression`: int8, lut6 or lut4 (hrm_ref.compression), else None."""
    built = MilProgram(Program())
    for name, model in graphs.items():
        function, built.origins[name], built.values[name] = _build_function(model, batch, f"{source} ({name})",
                                                                            flavour, weight_pairs, compression)
        built.program.add_function(name, function)
    built.program.default_function_name = next(iter(graphs))
    return built


def _build_function(model: ir.Model, batch: int, source: str, flavour: Flavour, weight_pairs: bool,
                    compression: str | None):
    """The MIL function of one static ONNX graph, the ONNX node of each of its ops, and the MIL value of
    each ONNX value an op computes.

    int64 becomes int32; bool inputs and outputs travel as int32 (Core ML I/O has no bool) and float
    ones in the flavour's float type (float16 I/O, from iOS 16, spares the ANE a cast at each end).
    """
    graph, float_type = model.graph, flavour.float_type
    require_static(graph, source, "Core ML")
    inside = {value.name: _inside_type(value, float_type) for value in graph.inputs}
    specs = {}
    for value in graph.inputs:
        dims = [batch if not isinstance(d, int) else d for d in value.shape]
        specs[value.name] = mb.placeholder(shape=dims, dtype=MIL_TYPES["int32" if inside[value.name] == "bool"
                                                                         else inside[value.name]])
    builder = Builder(source, flavour, weight_pairs, compression)
    # MIL names unnamed ops from a process-wide counter (ct.convert clears it after, a replay does not):
    # start from zero so the names, and so the package bytes, depend on this graph only
    mb.name_count.clear()
    origins = {}
    # iOS 18's opset where weights are compressed: its constexpr ops take int8, uint4 and uint6 groupwise
    with Function(specs, opset_version=ct.target.iOS18 if compression else ct.target.iOS17) as function:
        for value in graph.inputs:
            var = function.inputs[value.name]
            builder.env[value.name] = mb.cast(x=var, dtype="bool") if inside[value.name] == "bool" else var
        for node in graph:
            before = function.operations[-1] if len(function.operations) else None
            builder.emit(node)
            emitted = itertools.takewhile(lambda op: op is not before, reversed(function.operations))
            origins.update((op.outputs[0].name, node.name) for op in emitted if op.op_type != "const")
        outputs = []
        for value in graph.outputs:
            var = builder.env[value.name]
            if var.dtype == mil_types.bool:
                var = mb.cast(x=var, dtype="int32")
            outputs.append(mb.identity(x=var, name=value.name))
        function.set_outputs(outputs)
    computed = {var.name for op in function.operations if op.op_type != "const" and op.op_type not in DECOMPRESSING
                for var in op.outputs}
    values = {name: var.name for name, var in builder.env.items() if getattr(var, "name", None) in computed}
    return function, origins, values


def _inside_type(value: ir.Value, float_type: str) -> str:
    """The MIL type a graph input has inside the program."""
    if value.dtype not in MIL_DTYPES:
        raise LowerError(f"graph input {value.name!r} is {value.dtype.name}, which has no MIL type")
    inside = MIL_DTYPES[value.dtype]
    return float_type if inside in ("fp32", "fp16") else inside
