"""Why the `coreai` target offers no float16 weights: what Apple's Linux interpreter does with a float16 matmul.

    python -m hrmc.bench.coreai_float16

1. One float16 matmul, [8, 1024] × [1024, 64], converted and run in coreai-core's reference interpreter, beside
   the same products summed in float16 one at a time (rounded after every product and every addition) and summed
   in float32 then rounded once (PyTorch's CPU, and hrm_ref's float16 `CastedLinear`): which one it is, and each
   one's RMSE against float64.
2. tiny (q-halt, budget 4, batch 2) as a float16 program whose matmuls are float16 (hrm_ref float16 with its
   linear layers' float32 sums replaced by plain float16 ones, for this measurement only), its `step` function
   run from hrm_ref's float32 carry at every step: RMSE against hrm_ref float64 over hrm_ref float16's, per output
   (the float16 rule passes at 2); and over the RMSE of hrm_ref float16 summing its matmuls as the interpreter
   does (each product rounded, added in order, rounded after each addition): what the ratio would be against a
   yardstick with the interpreter's arithmetic, which the contract (PyTorch's own float16 run) is not.

Correctness only, on the CPU (design.md §3): it says how the Linux interpreter sums, nothing of a Mac's backends.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F

from hrmc.hrm_ref import build_preset, random_batch
from hrmc.hrm_ref.act import initial_carry
from hrmc.hrm_ref.layers import CastedLinear
from hrmc.lowering.export import output_names
from hrmc.names import CARRY_NAMES
from hrmc.parity.executors import TorchExecutor
from hrmc.parity.gate import carry_at
from hrmc.targets.coreai._coreai import coreai_torch
from hrmc.targets.coreai.lowering import Chunk
from hrmc.targets.coreai.runtime import LoadedAsset


def rmse(values: np.ndarray, exact: np.ndarray) -> float:
    return float(np.sqrt(np.mean((values.astype(np.float64) - exact) ** 2)))


def converted(module: torch.nn.Module, args: tuple, inputs: list[str], outputs: list[str], state: list[str],
              folder: Path) -> LoadedAsset:
    """`module` converted as the `coreai` target converts (release mode), saved and loaded: function `main`."""
    program = torch.export.export(module.eval(), args).run_decompositions(coreai_torch.get_decomp_table())
    converter = coreai_torch.TorchConverter(mode=coreai_torch.TorchConverter.Mode.RELEASE)
    converter.add_exported_program(program, input_names=inputs, output_names=outputs, state_names=state,
                                   entrypoint_name="main")
    converter.to_coreai().save_asset(folder / "m.aimodel")
    return LoadedAsset(folder / "m.aimodel")


def one_matmul(folder: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1024, generator=generator).half()
    weight = torch.randn(64, 1024, generator=generator).half()

    class Linear(torch.nn.Module):
        def forward(self, x):
            return F.linear(x, weight)

    interpreter = converted(Linear(), (x,), ["x"], ["y"], [], folder).call("main", {"x": x.numpy()}, {})["y"]
    exact = x.double().numpy() @ weight.double().numpy().T
    one_by_one = np.zeros((8, 64), np.float16)
    for k in range(x.shape[1]):
        one_by_one = one_by_one + (x[:, k:k + 1].numpy() * weight[:, k].numpy()[None]).astype(np.float16)
    in_float32 = (x.float().numpy() @ weight.float().numpy().T).astype(np.float16)
    print("one float16 matmul [8, 1024] x [1024, 64] in the interpreter:")
    print(f"  the same bits as summed in float16 one product at a time: {np.array_equal(interpreter, one_by_one)}; "
          f"as summed in float32 and rounded once: {np.array_equal(interpreter, in_float32)}")
    print(f"  RMSE against float64: interpreter {rmse(interpreter, exact):.3g}, float32 sum {rmse(in_float32, exact):.3g}")


def summed_in_float16(self, x):
    """A float16 linear layer as the interpreter computes it: each product rounded, added in order, rounded."""
    weight = self.weight.to(x.dtype)
    total = torch.zeros(x.shape[:-1] + (weight.shape[0],), dtype=x.dtype)
    for k in range(x.shape[-1]):
        total = total + x[..., k:k + 1] * weight[:, k]
    return total + self.bias.to(x.dtype) if self.bias is not None else total


def tiny_steps(folder: Path) -> None:
    model, policy, budget = build_preset("tiny"), "q-halt", 4
    batch = random_batch(model.config, 2, 0)
    half = model.with_dtype("float16")

    def float16_sum(self, x):  # a float16 matmul, summed as the program's runtime sums it
        return F.linear(x, self.weight.to(x.dtype), self.bias.to(x.dtype) if self.bias is not None else None)

    with torch.no_grad(), mock.patch.object(CastedLinear, "forward", float16_sum):
        names = output_names(model, batch)
        asset = converted(Chunk(half, batch, policy, budget, 1), tuple(batch.values()), list(batch),
                          [*names, "halted_per_step", "steps_per_step"], list(CARRY_NAMES), folder)
    references = {dtype: TorchExecutor(dtype) for dtype in ("float32", "float64", "float16")}
    for executor in references.values():
        executor.prepare(model, policy, budget, batch)
    like_the_interpreter = TorchExecutor("float16")
    like_the_interpreter.prepare(model, policy, budget, batch)
    trajectory, start = references["float32"].run(batch), initial_carry(model, batch)
    print("tiny, float16 matmuls, step from hrm_ref's carry: RMSE / hrm_ref float16's (the float16 rule: ≤ 2); "
          "in brackets, / that of hrm_ref float16 summing as the interpreter sums")
    for s in range(trajectory["steps"].shape[0]):
        carry = carry_at(trajectory, start, s)
        state = {name: getattr(carry, name).numpy() for name in CARRY_NAMES}
        state = {name: value.astype(np.float16) if value.dtype == np.float32 else value for name, value in state.items()}
        got = asset.call("main", {name: value.numpy() for name, value in batch.items()}, state)
        exact, yardstick = references["float64"].step(carry, batch), references["float16"].step(carry, batch)
        with mock.patch.object(CastedLinear, "forward", summed_in_float16):
            emulated = like_the_interpreter.step(carry, batch)
        errors = {name: rmse(got.get(name, got.get(f"{name}_next")).reshape(exact[name].shape), exact[name])
                  for name in ("logits", "z_H", "z_L")}
        print(f"  step {s + 1}: " + ", ".join(
            f"{name} {error / rmse(yardstick[name], exact[name]):.2f} ({error / rmse(emulated[name], exact[name]):.2f})"
            for name, error in errors.items()))


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as first, tempfile.TemporaryDirectory() as second:
        one_matmul(Path(first))
        tiny_steps(Path(second))
