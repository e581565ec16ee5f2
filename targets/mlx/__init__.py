"""The MLX backend: the post-pass graph (pipeline `fused`) emitted as a readable MLX module.

`lower_mlx(graphs, folder, source)` writes a self-contained folder:

    hrm_mlx.py              generated: one `nn.Module` per graph (Inference, Step, Chunk), one line per ONNX node
    weights.safetensors     every distinct constant once (the graphs share their weights)
    config.json             the model config and hrmc's metadata (policy, budget, outputs)
    README.md               how to load and run it with only `mlx` and `numpy` installed

Each ONNX op has one entry in `OPS`, the op-mapping table; a node whose op has no entry fails at
lower time with a line naming the op and the node. The fused `hrmc` functions map to MLX's fused
primitives: `mx.fast.rms_norm`, `mx.fast.scaled_dot_product_attention`, and rope from the
exported cos/sin tables (never `mx.fast.rope`, which recomputes them: docs/design.md §3).

Values derived from `Shape` (the batch size) are computed with numpy while `mx.compile` traces,
so the module runs compiled at any batch size.

    _mlx.py       MLX, imported with MLX_ENABLE_TF32=0 (float32 matmuls stay float32, not TF32)
    ops.py        OPS: each ONNX op as a line of MLX
    lowering.py   Emitter, emit_module: static graphs → the module's text
    package.py    lower_mlx: the folder, written and read back
    runtime.py    the folder's module imported, its graphs compiled and called
    executors.py  MlxExecutor: mlx, mlx-chunked
"""

from __future__ import annotations

from pathlib import Path

from hrmc.files import check_output_folder
from hrmc.targets import LowerOptions, Target
from hrmc.targets._nodes import LowerError
from hrmc.targets.mlx.executors import MlxExecutor
from hrmc.targets.mlx.ops import OPS
from hrmc.targets.mlx.package import MODULE, MlxPackage, lower_mlx, read_config, read_record
from hrmc.targets.mlx.runtime import load_package


def executor(target: Target, name: str, onnx_model: str | Path | None, chunk: int | None,
             artifact: str | Path | None) -> MlxExecutor:
    return MlxExecutor(target, onnx_model, name == "mlx-chunked", chunk, artifact)


def lower(target: Target, graphs: dict[str, Path], out: str | Path, options: LowerOptions) -> list[Path]:
    return [lower_mlx(graphs, out, options.source, options.force).folder]


def check_out(target: Target, out: str | Path, chunk: int | None, force: bool) -> list[Path]:
    """The folder `lower` will write: new, or one hrmc wrote (unless `force`)."""
    return [check_output_folder(out, target.suffix, MODULE, force)]


__all__ = ["OPS", "LowerError", "MlxExecutor", "MlxPackage", "check_out", "executor", "load_package", "lower",
           "lower_mlx", "read_config", "read_record"]
