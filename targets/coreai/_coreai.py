"""Apple's Core AI tools, imported once for every module of the Core AI backend, or one line saying what to install.

They are an optional dependency (`pip install 'hrmc[coreai]'`, pinned in pyproject.toml to the versions hrmc was
measured with): without them `--target coreai` and the `coreai` executor end in an `InputError` (exit 2).
coreai-torch warns on import that it was validated only up to torch 2.13.0, which is ours: that warning is left out.
"""

from __future__ import annotations

import warnings

from hrmc.errors import InputError

INSTALL = "pip install 'hrmc[coreai]'"

try:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="coreai-torch has only been validated")
        import coreai
        import coreai.authoring
        import coreai.runtime
        import coreai_torch
        # registers torch.ops.coreai's dequantising ops (blockwise_shift_scale, lut_to_dense): compressed weights
        import coreai_torch._compression.custom_layers  # noqa: F401
    from importlib.metadata import version

    VERSIONS = {package: version(package) for package in ("coreai-core", "coreai-torch")}
except ImportError as missing:
    raise InputError(f"the coreai target needs Apple's Core AI tools (no module {missing.name!r}): {INSTALL}") from None

__all__ = ["INSTALL", "VERSIONS", "coreai", "coreai_torch"]
