"""Running an emitted MLX folder: its module imported as it stands, its graphs compiled, called with numpy.

`load_package` checks the folder against its record, imports `hrm_mlx.py` under a name of its own
(two folders never share a module) and returns what its `load()` returns: the config and one
`mx.compile`d function per graph. `run` calls one on numpy inputs, on MLX's default device. MLX is
always imported through `_mlx`, which sets MLX_ENABLE_TF32=0 first: float32 stays float32.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable

import numpy as np

from hrmc.targets.mlx.package import MODULE, WEIGHTS, read_config


def load_package(folder: str | Path) -> tuple[dict, dict[str, Callable[..., dict]]]:
    """Import an emitted folder's module under a unique name and return its `load()`."""
    return _module(folder).load(Path(folder))


def _module(folder: str | Path) -> ModuleType:
    from hrmc.targets.mlx import _mlx  # noqa: F401 (MLX_ENABLE_TF32=0 before MLX starts, whatever the module does)

    folder = Path(folder)
    read_config(folder)
    name = f"hrm_mlx_{hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(name, folder / MODULE)
    module: ModuleType = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def call_uncompiled(folder: str | Path, class_name: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One module of an emitted folder called uncompiled on numpy inputs: every local of its `__call__`
    (one per ONNX value, by the emitter's identifiers) as numpy, read from its frame as it returns."""
    from hrmc.targets.mlx._mlx import mx

    module = _module(folder)
    instance = getattr(module, class_name)(mx.load(str(Path(folder) / WEIGHTS)))
    code, seen = type(instance).__call__.__code__, {}

    def keep_locals(frame, event, _):
        if event == "return" and frame.f_code is code:
            seen.update(frame.f_locals)

    previous = sys.getprofile()
    sys.setprofile(keep_locals)
    try:
        instance(**{name: mx.array(value) for name, value in feed.items()})
    finally:
        sys.setprofile(previous)
    arrays = {name: value for name, value in seen.items() if isinstance(value, (mx.array, np.ndarray))}
    mx.eval(*[value for value in arrays.values() if isinstance(value, mx.array)])
    return {name: np.array(value) for name, value in arrays.items()}


def run(function: Callable[..., dict], feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One compiled graph of a loaded folder on numpy inputs, its outputs as numpy arrays."""
    from hrmc.targets.mlx._mlx import mx

    outputs = function(**{name: mx.array(value) for name, value in feed.items()})
    return {name: np.array(value) for name, value in outputs.items()}
