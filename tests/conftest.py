"""Shared fixtures: built-in models and checkpoints written in upstream's exact layout."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator

if os.environ.get("PYTEST_XDIST_WORKER"):  # one thread per test worker (and the commands it starts): one per core
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
import yaml

from hrmc import hrm_ref
from hrmc.hrm_ref import HRM

UPSTREAM_DATA_PATH = "data/sudoku-extreme-1k-aug-1000"  # all_config.yaml's data_path, relative to where training ran


def pytest_xdist_auto_num_workers(config) -> int | None:
    """`-n auto` (pyproject's addopts): a worker per core, but none under `--benchmark-only`: xdist would
    disable pytest-benchmark, and timings want the machine to themselves."""
    return 0 if config.getoption("benchmark_only", False) else None


def upstream_arch(model: HRM) -> dict:
    """The `arch:` section upstream's pretrain.py dumps for this model (training keys included):
    sapientinc/HRM's, or for a TRM TinyRecursiveModels' (config/arch/trm.yaml's keys)."""
    c = model.config
    arch = {
        "name": "hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1",
        "loss": {"name": "losses@ACTLossHead", "loss_type": "stablemax_cross_entropy"},
        "halt_exploration_prob": 0.1, "halt_max_steps": c.halt_max_steps,
        "H_cycles": c.H_cycles, "L_cycles": c.L_cycles, "H_layers": c.H_layers, "L_layers": c.L_layers,
        "hidden_size": c.hidden_size, "num_heads": c.num_heads, "expansion": c.expansion,
        "puzzle_emb_ndim": c.puzzle_emb_ndim, "pos_encodings": c.pos_encodings,
    }
    if c.family == "trm":
        arch |= {"name": "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1", "forward_dtype": "bfloat16",
                 "mlp_t": c.mlp_t, "puzzle_emb_len": c.puzzle_emb_len, "no_ACT_continue": c.no_ACT_continue}
    return arch


def write_upstream_checkpoint(model: HRM, folder: Path, prefix: str = "_orig_mod.model.", step: int = 52080) -> Path:
    """`step_N` plus `all_config.yaml` as upstream's training writes them (bfloat16 H_init/L_init)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {}
    for key, value in model.state_dict().items():
        state[prefix + key] = value.to(torch.bfloat16) if key.endswith("_init") else value.clone()
    torch.save(state, folder / f"step_{step}")
    config = {"arch": upstream_arch(model), "data_path": UPSTREAM_DATA_PATH, "global_batch_size": 768,
              "epochs": 20000, "lr": 1e-4, "lr_min_ratio": 1.0, "lr_warmup_steps": 2000, "weight_decay": 0.1,
              "beta1": 0.9, "beta2": 0.95, "puzzle_emb_lr": 1e-4, "puzzle_emb_weight_decay": 0.1,
              "project_name": "Sudoku-extreme-1k-aug-1000 ACT-torch", "run_name": "HierarchicalReasoningModel_ACTV1 x",
              "checkpoint_path": str(folder), "seed": 0, "checkpoint_every_eval": True, "eval_interval": 2000,
              "eval_save_outputs": []}
    (folder / "all_config.yaml").write_text(yaml.dump(config))
    return folder / f"step_{step}"


def write_dataset_metadata(model: HRM, root: Path, seq_len: int, data_path: str = UPSTREAM_DATA_PATH,
                           **changes: int) -> Path:
    """`ROOT/DATA/train/dataset.json` as upstream's dataset builders write it (PuzzleDatasetMetadata), for the
    task `model` was trained on: its vocabulary and puzzle identifiers, and `seq_len`; `changes` override."""
    folder = root / data_path / "train"
    folder.mkdir(parents=True, exist_ok=True)
    metadata = {"pad_id": 0, "ignore_label_id": -100, "blank_identifier_id": 0, "vocab_size": model.config.vocab_size,
                "seq_len": seq_len, "num_puzzle_identifiers": model.config.num_puzzle_identifiers,
                "total_groups": 1000, "mean_puzzle_examples": 1.0, "sets": ["all"]} | changes
    (folder / "dataset.json").write_text(json.dumps(metadata))
    return folder / "dataset.json"


def upstream_run(preset: str, root: Path, dataset: bool) -> Path:
    """`root/checkpoints/run/step_N` + all_config.yaml (RoPE, no seq_len: upstream's default) and, with
    `dataset`, the dataset.json its data_path names, where upstream's checkpoints find their data/."""
    model = hrm_ref.build_preset(preset)
    if dataset:
        write_dataset_metadata(model, root, seq_len=16)
    return write_upstream_checkpoint(model, root / "checkpoints" / "run")


@pytest.fixture(scope="session", autouse=True)
def export_cache(tmp_path_factory, worker_id: str) -> Iterator[Path]:
    """The export cache (lowering/cache.py) of this test session, shared by its xdist workers (entries appear by
    an atomic rename: a worker reads another's, or makes its own): never the user's, and shared by every test
    that makes a model's graphs afresh."""
    root = tmp_path_factory.getbasetemp()
    folder = (root.parent if worker_id != "master" else root) / "export-cache"
    folder.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HRMC_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="session")
def tiny() -> HRM:
    return hrm_ref.build_preset("tiny")


@pytest.fixture
def upstream_checkpoint(tiny: HRM, tmp_path: Path) -> Path:
    return write_upstream_checkpoint(tiny, tmp_path / "run")


@pytest.fixture(scope="session")
def exported(tmp_path_factory, export_cache: Path) -> Callable[[str, str], Path]:
    """`exported(preset, policy)`: that preset's export pair as PRESET.onnx, traced once per test session (an
    export takes 10–60 s) into the session's export cache, so a gate of the same model made afresh traces nothing,
    and copied out of it: a test may change its copy."""
    from hrmc.hrm_ref.act import resolve_budget
    from hrmc.lowering import step_path_for
    from hrmc.lowering.artifact import bound_parts
    from hrmc.lowering.cache import cached_export

    made: dict[tuple[str, str], Path] = {}

    def export(preset: str, policy: str = "q-halt") -> Path:
        if (preset, policy) not in made:
            model, folder = hrm_ref.build_preset(preset), tmp_path_factory.mktemp("export")
            cached = cached_export(model, policy, resolve_budget(model, policy, None),
                                   hrm_ref.random_batch(model.config, 2, seed=0), folder)
            path = folder / f"{preset}.onnx"
            for role, part in bound_parts(cached).items():  # a pair renamed together is the same pair
                shutil.copyfile(part, path if role == "act" else step_path_for(path))
            made[preset, policy] = path
        return made[preset, policy]
    return export


@pytest.fixture(scope="session")
def tiny_export(exported) -> Path:
    """tiny, q-halt, exported once per test session."""
    return exported("tiny")
