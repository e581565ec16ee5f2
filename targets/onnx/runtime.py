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


def run_every_value(path: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The graph at `path` on `feed`, every node output returned (each made a graph output, untyped:
    onnxruntime infers the type), as polygraphy marks them to find a first mismatch."""
    import onnx

    proto = onnx.load(str(path))
    marked = {output.name for output in proto.graph.output}
    for node in proto.graph.node:
        for name in node.output:
            if name and name not in marked:
                proto.graph.output.append(onnx.ValueInfoProto(name=name))
                marked.add(name)
    graph = ort.InferenceSession(proto.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
    return run_named(graph, {name: feed[name] for name in (value.name for value in graph.get_inputs())})
