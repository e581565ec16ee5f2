"""The PyTorch reference HRM (ACT v1, upstream-compatible): the truth every target is checked against.

Entry points: `build_preset` / `load_checkpoint` give a model, `random_batch` / `load_batch` its
inputs, and `act.step` / `act.run` execute it; `load_model` / `load_task` pick them from a command's options
(loading.py), and `run_outputs` is `hrmc run`'s work (outputs.py).
"""

from hrmc.hrm_ref.act import POLICIES, Carry, initial_carry, run, step
from hrmc.hrm_ref.batch import load_batch, make_batch, random_batch
from hrmc.hrm_ref.checkpoint import load_checkpoint, save_checkpoint
from hrmc.hrm_ref.config import HRMConfig
from hrmc.hrm_ref.loading import DEFAULT_PRESET, load_inputs, load_model, load_task, model_origin
from hrmc.hrm_ref.model import HRM, Batch
from hrmc.hrm_ref.outputs import run_outputs, save_outputs
from hrmc.hrm_ref.presets import PRESETS, build_preset

__all__ = ["DEFAULT_PRESET", "POLICIES", "PRESETS", "Batch", "Carry", "HRM", "HRMConfig", "build_preset",
           "initial_carry", "load_batch", "load_checkpoint", "load_inputs", "load_model", "load_task", "make_batch",
           "model_origin", "random_batch", "run", "run_outputs", "save_checkpoint", "save_outputs", "step"]
