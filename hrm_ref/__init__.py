"""The PyTorch reference HRM (ACT v1, upstream-compatible): the truth every target is checked against.

Entry points: `build_preset` / `load_checkpoint` give a model, `random_batch` / `load_batch` its
inputs, and `act.step` / `act.run` execute it.
"""

from hrmc.hrm_ref.act import POLICIES, Carry, initial_carry, run, step
from hrmc.hrm_ref.batch import load_batch, make_batch, random_batch
from hrmc.hrm_ref.checkpoint import load_checkpoint, save_checkpoint
from hrmc.hrm_ref.config import HRMConfig
from hrmc.hrm_ref.model import HRM, Batch
from hrmc.hrm_ref.presets import PRESETS, build_preset

__all__ = ["POLICIES", "PRESETS", "Batch", "Carry", "HRM", "HRMConfig", "build_preset", "initial_carry",
           "load_batch", "load_checkpoint", "make_batch", "random_batch", "run", "save_checkpoint", "step"]
