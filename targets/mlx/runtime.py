"""Running an emitted MLX folder: its module imported as it stands, its graphs compiled, called with numpy.

`load_package` checks the folder against its record, imports `hrm_mlx.py` under a name of its own
(two folders never share a module) and returns what its `load()` returns: the config and one
`mx.compile`d function per graph. `run` calls one on numpy inputs, on MLX's default device.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable

import numpy as np

from hrmc.targets.mlx.package import MODULE, read_config


def load_package(folder: str | Path) -> tuple[dict, dict[str, Callable[..., dict]]]:
    """Import an emitted folder's module under a unique name and return its `load()`."""
    folder = Path(folder)
    read_config(folder)
    name = f"hrm_mlx_{hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(name, folder / MODULE)
    module: ModuleType = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module.load(folder)


def run(function: Callable[..., dict], feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One compiled graph of a loaded folder on numpy inputs, its outputs as numpy arrays."""
    import mlx.core as mx

    outputs = function(**{name: mx.array(value) for name, value in feed.items()})
    return {name: np.array(value) for name, value in outputs.items()}
