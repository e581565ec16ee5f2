"""Named pipelines: each named by what it produces, the 0.1 names still accepted."""

from __future__ import annotations

import pytest

from hrmc import passes, targets
from hrmc.errors import InputError


def test_every_target_lowers_from_a_named_pipeline() -> None:
    assert {target.pipeline for target in targets.TARGETS.values()} <= set(passes.PIPELINES)


@pytest.mark.parametrize("old, new", sorted(passes.PIPELINE_ALIASES.items()))
def test_the_01_names_run_the_same_passes(old: str, new: str) -> None:
    assert passes.pipeline_passes(old) == passes.pipeline_passes(new) == passes.PIPELINES[new]


def test_an_unknown_pipeline_names_the_choices() -> None:
    with pytest.raises(InputError, match="unknown pipeline 'fast': choose one of static, fused, fused-fp16"):
        passes.pipeline_passes("fast")


def test_every_node_says_which_pass_made_it(tiny_export, tmp_path) -> None:
    """The fused nodes are fuse's, the chunk plumbing chunk-budget's, and the copies the unrolling makes
    of the exporter's nodes stay the exporter's: their cycle is in their names."""
    import collections

    import onnx_ir as ir

    from hrmc.names import MADE_BY

    graph = ir.load(str(passes.lower_onnx(tiny_export, tmp_path / "f.onnx", "fused").step_path)).graph
    made_by = collections.Counter((node.op_type if node.domain == "hrmc" else "onnx", node.metadata_props.get(MADE_BY))
                                  for node in graph)
    assert {by for _, by in made_by} == {"export", "fuse", "chunk-budget"}
    assert all(by == "fuse" for kind, by in made_by if kind != "onnx")
    assert {kind for kind, by in made_by if by == "fuse"} == {"RMSNorm", "Rope", "Attention", "SwiGLU"}
    assert any(node.name.startswith("h1/l1/") and node.metadata_props[MADE_BY] == "export" for node in graph)
