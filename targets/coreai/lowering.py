"""hrm_ref → a Core AI program: each entry point a small module around hrm_ref's own ACT step, traced with
`torch.export` and converted by coreai-torch (no ONNX in between: Core AI reads torch programs).

    init   (inputs, puzzle_identifiers) → z_H, z_L, steps, halted         hrm_ref.initial_carry
    step   (inputs, puzzle_identifiers) → outputs [1, …], halted_per_step, steps_per_step;
                                          state z_H, z_L, steps, halted, updated in place
    chunkK (inputs, puzzle_identifiers) → outputs [K, …], halted_per_step, steps_per_step;   the same state
    solve  (inputs, puzzle_identifiers) → outputs [budget, …], halted, steps [budget, B], steps_run, answer, halt_step

The cycles are Python loops, unrolled by the trace; `solve` is the masked fixed-budget loop unrolled over the
budget, as every other target's whole inference (no `torch.while_loop`: nested loops fail to convert, and
Apple's device backends run no control flow). A step once every sample halted changes nothing (a halted row's
carry is frozen), and rows past `steps_run` are zero, as the static graph's. The carry of `step` and `chunkK`
is the runtime state an app keeps between calls (registered buffers updated with `copy_`).

The programs share the model's parameters: the converter stores each weight once in the asset. With compressed
weights (`stored_as`: int8, lut6, lut4) each compressible matmul weight is hrm_ref.compression's, read through
coreai-torch's dequantising ops, which the converter keeps: the asset stores it compressed
(`blockwise_shift_scale`, `lut_to_dense`) and the program decompresses it where it runs.
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hrmc.hrm_ref import HRM, Batch, Carry
from hrmc.hrm_ref.compression import COMPRESSIONS, Compressed, compress, lut_shape
from hrmc.hrm_ref.act import freeze, initial_carry, step
from hrmc.names import CARRY_NAMES
from hrmc.targets.app import CARRY_MEANINGS, describe

WHOLE = "solve"


def function_name(role: str, chunk: int | None = None) -> str:
    """The asset's function of a role: `init`, `step`, `chunkK`, `solve`."""
    return f"chunk{chunk}" if role == "chunk" else WHOLE if role == "static" else role


class _Entry(nn.Module):
    """An entry point: the model, and the batch's tensors by name (a torch program's inputs are positional)."""

    def __init__(self, model: HRM, batch_names: list[str], policy: str, budget: int) -> None:
        super().__init__()
        self.model, self.batch_names, self.policy, self.budget = model, batch_names, policy, budget

    def batch(self, tensors: tuple[torch.Tensor, ...]) -> Batch:
        return dict(zip(self.batch_names, tensors))


class Init(_Entry):
    """The carry a puzzle starts from."""

    def forward(self, *tensors):
        carry = initial_carry(self.model, self.batch(tensors))
        return carry.z_H, carry.z_L, carry.steps, carry.halted


class _Stateful(_Entry):
    """The carry as registered buffers (Core AI runtime state), read and written in place by each call."""

    def __init__(self, model: HRM, batch: Batch, policy: str, budget: int) -> None:
        super().__init__(model, list(batch), policy, budget)
        start = initial_carry(model, batch)
        for name in CARRY_NAMES:
            self.register_buffer(f"carry_{name}", getattr(start, name).clone())

    def carry(self) -> Carry:
        return Carry(*(getattr(self, f"carry_{name}") for name in CARRY_NAMES))

    def keep(self, carry: Carry) -> None:
        for name in CARRY_NAMES:
            getattr(self, f"carry_{name}").copy_(getattr(carry, name))


def _unrolled(model: HRM, carry: Carry, batch: Batch, policy: str, budget: int, steps: int):
    """`steps` ACT steps from `carry`, each output frozen once its sample halted (hrm_ref.run), stacked.
    Returns the carry after them, the stacked outputs, halted and steps after each step, and whether each step
    ran (some sample had not halted before it)."""
    rows: dict[str, list[torch.Tensor]] = {}
    last, ran = None, []
    for _ in range(steps):
        halted_before = carry.halted
        ran.append(~halted_before.all())
        carry, outputs = step(model, carry, batch, policy, budget)
        if last is not None:
            outputs = {name: freeze(halted_before, last[name], value) for name, value in outputs.items()}
        last = outputs
        for name, value in (outputs | {"halted": carry.halted, "steps": carry.steps}).items():
            rows.setdefault(name, []).append(value)
    return carry, {name: torch.stack(values) for name, values in rows.items()}, torch.stack(ran), last


