"""Names every stage shares: the carry's tensors and the `hrmc.` metadata keys.

The keys are written into ONNX `metadata_props` (model and Loop nodes), safetensors metadata and
Core ML user metadata; artifacts of earlier releases hold them, so they never change.
"""

from __future__ import annotations

# The ACT carry, in the order of `hrm_ref.Carry`: graph inputs by these names, outputs by NAME_next.
CARRY_NAMES = ("z_H", "z_L", "steps", "halted")
STATE_NAMES = CARRY_NAMES[:2]  # the reasoning state; steps and halted are bookkeeping

META_PREFIX = "hrmc."
# On a graph (the model's metadata_props), written by export and updated by the passes:
KIND = META_PREFIX + "kind"  # act | step | static | chunk
BUDGET = META_PREFIX + "budget"
OUTPUTS = META_PREFIX + "outputs"  # the heads' outputs, JSON
LOOPS = META_PREFIX + "loops"  # every Loop the export labelled, JSON
PASSES = META_PREFIX + "passes"  # the passes run so far, JSON
CHUNK = META_PREFIX + "chunk"  # steps per call of a chunk graph
PARTS = META_PREFIX + "parts"  # the record binding an artifact's files (hrmc.binding)
# On a Loop node:
LOOP = META_PREFIX + "loop"  # act | h_cycles | l_cycles
TRIP_COUNT = META_PREFIX + "trip_count"  # "" for the data-dependent ACT loop
# On every node of a lowered graph: the pass that made it ("export": the exporter's, copied or not)
MADE_BY = META_PREFIX + "pass"
# In a safetensors checkpoint written by save_checkpoint:
ARCH = META_PREFIX + "arch"  # the arch section, JSON


def meta_key(name: str) -> str:
    """`budget` → `hrmc.budget`."""
    return META_PREFIX + name


def unprefixed(metadata: dict[str, str]) -> dict[str, str]:
    """The `hrmc.` entries of a metadata mapping, keyed without the prefix."""
    return {key.removeprefix(META_PREFIX): value for key, value in metadata.items() if key.startswith(META_PREFIX)}
