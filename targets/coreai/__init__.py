"""The Core AI backend: hrm_ref converted through `torch.export` into one `.aimodel` (macOS 27 / iOS 27), run by
Apple's Core AI runtime (on Linux, the reference interpreter bundled with coreai-core).

Unlike its siblings it lowers no pass-pipeline graph: Core AI converts torch programs, so its unit is hrm_ref's
own ACT step, traced (cycles unrolled), with the whole solve as the masked fixed-budget loop unrolled over the
budget. `lower` is therefore handed the model (`targets.ModelSource`) rather than graphs, and the folder has no
op table.

    _coreai.py    coreai-core and coreai-torch, or one line saying what to install (an optional dependency)
    lowering.py   the entry points (init, step, chunkK, solve) as torch modules (weights compressed or not),
                  converted
    package.py    lower_coreai: the asset, written atomically with hrmc's record, and read back, verified
    runtime.py    LoadedAsset: an asset's functions called with numpy arrays, the carry as runtime state
    executors.py  CoreAIExecutor: coreai
"""

from __future__ import annotations

from pathlib import Path

from hrmc.files import check_output_folder
from hrmc.targets import LowerOptions, ModelSource, Target
from hrmc.targets.coreai.package import METADATA, lower_coreai, read_record


def executor(target: Target, name: str, onnx_model: str | Path | None, chunk: int | None,
             artifact: str | Path | None):
    from hrmc.targets.coreai.executors import CoreAIExecutor

    return CoreAIExecutor(target, onnx_model, chunk, artifact)


def lower(target: Target, source: ModelSource, out: str | Path, options: LowerOptions) -> list[Path]:
    """The asset; with `options.companion` (lower --mac-check), that beside it too: both or neither."""
    def write(check=None) -> Path:
        return lower_coreai(source.model, source.batch, source.policy, source.budget, source.origin, out, source.chunk,
                            options.force, options.about, target.weight_storage(options.weights), options.progress,
                            check).path

    if options.companion is None:
        return [write()]
    with options.companion.writing(Path(out), options.force) as fill:
        return [write(fill), options.companion.path(Path(out))]


def check_out(target: Target, out: str | Path, chunk: int | None, force: bool) -> list[Path]:
    """The asset `lower` will write: new, or one hrmc wrote (unless `force`); the Core AI tools installed."""
    from hrmc.targets.coreai import _coreai  # noqa: F401 (without them: one line saying what to install, before any work)

    return [check_output_folder(out, target.suffix, METADATA, force)]


__all__ = ["check_out", "executor", "lower", "lower_coreai", "read_record"]
