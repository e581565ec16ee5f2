"""The ANE-readiness report of `hrmc inspect`: what in a saved package keeps work off the Neural Engine.

Read from the package's MIL program (control flow, embedding lookups, float32 tensors, dynamic
shapes, the largest activations against the ANE's 64-byte row alignment) and, on macOS only, from
Core ML's own compute plan.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from hrmc.errors import InputError
from hrmc.targets.coreml._coremltools import ct
from hrmc.targets.coreml.package import count_ops, function_block, package_functions

# Ops the Neural Engine never runs (apple/ml-ane-transformers, docs/design.md §3).
ANE_NEVER = {"while_loop": "control flow", "cond": "control flow"}
LOOKUPS = ("gather", "gather_nd")  # on a constant table: an embedding lookup, which falls back to CPU
ANE_ALIGNMENT_BYTES = 64  # the ANE pads a tensor's last axis to 64 bytes
FLOAT32, FLOAT16 = ct.proto.MIL_pb2.DataType.Value("FLOAT32"), ct.proto.MIL_pb2.DataType.Value("FLOAT16")
ELEMENT_BYTES = {FLOAT32: 4, FLOAT16: 2}


def readiness(package: str | Path) -> dict:
    """The ANE-readiness report of `hrmc inspect`: what in this package keeps work off the Neural Engine.
    The package is verified against its recorded parts first."""
    # a 0.1 package set names its other packages too: this package's functions only
    functions = {f.name: f for f in package_functions(package).values() if f.path == Path(package)}
    findings: dict[str, int] = {}
    tensors = []
    counts = {}
    for name in functions:
        spec, block, weights_folder = function_block(package, name)
        counts[name] = count_ops(block)
        tensors += _scan(block, findings)
    largest = [{"name": name, "shape": dims,
                "last_axis_bytes": dims[-1] * width, "aligned": dims[-1] * width % ANE_ALIGNMENT_BYTES == 0}
               for _, name, dims, width in sorted(tensors, reverse=True)[:8]]
    weights = weights_folder / "weight.bin"
    if not weights.is_file():
        raise InputError(f"{weights}: missing (the package's weights)")
    record = next(iter(functions.values())).record
    parameters = _parameters(record.config)
    return {"package": str(package), "flavour": record.flavour, "weights": record.weights,
            "functions": {name: {"role": f.role, "ops": sum(counts[name].values())} for name, f in functions.items()},
            "ops": counts[next(iter(counts))], "not_on_ane": findings, "largest_tensors": largest,
            "weight_bytes": weights.stat().st_size, "parameters": parameters,
            "weight_bytes_per_float16_parameter": round(weights.stat().st_size / (2 * parameters), 4)
            if parameters else None,
            "compute_plan": _compute_plan(package)}


def _scan(block, findings: dict[str, int]) -> list[tuple[int, str, list[int], int]]:
    """Count what keeps one function's ops off the ANE into `findings`; its activations (size, name, shape, width)."""
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
    return tensors


def _parameters(config: dict) -> int:
    """The model's parameter count, from the config the package records."""
    import torch

    from hrmc.hrm_ref import HRM, HRMConfig

    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = HRM(HRMConfig(**config))
    return sum(parameter.numel() for parameter in model.parameters())


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
