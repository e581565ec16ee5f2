"""The onnxruntime backend: runs hrmc's exported ONNX models (CPU; CUDA where present).

Executor `onnx`: the structured graphs of `hrmc export` (ACT and cycles as Loops), as exported
afresh or as given with `--onnx-model` (the CI use: gate the artifact you ship).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from hrm_ref import HRM, Batch, Carry
from hrm_ref.act import resolve_budget
from hrmc.errors import InputError
from lowering.export import export_onnx, read_metadata, step_path_for, weights_sha256
from lowering.graph import CARRY_NAMES
from parity.executors import Arrays, Executor


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=ort.get_available_providers())


def check_artifact(path: Path, model: HRM, policy: str, budget: int, seq_len: int) -> dict:
    """The exported file must come from these weights, with this policy, budget and length."""
    meta = read_metadata(path)
    if meta["weights_sha256"] != weights_sha256(model):
        raise InputError(f"{path} was exported from other weights than the model given (check --checkpoint/--preset)")
    for what, given, recorded in (("policy", policy, meta["policy"]), ("budget", budget, meta["budget"]),
                                  ("sequence length", seq_len, meta["seq_len"])):
        if given != recorded:
            raise InputError(f"{path} was exported with {what} {recorded}, not {given}")
    return meta


class OnnxExecutor(Executor):
    name = "onnx"

    def __init__(self, onnx_model: str | Path | None = None) -> None:
        self.onnx_model = Path(onnx_model) if onnx_model else None

    def prepare(self, model: HRM, policy: str, budget: int | None, batch: Batch) -> None:
        self.policy, self.budget = policy, resolve_budget(model, policy, budget)
        seq_len = model.inner.positions(batch) - model.config.puzzle_emb_len
        path = self.onnx_model
        if path is None:
            self._folder = tempfile.TemporaryDirectory(prefix="hrmc-onnx-")
            path = Path(self._folder.name) / "model.onnx"
            export_onnx(model, path, policy, self.budget, batch)
        self.meta = check_artifact(path, model, policy, self.budget, seq_len)
        if not step_path_for(path).is_file():
            raise InputError(f"{step_path_for(path)} (the one-step model beside {path}) not found")
        self.path = path
        self.act, self.one_step = session(path), session(step_path_for(path))

    def step(self, carry: Carry, batch: Batch) -> Arrays:
        feed = {"z_H": carry.z_H.float().numpy(), "z_L": carry.z_L.float().numpy(),
                "steps": carry.steps.numpy(), "halted": carry.halted.numpy()}
        feed |= {name: value.numpy() for name, value in batch.items()}
        names = [output.name for output in self.one_step.get_outputs()]
        values = dict(zip(names, self.one_step.run(None, feed)))
        return {name.removesuffix("_next") if name.removesuffix("_next") in CARRY_NAMES else name: value
                for name, value in values.items()}

    def run(self, batch: Batch) -> Arrays:
        names = [output.name for output in self.act.get_outputs()]
        values = dict(zip(names, self.act.run(None, {name: value.numpy() for name, value in batch.items()})))
        steps_run = int(values.pop("steps_run"))
        return {name: np.asarray(value)[:steps_run] for name, value in values.items()}

    def describe(self) -> str:
        return f"onnx ({self.path.name}: structured graph with Loops, onnxruntime {ort.__version__}, CPU)"
