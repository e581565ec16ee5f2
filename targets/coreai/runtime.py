"""Running an `.aimodel` in Apple's Core AI runtime: on macOS 27 the system's, on Linux the reference interpreter
bundled with coreai-core (compute units, the Neural Engine and specialization options are macOS-only).

The runtime is asynchronous; `LoadedAsset` keeps one executable open on an event loop of its own and calls its
functions synchronously with numpy arrays. A stateful function (`step`, `chunkK`) reads and writes its state
arrays in place: `call` hands it the carry given and returns the carry after the call as `NAME_next`, as every
other target's step graph does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import sys
import weakref
from pathlib import Path

import numpy as np

from hrmc.targets.coreai._coreai import VERSIONS, coreai

RUNS_ON = ("macOS Core AI runtime" if platform.system() == "Darwin"
           else "coreai-core's reference interpreter (Linux: no compute units, no Neural Engine)")


class LoadedAsset:
    """One asset's executable, open until this object is collected."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.loop = asyncio.new_event_loop()
        opened = coreai.authoring.AIModelAsset.load(path).executable()
        self.executable = self.loop.run_until_complete(opened.__aenter__())
        self.functions = {}
        weakref.finalize(self, _close, self.loop, opened)

    def call(self, function: str, inputs: dict[str, np.ndarray], state: dict[str, np.ndarray] | None = None
             ) -> dict[str, np.ndarray]:
        if function not in self.functions:
            with quiet_native_stderr():  # the runtime prints "ODIE [default]: Loading function …" on loading
                self.functions[function] = self.executable.load_function(function)
        arrays = {name: coreai.runtime.NDArray(np.ascontiguousarray(value)) for name, value in (state or {}).items()}
        given = {name: coreai.runtime.NDArray(np.ascontiguousarray(value)) for name, value in inputs.items()}
        results = self.loop.run_until_complete(self.functions[function](given, state=arrays))
        # in the function's own order: the runtime's dict comes in an order of its own, run to run
        values = {name: np.array(results[name].numpy()) for name in self.functions[function].desc.output_names}
        return values | {f"{name}_next": np.array(value.numpy()) for name, value in arrays.items()}


@contextlib.contextmanager
def quiet_native_stderr():
    """The process's stderr (file descriptor 2, which native code writes to) sent to /dev/null meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _close(loop: asyncio.AbstractEventLoop, opened) -> None:
    loop.run_until_complete(opened.__aexit__(None, None, None))
    loop.close()


def describe() -> str:
    return f"coreai-core {VERSIONS['coreai-core']}, {RUNS_ON}"


__all__ = ["LoadedAsset", "RUNS_ON", "describe", "quiet_native_stderr"]
