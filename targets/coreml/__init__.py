"""The Core ML backend: the post-pass graph, op by op, as a MIL program → `.mlpackage` (mlprogram).

`lower_coreml(graphs, out, flavour, batch)` builds each graph's MIL program with coremltools' Builder
(`OPS` is the op-mapping table; a node without an entry fails at lower time naming the op and the
node), converts it (`ct.convert(..., convert_to="mlprogram")`), and joins them into one multifunction
package (`solve`, `step`, `chunkK`, `init`) over one weight file, saved atomically. Two flavours:

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
its MIL program is read back and run by the MIL interpreter, per op a numpy kernel computing what
coremltools' own `value_inference` does. That checks the lowering against MIL's reference
semantics, not Core ML's runtime kernels: every report says so.

    ops.py        OPS: each ONNX op as MIL ops
    lowering.py   Builder, build_program: one static graph → a MIL program; the flavours
    package.py    lower_coreml: the multifunction .mlpackage, written and read back (0.1's package sets too)
    runtime.py    predict on macOS, the MIL replay elsewhere
    interpreter.py  the MIL interpreter the replay runs: KERNELS, each MIL op as numpy
    executors.py  CoreMLExecutor: coreml, coreml-chunked, ane
    readiness.py  the ANE-readiness report of `hrmc inspect`
    ranges.py     the float16 range report (`inspect --ranges`) and `lower --target ane`'s range check
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

from hrmc.files import check_output_folder
from hrmc.targets import LowerOptions, Target
from hrmc.targets._nodes import LowerError
from hrmc.targets.coreml._coremltools import ct
from hrmc.targets.coreml.executors import CoreMLExecutor
from hrmc.targets.coreml.lowering import DECOMPRESSING, FLAVOURS, build_program
from hrmc.targets.coreml.ops import OPS
from hrmc.targets.coreml.package import (PARTS_FILE, PackageFunction, function_block, lower_coreml, op_counts,
                                         package_functions, read_functions, read_package, read_record)
from hrmc.targets.coreml.ranges import check_ranges, range_report
from hrmc.targets.coreml.readiness import ANE_ALIGNMENT_BYTES, readiness
from hrmc.targets.coreml.runtime import LABEL, replay, saved_program


def executor(target: Target, name: str, onnx_model: str | Path | None, chunk: int | None,
             artifact: str | Path | None) -> CoreMLExecutor:
    return CoreMLExecutor(target, onnx_model, name.endswith("-chunked"), chunk, artifact)


def lower(target: Target, graphs: dict[str, Path], out: str | Path, options: LowerOptions) -> list[Path]:
    """The package; a float16 flavour's whole inference checked against float16's limits first (ranges.py).
    With `options.companion` (lower --mac-check), that beside it too: both or neither."""
    checks: list[Callable[[Path, Path], None]] = []
    if target.precision == "float16":
        checks.append(functools.partial(check_ranges, seed=options.seed, progress=options.progress))
    if options.companion is None:
        return [lower_coreml(graphs, out, target.name, options.batch, options.source, options.progress,
                             options.force, options.weights, _each(checks), options.about)]
    with options.companion.writing(Path(out), options.force) as fill:
        written = lower_coreml(graphs, out, target.name, options.batch, options.source, options.progress,
                               options.force, options.weights, _each(checks + [fill]), options.about)
    return [written, options.companion.path(Path(out))]


def _each(checks: list[Callable[[Path, Path], None]]) -> Callable[[Path, Path], None]:
    """One check of the package before it appears (lower_coreml's `check`): each of `checks`, in turn."""
    def check(written: Path, shown_as: Path) -> None:
        for each in checks:
            each(written, shown_as)
    return check


def check_out(target: Target, out: str | Path, chunk: int | None, force: bool) -> list[Path]:
    """The package `lower` will write: new, or one hrmc wrote (unless `force`)."""
    return [check_output_folder(out, target.suffix, f"Data/{PARTS_FILE}", force)]


# `ct`: coremltools as hrmc imports it (quietly, pinned): other stages read its version and protobuf types here
__all__ = ["ANE_ALIGNMENT_BYTES", "DECOMPRESSING", "FLAVOURS", "LABEL", "OPS", "PARTS_FILE", "CoreMLExecutor",
           "LowerError", "PackageFunction", "build_program", "check_out", "ct", "executor", "function_block", "lower",
           "lower_coreml", "op_counts", "package_functions", "range_report", "read_functions", "read_package",
           "read_record", "readiness", "replay", "saved_program"]
