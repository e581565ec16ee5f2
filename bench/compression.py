"""bench/RESULTS.md's table of weight storages: each trained fixture's `ane` package in each storage, measured.

    python -m hrmc.bench.compression [--out DIR] [--puzzles N] [--json]

For each trained fixture (sudoku4, sudoku6, trm-sudoku4; policy q-halt) and each `--weights` of the ane
target (float16x2, float16, int8, lut6, lut4):
- package bytes: the package at batch 1, as `hrmc lower --target ane --preset P --policy q-halt --onnx-model
  DIR/P.onnx --batch 1 --weights W -o DIR/P-W.mlpackage` writes it (the same function, without the range check,
  which writes nothing), and its weight file against the float16 bytes of the model's parameters;
- exact-solved and cells: the package lowered alike at the batch of the held-out puzzles (the first N; all 256 by
  default), run whole on them (its `inference` function, by the MIL replay on Linux), against their labels;
  answers (every position of a puzzle) and halting steps agreed with hrm_ref float32 on the model's own weights;
- the ANE estimate per chip: the whole inference at batch 1, `hrmc bench --estimate ane --artifact DIR/P-W.mlpackage`
  (an analytic model, not a measurement: bench/estimate.py).
The gate itself (both questions of a compressed package) is `hrmc parity torch ane --artifact`; its tests run
it on the first 32 held-out puzzles (tests/parity/test_trained_fixtures.py).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from hrmc import hrm_ref
from hrmc.bench.ane_chips import CHIPS
from hrmc.bench.estimate import estimate_artifact
from hrmc.hrm_ref.act import resolve_budget
from hrmc.hrm_ref.presets import test_set_path
from hrmc.lowering import export_onnx
from hrmc.parity.agreement import accuracy, answers
from hrmc.parity.executors import TorchExecutor, make_executor
from hrmc.targets import TARGETS
from hrmc.targets.base import lowered_source
from hrmc.targets.coreml import lower_coreml

FIXTURES = ("sudoku4", "sudoku6", "trm-sudoku4")
POLICY = "q-halt"


def measure(name: str, out: Path, puzzles: int | None, progress=print) -> list[dict]:
    """One row per storage of the ane target for the trained fixture `name`."""
    model = hrm_ref.build_preset(name)
    with np.load(test_set_path(name)) as data:
        held_out = {key: data[key][:puzzles] for key in data.files}
    labels = held_out.pop("labels")
    batch = hrm_ref.make_batch(model.config, held_out, f"{name}'s held-out puzzles")
    export, budget = out / f"{name}.onnx", resolve_budget(model, POLICY, None)
    if not export.is_file():
        progress(f"{name}: exporting {export}")
        export_onnx(model, export, POLICY, budget)
    reference = TorchExecutor()
    reference.prepare(model, POLICY, budget, batch)
    expected = reference.run(batch)
    parameters = sum(tensor.numel() for tensor in model.parameters())
    rows = []
    with tempfile.TemporaryDirectory(prefix="hrmc-compression-") as folder:
        work = Path(folder)
        structured, graphs = lowered_source(export, work, model, POLICY, budget, batch,
                                            TARGETS["ane"].pipeline)
        for weights in TARGETS["ane"].weights:
            started = time.perf_counter()
            shipped = lower_coreml(graphs, out / f"{name}-{weights}.mlpackage", "ane", 1, structured.name,
                                   weights=weights, force=True)
            whole = lower_coreml(graphs, work / f"{name}-{weights}-held-out.mlpackage", "ane", len(labels),
                                 structured.name, weights=weights)
            package = make_executor("ane", artifact=str(whole))
            package.prepare(model, POLICY, budget, batch)
            run = package.run(batch)
            weight_file = shipped / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
            estimate = estimate_artifact(shipped, list(CHIPS.values()))
            rows.append({"preset": name, "weights": weights, "puzzles": len(labels),
                         "package_bytes": sum(p.stat().st_size for p in shipped.rglob("*") if p.is_file()),
                         "weight_bytes": weight_file.stat().st_size,
                         "per_float16_parameter": weight_file.stat().st_size / (2 * parameters),
                         "accuracy": accuracy(answers(run), labels),
                         "uncompressed_accuracy": accuracy(answers(expected), labels),
                         "answers_agree": int((answers(run) == answers(expected)).all(-1).sum()),
                         "halting_agrees": int((run["steps"][-1] == expected["steps"][-1]).sum()),
                         "whole_ms": {row.chip: row.whole_ms for row in estimate.rows},
                         "weights_checked": package.weights_checked, "seconds": round(time.perf_counter() - started, 1)})
            progress(f"{name} {weights}: {rows[-1]}")
    return rows


def table(rows: list[dict]) -> str:
    """The rows as bench/RESULTS.md's markdown table."""
    chips = list(rows[0]["whole_ms"])
    lines = ["| preset | weights | package bytes | weights × float16 | exact-solved | cells | answers agreed | "
             "halting agreed | " + " | ".join(f"{chip.upper()} ms" for chip in chips) + " |",
             "|---" * (8 + len(chips)) + "|"]
    for row in rows:
        n, right = row["puzzles"], row["accuracy"]
        lines.append(f"| `{row['preset']}` | {row['weights']} | {row['package_bytes']:,} | "
                     f"{row['per_float16_parameter']:.3f} | {round(right['exact'] * n)}/{n} | "
                     f"{100 * right['cells']:.2f} % | {row['answers_agree']}/{n} | {row['halting_agrees']}/{n} | "
                     + " | ".join(f"{row['whole_ms'][chip]:.3g}" for chip in chips) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/compression"), help="where the packages are written")
    parser.add_argument("--puzzles", type=int, help="the first N held-out puzzles (default: all)")
    parser.add_argument("--preset", action="append", choices=FIXTURES, help="a fixture (repeatable; default all)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    options = parser.parse_args(argv)
    options.out.mkdir(parents=True, exist_ok=True)
    rows = [row for name in options.preset or FIXTURES for row in measure(name, options.out, options.puzzles)]
    if options.json:
        options.json.write_text(json.dumps(rows, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()
