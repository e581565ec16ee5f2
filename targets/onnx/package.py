"""A shipped ONNX artifact: its graphs by role, verified against the parts they record, and their chunk.

What `hrmc export` writes (role `act`: the structured graph, and its step graph) and what
`hrmc lower --target onnx` writes (role `static`, its step graph and maybe a chunk graph) are bound
sets (hrmc.lowering.artifact); files written before hrmc recorded parts are found by their names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import onnx
import onnx.numpy_helper

from hrmc.errors import InputError
from hrmc.lowering.artifact import bound_parts, load_proto
from hrmc.lowering.export import read_record, step_path_for
from hrmc.record import Record


def shipped_graphs(artifact: Path, whole: str) -> tuple[dict[str, Path], Record]:
    """The graphs of a shipped ONNX artifact by role, bound, and the record it holds; `whole` is
    the role its whole-inference graph must have (act: an export; static: a lowered set)."""
    record = read_record(artifact)  # first: a graph hrmc never made is named as such
    parts = bound_parts(artifact, fallback={whole: artifact, "step": step_path_for(artifact)})
    if whole not in parts or record.kind != whole:
        made_by = {"act": "hrmc export", "static": "hrmc lower --target onnx"}[whole]
        raise InputError(f"{artifact} is not a {whole} graph ({record.kind}): this executor runs what {made_by} "
                         "writes")
    return parts, record


def chunk_steps(graphs: dict[str, Path]) -> int:
    """Steps per call of the chunk graph among `graphs` (1: none, the step graph serves)."""
    return read_record(graphs["chunk"]).chunk if "chunk" in graphs else 1


def stored_weights(graphs: Iterable[Path]) -> Iterator[tuple[str, np.ndarray]]:
    """Every initializer of every graph, by file and name."""
    for graph in graphs:
        for tensor in load_proto(graph).graph.initializer:
            yield f"{graph.name}/{tensor.name}", onnx.numpy_helper.to_array(tensor)
