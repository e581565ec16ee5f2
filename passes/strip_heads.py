"""The pass `hrmc lower --strip` adds to the pipeline: `StripHeadsPass`, and the outputs it never strips
(`PROTECTED`).
"""

from __future__ import annotations

import json

import onnx_ir as ir
import onnx_ir.passes.common as common

from hrmc.names import OUTPUTS
from hrmc.passes._loops import PassInputError

PROTECTED = ("halted", "steps", "steps_run", "z_H_next", "z_L_next", "steps_next", "halted_next",
             "halted_per_step", "steps_per_step")


class StripHeadsPass(ir.passes.InPlacePass):
    """`strip-heads`: remove optional outputs and everything only they needed.

    Before (a hex model; the user ships only the digest):

        z_H → lm_head → logits           (output)
        z_H → hex_head → hex_logits      (output)
        z_H[:, 0] → q_head → q values    (output, and read by the halting rule)

    After `strip-heads logits,q_halt_logits,q_continue_logits`:

        z_H → hex_head → hex_logits      (output)
        z_H[:, 0] → q_head → q values    (kept: the halting rule still reads them)

    Outputs that feed the carry or the halting decision stay computed; only what nothing reads goes.
    """

    def __init__(self, outputs: tuple[str, ...]) -> None:
        super().__init__()
        self.outputs = tuple(outputs)

    def requires(self, model: ir.Model) -> None:
        present = [value.name for value in model.graph.outputs]
        for name in self.outputs:
            if name in PROTECTED:
                raise PassInputError(f"strip-heads: output {name!r} is the carry or a halting decision, not a head")
            if name not in present:
                raise PassInputError(f"strip-heads: the graph has no output {name!r} (it has {', '.join(present)})")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        present = {value.name: value for value in model.graph.outputs}
        for name in self.outputs:
            model.graph.outputs.remove(present[name])
        common.RemoveUnusedNodesPass()(model)
        kept = json.loads(model.metadata_props.get(OUTPUTS, "[]"))
        model.metadata_props[OUTPUTS] = json.dumps([name for name in kept if name not in self.outputs])
        return ir.passes.PassResult(model, modified=bool(self.outputs))
