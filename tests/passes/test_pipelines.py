"""Named pipelines: each named by what it produces, the 0.1 names still accepted; the passes as `hrmc passes`
lists them, and their errors."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import onnx_ir as ir
import pytest

from hrmc import passes, targets
from hrmc.errors import InputError
from hrmc.passes._loops import PassInputError
from tests.helpers import hrmc
from tests.passes.graphs import cycles_model


def test_every_target_lowers_from_a_named_pipeline_or_the_model_itself() -> None:
    lowered = [target for target in targets.TARGETS.values() if target.pipeline is not None]
    assert {target.pipeline for target in lowered} <= set(passes.PIPELINES)
    # the one target that converts the model itself (torch.export) rather than a pipeline's graphs
    assert [name for name, target in targets.TARGETS.items() if target.pipeline is None] == ["coreai"]


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


def test_hrmc_passes_prints_the_first_line_of_each_pass_class_docstring(capsys) -> None:
    code, out, _ = hrmc(capsys, "passes")
    listed = out.split("\npipelines")[0].splitlines()[1:]  # the lines under "passes:"
    assert code == 0 and dict(line.split(maxsplit=1) for line in listed) == {
        name: pass_class.__doc__.splitlines()[0] for name, pass_class in passes.PASSES.items()}


def test_every_pass_class_draws_the_graph_before_and_after() -> None:
    """`cleanup`'s own steps (fold-constant-tables, fold-weight-transposes) too, which `hrmc passes` does not list."""
    modules = [importlib.import_module(f"hrmc.passes.{info.name}") for info in pkgutil.iter_modules(passes.__path__)]
    classes = {value for module in modules for value in vars(module).values() if inspect.isclass(value)
               and issubclass(value, ir.passes.PassBase) and value.__module__ == module.__name__}
    assert set(passes.PASSES.values()) < classes
    for pass_class in classes:
        doc = inspect.getdoc(pass_class) or ""
        assert doc.startswith("`") and "\nBefore" in doc and "\nAfter" in doc, pass_class


@pytest.mark.parametrize("options, message", [
    ({"strip": ("halted",)}, "strip-heads: output 'halted' is the carry or a halting decision, not a head"),
    ({"chunk": 2}, "chunk-budget: it works on the one-step model"),
])
def test_a_graph_a_pass_refuses_is_named_once_by_that_pass(options: dict, message: str) -> None:
    """A pass's own error names it already; onnx-ir's precondition errors get its name from the pipeline."""
    with pytest.raises(PassInputError) as refused:
        passes.run_pipeline(cycles_model(2, 2, 1.0, 0.0, 1.0), "static", **options)
    assert str(refused.value).startswith(message)


def test_a_gates_graphs_are_lowered_once_and_a_damaged_entry_is_made_again(tiny_export, monkeypatch, tmp_path) -> None:
    """`cached_lowering`: what `lower_onnx` writes (with the cache off, into the work folder), the same bytes; lowered
    once per source, pipeline and chunk; an entry whose files changed lowered again, never used."""
    calls, real = [], passes.lower_onnx
    monkeypatch.setattr(passes, "lower_onnx", lambda *args, **kwargs: calls.append(args) or real(*args, **kwargs))
    monkeypatch.setenv("HRMC_CACHE", "off")
    direct = passes.cached_lowering(tiny_export, tmp_path, "g.onnx")
    assert direct["static"].parent == tmp_path and len(calls) == 1
    monkeypatch.setenv("HRMC_CACHE", str(tmp_path / "cache"))
    lines: list[str] = []
    first = passes.cached_lowering(tiny_export, tmp_path / "work", "g.onnx", progress=lines.append)
    assert passes.cached_lowering(tiny_export, tmp_path / "work", "g.onnx", progress=lines.append) == first
    assert len(calls) == 2 and lines == [f"the cache ({tmp_path / 'cache'}) holds these graphs: the passes did not "
                                         "run again"]
    assert set(first) == {"static", "step"} and all(first[r].read_bytes() == direct[r].read_bytes() for r in direct)
    first["step"].write_bytes(first["step"].read_bytes()[:1000])
    again = passes.cached_lowering(tiny_export, tmp_path / "work", "g.onnx")
    assert len(calls) == 3 and again["step"].read_bytes() == direct["step"].read_bytes()
