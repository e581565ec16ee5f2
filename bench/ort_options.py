"""onnxruntime settings for the static graph, timed side by side in one run.

`targets.onnx.session` (all graph optimisations, onnxruntime's own thread count) is the first row;
the others each change one thing, so the table says what each setting is worth on this machine:

    python -m hrmc.bench.ort_options --preset sudoku --batch 1 --onnx-model out/sudoku.onnx
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import click
import numpy as np
import onnxruntime as ort

from hrmc.bench import time_runs
from hrmc.hrm_ref import POLICIES, build_preset, random_batch
from hrmc.hrm_ref.act import resolve_budget
from hrmc.errors import HrmcError
from hrmc.targets.base import lowered_source
from hrmc.targets.onnx import session, session_options

# name → (pass pipeline, SessionOptions attributes, session config entries)
VARIANTS: dict[str, tuple[str, dict, dict]] = {
    "hrmc's session": ("static", {}, {}),
    "graph optimisations basic only": ("static", {"graph_optimization_level": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC}, {}),
    "graph optimisations off": ("static", {"graph_optimization_level": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}, {}),
    "1 intra-op thread": ("static", {"intra_op_num_threads": 1}, {}),
    "no memory pattern": ("static", {"enable_mem_pattern": False}, {}),
    "no thread spinning": ("static", {}, {"session.intra_op.allow_spinning": "0"}),
    "fused graph (fused pipeline)": ("fused", {}, {}),
}


def variant_session(path: Path, attributes: dict, entries: dict) -> ort.InferenceSession:
    options = session_options()  # hrmc's settings, then the one change
    for name, value in attributes.items():
        setattr(options, name, value)
    for key, value in entries.items():
        options.add_session_config_entry(key, value)
    return session(path, options)


@click.command()
@click.option("--preset", default="sudoku", show_default=True)
@click.option("--batch", "batch_size", type=int, default=1, show_default=True)
@click.option("--policy", type=click.Choice(POLICIES), default="max-steps", show_default=True,
              help="The policy the export was made with.")
@click.option("--runs", type=int, default=3, show_default=True)
@click.option("--onnx-model", type=click.Path(exists=True), help="The structured export (default: export afresh).")
def main(preset, batch_size, policy, runs, onnx_model) -> None:
    """Time the static graph under each onnxruntime setting in VARIANTS."""
    try:
        time_variants(preset, batch_size, policy, runs, onnx_model)
    except HrmcError as err:
        raise click.UsageError(str(err)) from None


def time_variants(preset: str, batch_size: int, policy: str, runs: int, onnx_model: str | None) -> None:
    model = build_preset(preset)
    batch = random_batch(model.config, batch_size, seed=0)
    budget = resolve_budget(model, policy, None)
    feed = {name: value.numpy() for name, value in batch.items()}
    rows, static = [], {}
    with tempfile.TemporaryDirectory(prefix="hrmc-ort-") as work:
        for name, (pipeline, attributes, entries) in VARIANTS.items():
            if pipeline not in static:
                folder = Path(work) / pipeline
                folder.mkdir()
                static[pipeline] = lowered_source(Path(onnx_model) if onnx_model else None, folder, model,
                                                  policy, budget, batch, pipeline)[1]["static"]
            graph = variant_session(static[pipeline], attributes, entries)
            times = np.array(time_runs(lambda: graph.run(None, feed), runs))
            rows.append((name, float(np.median(times)), float(times.min())))
            click.echo(f"  {name}: {rows[-1][1] * 1e3:.0f} ms", err=True)
    baseline = rows[0][1]
    click.echo(f"static graph of preset:{preset}, batch {batch_size}, onnxruntime {ort.__version__}, {runs} runs each")
    click.echo(f"{'setting':<34}{'p50 ms':>10}{'min ms':>10}{'vs hrmc':>9}")
    for name, median, fastest in rows:
        click.echo(f"{name:<34}{median * 1e3:>10.1f}{fastest * 1e3:>10.1f}{median / baseline:>8.2f}×")


if __name__ == "__main__":
    main()
