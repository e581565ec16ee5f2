"""Every weight an artifact stores, checked against the model's, in the artifact's own storage.

The gate's numbers judge only what its inputs reach: a batch of one puzzle reads one row of the puzzle
embedding, and the token rows its puzzles hold. So before a shipped artifact runs, each tensor it stores
in a parameter's place must be that parameter exactly as its storage keeps it:

    float32    W or Wᵀ, bit for bit
    float16    fp16(W) or fp16(Wᵀ), rounded once
    float16x2  the pair hi = fp16(T), lo = fp16(T − hi) stacked along T's contracted axis (T = W or Wᵀ)
    bias folded (float16 programs): T's bias joined to it as extra contracted rows, rounded (or paired) alike
    int8, lut6, lut4  hrm_ref.compression's compression of T (its quantised values or palette indices, and their
               scales or palettes), exactly: every compressible parameter (`HRM.compressible_weights`) of an
               artifact that stores its weights so, and only those

A stored tensor is in a parameter's place when it has the shape one of these forms of a parameter has
(other constants, RoPE tables and scalars, are the graph's own, and its numbers judge them; so do
parameters of one number, which every input reads and the exporter folds into what reads them). It must then
be that form of some parameter, and every parameter the artifact's outputs need must be stored (but one of a
single repeated value, which the exporter may fold away): a changed row, a swapped layer or a missing head
fails, whether or not an input reaches it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from hrmc.errors import GateFailure
from hrmc.hrm_ref import HRM
from hrmc.hrm_ref.compression import COMPRESSIONS, Compressed, compress
from hrmc.hrm_ref.model import HEAD_MODULES, INPUT_MODULES


@dataclass(frozen=True)
class Form:
    """One way an artifact may store a parameter: its array, and how it was made, for reports."""

    parameters: tuple[str, ...]  # the weight, and its bias where folded in
    how: str
    array: np.ndarray


@dataclass
class WeightCheck:
    """What the check compared: stored tensors in parameters' places, and the parameters found among them."""

    compared: int = 0
    parameters: int = 0  # the parameters the artifact must store
    storages: set[str] = field(default_factory=set)  # the forms found (float32, float16, float16 pair, …)

    def describe(self) -> str:
        return (f"{self.compared} stored tensors compared with the model's {self.parameters} parameters "
                f"({', '.join(sorted(self.storages)) or 'none'}): every one is the model's")


def check_weights(stored: Iterable[tuple[str, np.ndarray | Compressed]], model: HRM, artifact: Path,
                  outputs: Iterable[str] | None = None, inputs: Iterable[str] | None = None,
                  storage: str | None = None, folded: bool = False) -> WeightCheck:
    """Every stored tensor in a parameter's place is that parameter in its storage; every parameter that
    `outputs` (the artifact's head outputs; None: all) and `inputs` (the batch it runs on; None: all) need is
    stored; where the artifact records a compressed `storage` (int8, lut6, lut4), every compressible one stored
    so. GateFailure (exit 1) names the first that is not. `folded`: the artifact's converter folds constants
    (Core AI stores H_init + L_init, computed at conversion, in H_init's shape), so a tensor in a parameter's place
    may be none, and a parameter every input reads whole (a vector: a bias, H_init; a table of one row: the puzzle
    embedding of one puzzle) may be folded into what reads it: those the numbers judge. Every other parameter
    (a matrix, a table of several rows, which an input may read only part of) must still be stored: a changed
    weight leaves its parameter stored nowhere."""
    parameters = _parameters(model, outputs, inputs)
    stored = list(stored)
    compressed = [(name, item) for name, item in stored if isinstance(item, Compressed)]
    stored = [(name, array) for name, array in stored
              if not isinstance(array, Compressed) and np.asarray(array).dtype.kind == "f"]
    shapes = {(array.dtype.str, array.shape) for _, array in stored}
    forms = {}  # (dtype, shape, digest) → form: only the forms some stored tensor could be
    for form in _forms(parameters, shapes):
        forms.setdefault(_key(form.array), form)
    placed = set(_form_shapes(parameters))
    check, found = WeightCheck(parameters=len(parameters)), set()
    for name, array in stored:
        if (array.dtype.str, array.shape) not in placed:
            continue  # not in a parameter's place: the graph's own constant
        form = forms.get(_key(array))
        if form is None and folded:
            continue
        if form is None:
            raise GateFailure(f"{artifact}: its stored weight {name} {list(array.shape)} ({array.dtype}) is none of "
                              f"the model's parameters as the artifact stores them: changed after hrmc wrote it, or "
                              "another model's")
        check.compared += 1
        check.storages.add(form.how)
        found.update(form.parameters)
    found |= _check_compressed(compressed, parameters, model.compressible_weights(), artifact, storage, check)
    # a parameter of one repeated value (a zero bias) may be folded away by the exporter: it need not be stored
    missing = [name for name, weight in parameters.items() if name not in found and np.ptp(weight) > 0
               and not (folded and _read_whole(weight))]
    if missing:
        raise GateFailure(f"{artifact}: the model's {missing[0]} is stored nowhere in it (of {len(missing)} "
                          "parameters missing): not lowered from this model as it is")
    return check


def _read_whole(weight: np.ndarray) -> bool:
    """Whether every input reads all of a parameter: a vector, or a table of one row."""
    return weight.ndim == 1 or weight.shape[0] == 1


