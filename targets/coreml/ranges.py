"""The float16 range report (`hrmc inspect --ranges`, and the check `hrmc lower --target ane` runs):
the values a package's program has to hold, against what float16 on the Neural Engine can hold.

The package's whole-inference function is replayed in float32 (`runtime.replay(float32=True)`), so a value
float16 could not hold shows as it is, not as inf, and every op's largest |value| is recorded. Limits
(docs/design.md §3, from public measurements):
- 65504, float16's largest finite value: every float op's output;
- 32,760: matmul outputs, which the ANE returns as inf above about that (sbryngelson/ANEForge, M1–M5);
- 2048: integer-valued sums (add, sub, reduce_sum, cumsum), exact in float16 only up to 2048.
An op whose largest value comes within `HEADROOM` (2×) of its limit is reported; one at or past the
limit overflows, and `hrmc lower --target ane` fails on it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from hrmc.errors import GateFailure, InputError
from hrmc.hrm_ref import HRMConfig, load_batch, random_batch
from hrmc.targets import FLOAT16_MAX
from hrmc.targets.coreml.package import PackageFunction, origins, package_functions, read_functions
from hrmc.targets.coreml.runtime import replay, saved_program

MATMUL_OUTPUT_MAX = 32760.0
EXACT_INTEGERS = 2048.0
HEADROOM = 2.0
SUMS = ("add", "sub", "reduce_sum", "cumsum")
SHOWN = 5  # warnings `hrmc lower` prints, the tightest first


@dataclass(frozen=True)
class OpRange:
    """The largest |value| one op's outputs held, against the limit that applies to that op."""

    op: str  # MIL op type
    name: str  # its first output, as the package names it
    node: str  # the ONNX node it computes ("" in packages written before hrmc recorded origins)
    max_abs: float
    limit: float
    what: str  # which limit: "float16 range", "matmul output", "integer-valued sum"

    @property
    def headroom(self) -> float:
        return self.limit / self.max_abs if self.max_abs else math.inf

    @property
    def overflows(self) -> bool:
        return self.max_abs >= self.limit

    def to_dict(self) -> dict:
        return asdict(self) | {"headroom": round(self.headroom, 3) if math.isfinite(self.headroom) else None,
                               "overflows": self.overflows}

    def describe(self) -> str:
        where = f" (ONNX node {self.node})" if self.node else ""
        state = "overflows" if self.overflows else f"{self.headroom:.2f}× headroom"
        return f"{self.op} {self.name}{where}: max |x| {self.max_abs:.6g} against {self.limit:g} ({self.what}): {state}"


def op_range(op_type: str, name: str, node: str, results: list[np.ndarray]) -> OpRange | None:
    """The range of one op's float outputs; None for an op with none. A value that is not finite (inf, or the
    NaN of inf − inf) overflows whatever its limit: its max |x| is inf."""
    floats = [r for r in results if r.dtype.kind == "f" and r.size]
    if not floats:
        return None
    finite = all(np.isfinite(r).all() for r in floats)
    max_abs = max(float(np.max(np.abs(r))) for r in floats) if finite else math.inf
    if op_type == "matmul":
        limit, what = MATMUL_OUTPUT_MAX, "matmul output"
    elif op_type in SUMS and finite and max_abs > 0 and all(np.array_equal(r, np.round(r)) for r in floats):
        limit, what = EXACT_INTEGERS, "integer-valued sum"
    else:
        limit, what = FLOAT16_MAX, "float16 range"
    return OpRange(op_type, name, node, max_abs, limit, what)


