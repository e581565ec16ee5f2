"""The export cache (lowering/cache.py): one trace per model, a damaged entry made again, the cache off."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from hrmc import hrm_ref
from hrmc.lowering import cache
from hrmc.lowering import step_path_for
from hrmc.lowering.artifact import bound_parts
from tests.hrmc.test_cli import hrmc


@pytest.fixture
def exports(monkeypatch, tmp_path: Path, tiny_export: Path) -> list[Path]:
    """A fresh cache in tmp_path/cache, and every export it asks for, by its folder. Each is tiny's q-halt pair,
    copied (a pair renamed together is the same pair): what is tested is when the cache traces, not the tracing."""
    monkeypatch.setenv("HRMC_CACHE", str(tmp_path / "cache"))
    traced: list[Path] = []

    def copying(model, out, *args, **kwargs):
        out = Path(out)
        traced.append(out.parent)
        for role, part in bound_parts(tiny_export).items():
            shutil.copyfile(part, out if role == "act" else step_path_for(out))
        return SimpleNamespace(act_path=out)
    monkeypatch.setattr(cache, "export_onnx", copying)
    return traced


def test_a_model_is_traced_once_and_a_damaged_entry_is_made_again(tiny, exports: list[Path], tmp_path: Path) -> None:
    batch = hrm_ref.random_batch(tiny.config, 2, seed=0)
    first = cache.cached_export(tiny, "q-halt", 8, batch, tmp_path)
    assert cache.cached_export(tiny, "q-halt", 8, batch, tmp_path) == first and len(exports) == 1
    assert cache.cached_export(tiny, "max-steps", 8, batch, tmp_path) != first and len(exports) == 2
    step = bound_parts(first)["step"]
    step.write_bytes(step.read_bytes()[:1000])  # a damaged entry: never used, made again
    again = cache.cached_export(tiny, "q-halt", 8, batch, tmp_path)
    assert again == first and len(exports) == 3 and bound_parts(again)["step"].stat().st_size > 1000
    assert not [p for p in first.parent.parent.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_the_cache_can_be_turned_off(tiny, exports: list[Path], monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HRMC_CACHE", cache.OFF)
    batch = hrm_ref.random_batch(tiny.config, 2, seed=0)
    assert cache.cached_export(tiny, "q-halt", 8, batch, tmp_path).parent == tmp_path
    assert cache.cached_export(tiny, "q-halt", 8, batch, tmp_path).parent == tmp_path and len(exports) == 2


def test_a_second_gate_of_the_same_model_exports_nothing(capsys, exports: list[Path]) -> None:
    for _ in range(2):
        code, out, _ = hrmc(capsys, "parity", "torch", "static", "--policy", "q-halt", "--batch", "2")
        assert code == 0 and out.rstrip().endswith("PASS")
    assert len(exports) == 1
