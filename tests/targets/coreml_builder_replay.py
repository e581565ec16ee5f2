"""The slow reference for the MIL interpreter and its program reader: a saved function read back by coremltools'
own reader, and every op rebuilt through coremltools' builder from numpy constants, so that coremltools' own
type and value inference computes it (hrmc's replay before the interpreter). The interpreter's kernels for matmul, layer_norm, silu and the decompressing ops
are the reference's too: those ops have no faithful `value_inference`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hrmc.targets.coreml._coremltools import Function, mb, mil_types
from hrmc.targets.coreml.interpreter import KERNELS, NUMPY_TYPES
from hrmc.targets.coreml.lowering import DECOMPRESSING
from hrmc.targets.coreml.ops import mil_array
from hrmc.targets.coreml.package import read_package

OWN_KERNELS = {"matmul", "layer_norm", "silu", *DECOMPRESSING}


def coremltools_program(package: Path, function: str) -> Function:
    """One function of a saved package as coremltools reads it back (every op rebuilt through its builder)."""
    from coremltools.converters.mil.frontend.milproto.load import load

    spec, weights = read_package(package)
    return load(spec, spec.specificationVersion, str(weights)).functions[function]


def builder_replay(main: Function, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    values = {name: mil_array(feed[name]) for name in main.inputs}
    with np.errstate(all="ignore"):
        for op in main.operations:
            if op.op_type == "const":
                values[op.outputs[0].name] = op.outputs[0].val
                continue
            arguments = {name: _value(var, values) for name, var in op.inputs.items()}
            if op.op_type in OWN_KERNELS:  # in the declared type: the matmul kernel leaves float32 sums unrounded
                declared = NUMPY_TYPES[mil_types.builtin_to_string(op.outputs[0].dtype)]
                results = [np.asarray(KERNELS[op.op_type](**arguments)).astype(declared)]
            else:
                with Function({}, opset_version=main.opset_version):  # a scratch function per op
                    built = getattr(mb, op.op_type)(**arguments)
                    results = [var.val for var in (built if isinstance(built, (list, tuple)) else [built])]
            for output, result in zip(op.outputs, results):
                values[output.name] = np.asarray(result)
    return {var.name: values[var.name] for var in main.outputs}


def _value(var, values):
    if isinstance(var, (list, tuple)):
        return [_value(v, values) for v in var]
    value = values[var.name] if var.name in values else var.val  # strings (modes) stay Python strings
    # numpy scalars as Python scalars: MIL's value_inference passes them to numpy as `keepdims` and the like
    scalar = isinstance(value, (np.generic, np.ndarray)) and np.ndim(value) == 0 and np.asarray(value).dtype.kind in "biu"
    return value.item() if scalar else value