def value_ranges(whole: PackageFunction, feed: dict[str, np.ndarray]) -> list[OpRange]:
    """Every op's range in a package's whole-inference function, replayed in float32 on `feed`."""
    main, nodes = saved_program(whole.path, whole.name), origins(whole.path, whole.name)
    missing = sorted(set(main.inputs) - set(feed))
    if missing:
        raise InputError(f"{whole.path}: the inputs have no {', '.join(missing)} (the package reads "
                         f"{', '.join(main.inputs)})")
    rows = [name for name, var in main.inputs.items() if np.shape(feed[name])[0] != var.shape[0]]
    if rows:
        raise InputError(f"{whole.path} was lowered for batch {whole.batch}: the inputs' {rows[0]} has "
                         f"{np.shape(feed[rows[0]])[0]} rows")
    ranges: list[OpRange] = []

    def record(op, results: list[np.ndarray]) -> None:
        name = op.outputs[0].name
        found = op_range(op.op_type, name, nodes.get(name, ""), results)
        if found is not None:
            ranges.append(found)

    replay(main, {name: np.asarray(feed[name]) for name in main.inputs}, observe=record, float32=True)
    return ranges


def package_inputs(whole: PackageFunction, inputs: str | None, seed: int) -> tuple[dict[str, np.ndarray], str]:
    """The inputs a range check runs on, and how to say which: an npz file, or the seeded random batch
    of the package's model at the package's batch."""
    config = HRMConfig(**whole.record.config)
    if inputs is not None:
        batch, what = load_batch(config, inputs), inputs
    else:
        batch = random_batch(config, whole.batch, seed, whole.record.seq_len)
        what = f"a seeded random batch (seed {seed}, batch {whole.batch})"
    return {name: value.numpy() for name, value in batch.items()}, what


def check_ranges(written: Path, shown_as: Path, seed: int, progress: Callable[[str], None]) -> None:
    """`hrmc lower --target ane`'s range check of the whole-inference function of the package (written
    to `written`, shipped as `shown_as`): a warning for each op within HEADROOM of its limit, a
    GateFailure on an overflow. Packages without one (an executor's step package) have nothing to check."""
    whole = read_functions(written).get("static")
    if whole is None:
        return
    feed, what = package_inputs(whole, None, seed)
    progress(f"checking float16 ranges: the whole inference replayed in float32 on {what}")
    flagged = sorted((r for r in value_ranges(whole, feed) if r.headroom < HEADROOM), key=lambda r: r.headroom)
    for found in flagged[:SHOWN]:
        progress(f"warning: {shown_as.name}: {found.describe()}")
    if len(flagged) > SHOWN:
        progress(f"warning: {shown_as.name}: {len(flagged) - SHOWN} more ops within {HEADROOM:g}× of a limit "
                 f"(hrmc inspect --ranges lists them)")
    if flagged and flagged[0].overflows:
        raise GateFailure(f"{shown_as.name}: float16 overflow: {flagged[0].describe()} "
                          f"(hrmc inspect --ranges lists every op near a limit)")


def range_report(package: str | Path, inputs: str | None, seed: int) -> dict:
    """The report of `hrmc inspect --ranges`: every op of the package's whole-inference function within
    HEADROOM of its limit, and the tightest ops."""
    whole = package_functions(package).get("static")
    if whole is None:
        raise InputError(f"{package}: has no whole-inference function to check (lowered by an executor?)")
    feed, what = package_inputs(whole, inputs, seed)
    ranges = value_ranges(whole, feed)
    flagged = sorted((r for r in ranges if r.headroom < HEADROOM), key=lambda r: r.headroom)
    tightest = sorted(ranges, key=lambda r: r.headroom)[:5]
    return {"package": str(whole.path), "function": whole.name, "inputs": what, "replay": "MIL program computed in float32",
            "ops": len(ranges), "headroom": HEADROOM,
            "limits": {"float16 range": FLOAT16_MAX, "matmul output": MATMUL_OUTPUT_MAX,
                       "integer-valued sum": EXACT_INTEGERS},
            "flagged": [r.to_dict() for r in flagged], "tightest": [r.to_dict() for r in tightest],
            "overflows": [r.describe() for r in flagged if r.overflows]}