def _zero_unrun(values: torch.Tensor, ran: torch.Tensor) -> torch.Tensor:
    """Rows [steps, …] of steps that did not run are zero."""
    return torch.where(ran.view((-1,) + (1,) * (values.ndim - 1)), values, torch.zeros_like(values))


class Chunk(_Stateful):
    """K ACT steps from the state, outputs stacked [K, …]; `halted_per_step`, `steps_per_step` after each. `step`
    is the chunk of one step: the interface of the Core ML package's step and chunk functions, less the carry."""

    def __init__(self, model: HRM, batch: Batch, policy: str, budget: int, steps: int) -> None:
        super().__init__(model, batch, policy, budget)
        self.steps = steps

    def forward(self, *tensors):
        carry, rows, _, _ = _unrolled(self.model, self.carry(), self.batch(tensors), self.policy, self.budget,
                                      self.steps)
        self.keep(carry)
        halted, steps = rows.pop("halted"), rows.pop("steps")
        return (*rows.values(), halted, steps)


class Solve(_Entry):
    """The whole inference, `budget` masked steps unrolled; the app's `answer` and `halt_step` (targets/app.py)."""

    def forward(self, *tensors):
        batch = self.batch(tensors)
        carry, rows, ran, last = _unrolled(self.model, initial_carry(self.model, batch), batch, self.policy,
                                           self.budget, self.budget)
        halted, steps = rows.pop("halted"), rows.pop("steps")
        answer = (last["logits"].argmax(-1).to(torch.int32),) if "logits" in last else ()
        return (*(_zero_unrun(value, ran) for value in rows.values()), _zero_unrun(halted, ran),
                _zero_unrun(steps, ran), ran.sum(dtype=torch.int32), *answer, carry.steps)


