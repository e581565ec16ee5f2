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
