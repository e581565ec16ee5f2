"""The MIL program a saved package holds, read straight from its protobuf, for the interpreter.

coremltools' own reader (`milproto.load`) rebuilds every op through its builder, with type and value
inference per op: 41 s of sudoku's 54 s range check. This reads what is written: each function's
inputs, its ops in order (each input bound to a value's name or to a constant), and its outputs; each
constant read as coremltools reads it (`milproto.load._load_value`: immediate values and the weight
file). The objects answer what the interpreter, the weight check and the range report ask of
coremltools' (`op.op_type`, `op.inputs`, `op.outputs`, `var.val`, an input by name, `op.data`), nothing
more.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from hrmc.targets.coreml._coremltools import (SSAOpRegistry, TranscriptionContext, TupleInputType, load_value,
                                              mil_types, proto_to_types)


@dataclass(eq=False)
class Var:
    """A value: a function's input (`op` None, `val` None), a constant (`val` set), or an op's output."""
    name: str
    dtype: type  # the primitive type of a tensor, as coremltools' Var.dtype
    shape: tuple[int, ...]
    val: Any = None
    op: Op | None = field(default=None, repr=False)  # a repr of the op would repr its inputs' ops: the graph

    @property
    def rank(self) -> int:
        return len(self.shape)


@dataclass(eq=False)
class Op:
    op_type: str
    name: str
    inputs: dict[str, Var | list[Var]]
    outputs: list[Var] = field(default_factory=list)

    def __getattr__(self, name: str):  # an input by name, as coremltools' ops answer (`op.data.val`)
        inputs = self.__dict__.get("inputs", {})
        if name in inputs:
            return inputs[name]
        raise AttributeError(name)


@dataclass(eq=False)
class SavedFunction:
    inputs: dict[str, Var]
    operations: list[Op] = field(repr=False)  # thousands (a traceback shows the repr)
    outputs: list[Var]


def read_program(spec, weights: str) -> dict[str, SavedFunction]:
    """Every function of a saved model spec's MIL program, by name; constants read from `weights` (the
    package's weights folder)."""
    context = TranscriptionContext(str(weights))  # only its weight-file readers are used
    return {name: _function(function, context) for name, function in spec.mlProgram.functions.items()}


def _function(spec, context: TranscriptionContext) -> SavedFunction:
    named: dict[str, Var] = {}
    inputs = {}
    for value in spec.inputs:
        inputs[value.name] = named[value.name] = _var(value.name, value.type)
    block = spec.block_specializations[spec.opset]
    operations = [_op(op, named, context) for op in block.operations]
    return SavedFunction(inputs, operations, [named[name] for name in block.outputs])


def _op(spec, named: dict[str, Var], context: TranscriptionContext) -> Op:
    name = load_value(context, spec.attributes["name"]) if "name" in spec.attributes else spec.outputs[0].name
    op = Op(spec.type, name, {})
    tuples = _tuple_inputs(spec.type)
    for parameter, argument in spec.inputs.items():
        bound = [named[binding.name] if binding.WhichOneof("binding") == "name" else _constant(binding.value, context)
                 for binding in argument.arguments]
        op.inputs[parameter] = bound if parameter in tuples or len(bound) != 1 else bound[0]
    for output in spec.outputs:
        var = _var(output.name, output.type, op)
        if spec.type == "const":
            var.val = load_value(context, spec.attributes["val"])
        op.outputs.append(var)
        named[output.name] = var
    return op


@functools.lru_cache(maxsize=None)
def _tuple_inputs(op_type: str) -> frozenset[str]:
    """The inputs of an op type that take a list of values (concat's `values`), whatever their length. (An op
    coremltools does not know is left for the interpreter to name.)"""
    versions = SSAOpRegistry.core_ops.get(op_type)
    if not versions:
        return frozenset()
    input_types = versions[max(versions)].input_spec.input_types
    return frozenset(name for name, kind in input_types.items() if isinstance(kind, TupleInputType))


def _constant(value_spec, context: TranscriptionContext) -> Var:
    var = _var("", value_spec.type)
    var.val = load_value(context, value_spec)
    return var


def _var(name: str, type_spec, op: Op | None = None) -> Var:
    sym_type = proto_to_types(type_spec)
    if mil_types.is_tensor(sym_type):
        return Var(name, sym_type.get_primitive(), tuple(int(d) for d in sym_type.get_shape()), op=op)
    return Var(name, sym_type, (), op=op)
