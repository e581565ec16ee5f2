"""Running an ONNX graph: an onnxruntime session (CPU; CUDA where present), called with numpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort


def session_options() -> ort.SessionOptions:
    """Every graph optimisation on; threads, memory pattern and spinning at onnxruntime's defaults,
    which `python -m hrmc.bench.ort_options` measured as good as any change to them on the dev machine."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # ORT warns about every constant it drops; errors still show
    return options


def session(path: Path, options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), options or session_options(), providers=ort.get_available_providers())


def run_named(graph: ort.InferenceSession, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return dict(zip([output.name for output in graph.get_outputs()], graph.run(None, feed)))