class _CompressedLinear(nn.Module):
    """hrm_ref's CastedLinear in float32, its weight held compressed and decompressed by the program. The buffers'
    names matter: coreai-torch finds a palette lookup's indices and palettes by the words in theirs."""

    def __init__(self, weight: Compressed, bias: nn.Parameter | None) -> None:
        super().__init__()
        self.bits, self.bias = COMPRESSIONS[weight.storage], bias
        if self.bits is None:
            self.register_buffer("quantized", torch.from_numpy(weight.values))
            self.register_buffer("scale", torch.from_numpy(weight.table))
        else:
            self.register_buffer("indices", torch.from_numpy(weight.values))
            self.register_buffer("lut", torch.from_numpy(weight.table.reshape(lut_shape(weight.values.shape,
                                                                                        weight.axis, self.bits))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ops = torch.ops.coreai
        weight = (ops.constexpr_blockwise_shift_scale(self.quantized, self.scale) if self.bits is None
                  else ops.lut_to_dense(self.indices, self.lut, 0))
        return F.linear(x, weight, self.bias)


def stored_as(model: HRM, storage: str) -> HRM:
    """`model` as an asset storing its weights `storage` computes: float32, itself; int8, lut6, lut4, a copy whose
    compressible matmul weights (`HRM.compressible_weights`) are hrm_ref.compression's, tables in float32, read
    through the dequantising ops (as `HRM.with_weights_as_stored(storage, "float32")` runs them)."""
    if storage == "float32":
        return model
    from hrmc.targets.coreai import _coreai  # noqa: F401 (registers torch.ops.coreai)

    twin = copy.deepcopy(model)
    for name in sorted(model.compressible_weights()):
        owner, _, attribute = name.removesuffix(".weight").rpartition(".")
        linear = getattr(twin.get_submodule(owner), attribute)
        weight = compress(linear.weight.detach().numpy(), storage, 0, np.float32)
        setattr(twin.get_submodule(owner), attribute, _CompressedLinear(weight, linear.bias))
    return twin


def entry_points(model: HRM, batch: Batch, policy: str, budget: int, outputs: tuple[str, ...],
                 chunk: int | None) -> dict[str, tuple[nn.Module, list[str], list[str]]]:
    """Each function of the asset: its module, its output names, its state names."""
    names = list(batch)
    per_step = ["halted_per_step", "steps_per_step"]
    entries = {
        "init": (Init(model, names, policy, budget), list(CARRY_NAMES), []),
        "step": (Chunk(model, batch, policy, budget, 1), [*outputs, *per_step], list(CARRY_NAMES)),
        WHOLE: (Solve(model, names, policy, budget),
                [*outputs, "halted", "steps", "steps_run", *(["answer"] if "logits" in outputs else []), "halt_step"], []),
    }
    if chunk is not None and chunk > 1:
        entries[function_name("chunk", chunk)] = (Chunk(model, batch, policy, budget, chunk), [*outputs, *per_step],
                                                  list(CARRY_NAMES))
    return entries


def convert(model: HRM, batch: Batch, policy: str, budget: int, outputs: tuple[str, ...], chunk: int | None,
            progress: Callable[[str], None] = lambda _: None):
    """The Core AI program of every entry point (coreai-torch, release mode: no stack traces, so no path of
    this machine, in what ships), and what each function's inputs, outputs and state mean (`descriptions`)."""
    from hrmc.targets.coreai._coreai import coreai_torch

    converter = coreai_torch.TorchConverter(mode=coreai_torch.TorchConverter.Mode.RELEASE)
    args, meanings = tuple(batch.values()), {}
    with torch.no_grad(), warnings.catch_warnings():
        # torch's pytree warns of its own deprecated LeafSpec while coreai-torch decomposes: not the user's concern
        warnings.filterwarnings("ignore", message=".*LeafSpec", category=FutureWarning)
        for function, (module, output_names, state_names) in entry_points(model, batch, policy, budget, outputs,
                                                                            chunk).items():
            progress(f"tracing {function} (torch.export)")
            program = torch.export.export(module.eval(), args).run_decompositions(coreai_torch.get_decomp_table())
            converter.add_exported_program(program, input_names=list(batch), output_names=output_names,
                                           state_names=state_names, entrypoint_name=function)
            meanings[function] = descriptions(function, batch, dict(zip(output_names, _user_outputs(program))),
                                              {name: getattr(module, f"carry_{name}") for name in state_names})
        progress("converting (coreai-torch)")
        # coreai-torch draws its own progress bars on stdout, which `--json` keeps for the report
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
            return converter.to_coreai(), meanings


def _user_outputs(program: torch.export.ExportedProgram) -> list[torch.Tensor]:
    """A traced program's outputs (fake tensors: dtype and shape), the buffers it writes left out."""
    returned = next(node for node in program.graph.nodes if node.op == "output").args[0]
    return [node.meta["val"] for node, spec in zip(returned, program.graph_signature.output_specs)
            if spec.kind == torch.export.graph_signature.OutputKind.USER_OUTPUT]


def descriptions(function: str, batch: Batch, outputs: dict[str, torch.Tensor],
                 state: dict[str, torch.Tensor]) -> dict[str, dict[str, str]]:
    """What each input, output and state of `function` means, its type and shape, and how an app uses it: the
    Core ML package's descriptions (targets/app.py), the carry as runtime state."""
    def typed(value: torch.Tensor) -> tuple[str, list[int]]:
        return str(value.dtype).removeprefix("torch."), list(value.shape)

    app_function = "chunk" if function.startswith("chunk") else function
    return {"inputs": {name: describe(name, app_function, *typed(value)) for name, value in batch.items()},
            "outputs": {name: describe(name, app_function, *typed(value)) for name, value in outputs.items()},
            "state": {name: f"{CARRY_MEANINGS[name]}, {typed(value)[0]} {typed(value)[1]}: runtime state, kept between "
                            f"calls of step and chunk: start it from init's {name}; each call updates it in place."
                      for name, value in state.items()}}


__all__ = ["Chunk", "Init", "Solve", "WHOLE", "convert", "descriptions", "entry_points", "function_name",
           "stored_as"]
