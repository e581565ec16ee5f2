"""The packages import only downward: ground modules, then hrm_ref → lowering → passes → targets →
parity → bench → the CLI (hrmc.cli, and hrmc.demo which runs it), whose every verb calls one stage's entry.
Imports inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# layer of each part, lowest first; `hrmc.errors` and the like are the ground every layer may use
LAYERS = ["ground", "hrm_ref", "lowering", "passes", "targets", "parity", "bench", "cli"]
GROUND = {"hrmc", "hrmc.__version__", "hrmc.errors", "hrmc.files", "hrmc.binding", "hrmc.names", "hrmc.record",
          "hrmc.timing"}


def part_of(module: str) -> str | None:
    """The layer of `hrmc.passes.fuse` is passes; of `hrmc.cli`, the CLI; of `hrmc.errors`, the ground."""
    parts = module.split(".")
    if parts[0] != "hrmc":
        return None  # not ours
    if module in GROUND or any(module.startswith(g + ".") for g in GROUND - {"hrmc"}):
        return "ground"
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "cli"


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def module_name(path: Path) -> str:
    """The installed name: passes/fuse.py is hrmc.passes.fuse (pyproject's package-dir)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    parts = parts[:-1] if parts[-1] == "__init__" else parts
    return ".".join(parts if parts[0] == "hrmc" else ("hrmc", *parts))


def test_every_import_goes_down_a_layer_or_stays() -> None:
    upward = []
    for package in LAYERS[1:] + ["hrmc"]:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name.startswith("test_"):
                continue  # bench's pytest benchmarks drive everything, as tests do
            source = part_of(module_name(path))
            for target in imports(path):
                layer = part_of(target)
                if layer is not None and LAYERS.index(layer) > LAYERS.index(source):
                    upward.append(f"{module_name(path)} ({source}) imports {target} ({layer})")
    assert not upward, "\n".join(sorted(set(upward)))


def test_hrmc_itself_is_the_cli_and_the_ground() -> None:
    """No driver between the CLI and the stages, and no second way into the checkout's folders."""
    import importlib

    import pytest

    modules = {module_name(path) for path in (ROOT / "hrmc").glob("*.py")}
    assert modules - GROUND == {"hrmc.cli", "hrmc.demo"}
    for name in ("hrmc.hrmc", "hrmc.tests"):
        with pytest.raises(ImportError):
            importlib.import_module(name)
