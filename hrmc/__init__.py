"""hrmc: compile a Hierarchical Reasoning Model for Core ML (ANE) and MLX, provably unchanged.

One import package. The command line (`hrmc.cli`), the driver (`hrmc.pipeline`) and the ground
modules every stage uses (`hrmc.errors`, `hrmc.files`, `hrmc.binding`) live here; the stages are its
subpackages `hrmc.hrm_ref`, `hrmc.lowering`, `hrmc.passes`, `hrmc.targets`, `hrmc.parity` and
`hrmc.bench`. Installed, they are folders inside this one; in a source checkout they are the
folders beside it (pyproject's package-dir), which the path below makes importable without installing.
"""

from pathlib import Path

__version__ = "0.1.0"

_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "passes" / "__init__.py").is_file():
    __path__.append(str(_checkout))  # noqa: F821 (a package's own __path__)