def _check_compressed(stored: list[tuple[str, Compressed]], parameters: dict[str, np.ndarray], compressible: set[str],
                      artifact: Path, storage: str | None, check: WeightCheck) -> set[str]:
    """Each compressed weight is hrm_ref.compression's compression of a compressible parameter, and with a
    compressed `storage` every compressible parameter is stored so; the parameters found."""
    candidates = {name: weight for name, weight in parameters.items() if name in compressible}
    wanted = {(item.storage, item.axis, item.values.shape, item.table.dtype.str) for _, item in stored}
    forms = {}  # (storage, axis, shape, table dtype, digest) → parameter: only the forms some stored weight could be
    for name, weight in candidates.items():
        for array, _ in _orientations(weight):
            for kind, axis, shape, dtype in wanted:
                if shape == array.shape:
                    forms.setdefault(_compressed_key(compress(array, kind, axis, np.dtype(dtype))), name)
    found = set()
    for name, item in stored:
        if storage is not None and item.storage != storage:
            raise GateFailure(f"{artifact}: its stored weight {name} is {item.storage}, but it records {storage} "
                              "weights")
        parameter = forms.get(_compressed_key(item))
        if parameter is None:
            raise GateFailure(f"{artifact}: its stored weight {name} ({item.describe()}) is none of the model's "
                              f"parameters as hrmc compresses them: changed after hrmc wrote it, or another model's")
        check.compared += 1
        check.storages.add(item.storage)
        found.add(parameter)
    if storage in COMPRESSIONS:
        missing = sorted(name for name, weight in candidates.items() if name not in found and np.ptp(weight) > 0)
        if missing:
            raise GateFailure(f"{artifact}: records {storage} weights, but stores the model's {missing[0]} uncompressed "
                              f"(of {len(missing)}): not as hrmc lowers it")
    return found


def _compressed_key(item: Compressed) -> tuple:
    return (item.storage, item.axis, item.values.shape, item.table.dtype.str,
            hashlib.sha256(np.ascontiguousarray(item.values).tobytes() + item.table.tobytes()).hexdigest())


def _parameters(model: HRM, outputs: Iterable[str] | None, inputs: Iterable[str] | None) -> dict[str, np.ndarray]:
    """The model's float parameters and buffers (float32) that an artifact with these head outputs and inputs
    stores."""
    kept = None if outputs is None else set(outputs)
    dropped = tuple(prefix for output, prefix in HEAD_MODULES.items()
                    if kept is not None and output not in kept and not _shares(prefix, kept))
    dropped += tuple(prefix for name, prefix in INPUT_MODULES.items() if inputs is not None and name not in inputs)
    # a single number (a gate's scalar) is read by every input and often folded into what reads it: the numbers
    # judge it, and a scalar constant is no parameter's place
    return {name: tensor.detach().float().numpy() for name, tensor in model.state_dict().items()
            if tensor.is_floating_point() and tensor.numel() > 1 and not name.startswith(dropped)}


def _shares(prefix: str, kept: set[str]) -> bool:
    """Whether another kept output reads the same head (q_halt_logits and q_continue_logits: one q head)."""
    return any(HEAD_MODULES.get(output) == prefix for output in kept)


def _key(array: np.ndarray) -> tuple:
    array = np.ascontiguousarray(array)
    return array.dtype.str, array.shape, hashlib.sha256(array.tobytes()).hexdigest()


def _orientations(weight: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """(T, its contracted axis) for W and, if 2-D, Wᵀ: the arrays a matmul may read the parameter as."""
    return [(weight, 0)] if weight.ndim != 2 else [(weight, 1), (weight.T, 0)]


def _pair(array: np.ndarray) -> list[np.ndarray]:
    high = array.astype(np.float16)
    return [high, (array - high.astype(np.float32)).astype(np.float16)]


def _bias_name(parameters: dict[str, np.ndarray], name: str) -> str | None:
    """The bias of a 2-D `X.weight`, where it has one: a float16 program may fold it in."""
    bias = name.removesuffix("weight") + "bias"
    return bias if name.endswith(".weight") and parameters[name].ndim == 2 and bias in parameters else None


def _form_shapes(parameters: dict[str, np.ndarray]) -> Iterator[tuple[str, tuple]]:
    """The (dtype, shape) of every form, cheaply: a stored tensor of one of them is in a parameter's place."""
    for name, weight in parameters.items():
        folds = (0, 1) if _bias_name(parameters, name) else (0,)
        for array, axis in _orientations(weight):
            yield "<f4", array.shape
            yield "<f2", array.shape
            for factor, extra in ((factor, extra) for factor in (1, 2) for extra in folds):
                shape = list(array.shape)
                shape[axis] = factor * (shape[axis] + extra)
                if (factor, extra) != (1, 0):
                    yield "<f2", tuple(shape)


def _forms(parameters: dict[str, np.ndarray], wanted: set[tuple]) -> Iterator[Form]:
    """Every storage form of every parameter whose (dtype, shape) some stored tensor has."""
    for name, weight in parameters.items():
        bias = _bias_name(parameters, name)
        for array, axis in _orientations(weight):
            candidates = [((name,), "float32", [array.astype(np.float32)]),
                          ((name,), "float16", [array.astype(np.float16)]), ((name,), "float16 pair", _pair(array))]
            if bias is not None:
                column = parameters[bias].reshape((1, -1) if axis == 0 else (-1, 1))
                candidates += [((name, bias), "float16, bias folded", [array.astype(np.float16),
                                                                      column.astype(np.float16)]),
                               ((name, bias), "float16 pair, bias folded", _pair(array) + _pair(column))]
            for names, how, pieces in candidates:
                shape = list(pieces[0].shape)
                if len(pieces) > 1:
                    shape[axis] = sum(piece.shape[axis] for piece in pieces)
                if (pieces[0].dtype.str, tuple(shape)) in wanted:
                    yield Form(names, how, pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=axis))
