"""The target registry: every target declared once, every executor reachable, every op mapped."""

from __future__ import annotations

import importlib
from pathlib import Path

import onnx_ir as ir
import pytest

from hrmc import parity
from hrmc import targets
from hrmc.targets._nodes import op_key


def test_every_executor_belongs_to_one_target_and_parity_offers_it() -> None:
    names = [name for target in targets.TARGETS.values() for name in target.executors]
    assert len(names) == len(set(names))  # one target each
    assert set(parity.EXECUTORS) == {"torch", *names}
    for target in targets.TARGETS.values():
        backend = target.backend()
        assert all(callable(getattr(backend, function)) for function in ("lower", "executor", "check_out"))


def _ops(graph: ir.Graph) -> set[str]:
    found = set()
    for node in graph:
        found.add(op_key(node))
        for attribute in node.attributes.values():
            if attribute.type == ir.AttributeType.GRAPH:
                found |= _ops(attribute.as_graph())
    return found


@pytest.mark.parametrize("name", sorted({target.module for target in targets.TARGETS.values()}))
# HRM, TRM with attention, TRM with mlp_t (heavy: its trace is the default run's only use of it)
@pytest.mark.parametrize("preset", ["tiny", "trm-tiny", pytest.param("trm-tiny-mlp-t", marks=pytest.mark.heavy)])
def test_every_op_the_pipeline_emits_has_a_mapping(name: str, preset: str, exported, tmp_path: Path) -> None:
    """The ops of each family's lowered graphs (whole, step and chunk) against each op-table target's `OPS`."""
    from hrmc.passes import cached_lowering

    module = importlib.import_module(name)
    if not hasattr(module, "OPS"):
        pytest.skip(f"{name} runs ONNX graphs as they are (onnxruntime): no op table")
    pipelines = {t.pipeline for t in targets.TARGETS.values() if t.module == name}
    for pipeline in pipelines:
        lowered = cached_lowering(exported(preset), tmp_path, "static.onnx", pipeline, chunk=2)
        emitted = set().union(*(_ops(ir.load(str(path)).graph) for path in lowered.values()))
        assert emitted <= set(module.OPS), f"{name} has no mapping for {sorted(emitted - set(module.OPS))}"
