"""The Core AI executor `coreai`: the functions of an `.aimodel`, shipped (`--artifact`, checked against its
record) or converted afresh from the model, run in Apple's Core AI runtime (runtime.py). `run` calls `solve`,
`step` the stateful `step` with the carry given as its state. An asset has a fixed batch, so a shipped one runs
only at the batch it was lowered for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hrmc.errors import InputError
from hrmc.hrm_ref import HRM, Batch
from hrmc.hrm_ref.act import batch_size
from hrmc.hrm_ref.compression import COMPRESSIONS
from hrmc.lowering.cache import cached
from hrmc.lowering.export import weights_sha256
from hrmc.names import CARRY_NAMES
from hrmc.record import Checkpoint, Record
from hrmc.targets.base import TargetExecutor
from hrmc.targets.coreai._coreai import VERSIONS
from hrmc.targets.coreai.lowering import function_name
from hrmc.targets.coreai.package import lower_coreai, read_asset, read_record, stored_weights
from hrmc.targets.coreai.runtime import LoadedAsset, describe
from hrmc.targets.executor import Arrays, Trace

_CODE = ("targets", "hrm_ref")  # hrmc's code that converts a model to an asset


class CoreAIExecutor(TargetExecutor):
    name = "coreai"
    storage = "float32"  # how the asset stores its weights: a shipped one records it; converted afresh, float32

    def open_shipped(self, model: HRM, batch: Batch) -> int:
        record, functions = read_asset(self.artifact)
        self.check(record, self.artifact, model, batch)
        self.storage = record.weights
        self.check_stored_weights(stored_weights(self.artifact), model, batch, record.outputs, record.weights,
                                  folded=True)
        return self.open(self.artifact, record, functions, batch)

    def open_fresh(self, model: HRM, batch: Batch, work: Path, chunk: int | None) -> int:
        defined = {"torch": torch.__version__, **VERSIONS, "weights": weights_sha256(model), "policy": self.policy,
                   "budget": self.budget, "batch": {name: list(value.shape) for name, value in batch.items()}}

        def convert(folder: Path) -> Path:
            return lower_coreai(model, batch, self.policy, self.budget, Checkpoint(), folder / "model.aimodel",
                                chunk).path

        asset = cached("coreai", defined, _CODE, convert, read_record, work)
        return self.open(asset, *read_asset(asset), batch)

    def open(self, asset: Path, record: Record, functions: tuple[str, ...], batch: Batch) -> int:
        if record.batch != batch_size(batch):
            raise InputError(f"{asset} was lowered for batch {record.batch}, not {batch_size(batch)} (see --batch)")
        self.asset, self.functions, self.chunk_steps = asset, functions, record.chunk or 1
        self.loaded = LoadedAsset(asset)
        if "init" in self.functions:
            self.check_initial_carry(self.call("init", {name: value.numpy() for name, value in batch.items()}),
                                     np.float32)
        return self.chunk_steps

    def call(self, role: str, feed: dict[str, np.ndarray]) -> Arrays:
        state = {name: feed[name] for name in CARRY_NAMES if name in feed} if role in ("step", "chunk") else {}
        inputs = {name: value for name, value in feed.items() if name not in CARRY_NAMES}
        return self.loaded.call(function_name(role, self.chunk_steps), inputs, state)

    def trace(self, feed: dict[str, np.ndarray], batch: Batch) -> Trace:
        raise InputError("the coreai executor cannot expose its intermediate values: Core AI runs a function whole")

    def compression(self) -> str | None:
        return self.storage if self.storage in COMPRESSIONS else None

    def graph_name(self, role: str) -> str:
        return f"{self.asset.name}:{function_name(role, self.chunk_steps)}"

    def describe(self) -> str:
        return (f"{self.name} ({self.shipped()}functions {', '.join(self.functions)}, {self.storage} weights; "
                f"{describe()})")


__all__ = ["CoreAIExecutor"]
