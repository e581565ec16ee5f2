"""Stored weights against the model's, in every storage a target uses (targets/weights.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hrmc.errors import GateFailure
from hrmc.targets.weights import check_weights

HERE = Path("artifact")


def parameters(model) -> dict[str, np.ndarray]:
    return {name: tensor.detach().numpy() for name, tensor in model.state_dict().items()}


def pair(array: np.ndarray, axis: int) -> np.ndarray:
    high = array.astype(np.float16)
    return np.concatenate([high, (array - high.astype(np.float32)).astype(np.float16)], axis=axis)


def stored_as(model, storage: str) -> list[tuple[str, np.ndarray]]:
    """The model's weights as a lowering stores them: matrices transposed, in float32, float16 or pairs, and the
    q head's bias folded into its weight as a float16 program does."""
    weights = parameters(model)
    stored = []
    for name, weight in weights.items():
        if name == "inner.q_head.bias" and storage != "float32":
            continue
        array = weight.T if weight.ndim == 2 else weight
        if name == "inner.q_head.weight" and storage != "float32":
            column = weights["inner.q_head.bias"].reshape(-1, 1)
            pieces = [pair(weight, 1), pair(column, 1)] if storage == "float16x2" else [weight, column]
            stored.append((name, np.concatenate(pieces, axis=1).astype(np.float16)))
        elif storage == "float16x2" and weight.ndim == 2:
            stored.append((name, pair(array, 0)))
        else:
            stored.append((name, array.astype(np.float16 if storage != "float32" else np.float32)))
    return stored + [("rope_cos", np.ones((18, 1, 16), np.float32)), ("eps", np.float32(1e-5) * np.ones(1))]


@pytest.fixture(scope="module")
def trained():
    from hrmc import hrm_ref

    return hrm_ref.build_preset("sudoku4")  # a trained q head: its bias is not zero


@pytest.mark.parametrize("storage", ["float32", "float16", "float16x2"])
def test_the_models_own_weights_pass_in_every_storage(trained, storage: str) -> None:
    check = check_weights(stored_as(trained, storage), trained, HERE)
    folded = storage != "float32"  # the q head's bias inside its weight
    assert check.compared == len(parameters(trained)) - folded and check.parameters == len(parameters(trained))


@settings(max_examples=25, derandomize=True, deadline=None)
@given(index=st.integers(0, 10_000), storage=st.sampled_from(["float32", "float16", "float16x2"]),
       factor=st.sampled_from([1.001, -1.0, 2.0, np.nan]))
def test_any_changed_element_of_any_weight_fails(trained, index: int, storage: str, factor: float) -> None:
    stored = stored_as(trained, storage)
    weights = [(i, array) for i, (_, array) in enumerate(stored) if array.size > 1 and np.ptp(array) > 0]
    position, array = weights[index % len(weights)]
    changed = array.copy().ravel()
    element = (index // len(weights)) % changed.size
    changed[element] = changed[element] * factor if changed[element] != 0 else 1.0
    stored[position] = (stored[position][0], changed.reshape(array.shape))
    with pytest.raises(GateFailure, match="is none of the model's parameters"):
        check_weights(stored, trained, HERE)


def test_a_swapped_layer_or_a_missing_head_fails(trained) -> None:
    stored = stored_as(trained, "float32")
    names = [name for name, _ in stored]
    first, second = (names.index(f"inner.L_level.layers.{i}.mlp.down_proj.weight") for i in (0, 1))
    swapped = list(stored)
    swapped[second] = (names[second], stored[first][1])  # layer 0's weights in layer 1's place: both the model's
    with pytest.raises(GateFailure, match="L_level.layers.1.mlp.down_proj.weight is stored nowhere"):
        check_weights(swapped, trained, HERE)
    headless = [(name, array) for name, array in stored if not name.startswith("inner.lm_head")]
    with pytest.raises(GateFailure, match="lm_head.weight is stored nowhere"):
        check_weights(headless, trained, HERE)
    outputs = ["q_halt_logits", "q_continue_logits"]  # lowered with --strip logits: its head need not be there
    assert check_weights(headless, trained, HERE, outputs).parameters == len(parameters(trained)) - 1


@pytest.mark.heavy  # an export per preset: minutes
@pytest.mark.parametrize("preset", ["tiny", "trm-tiny-mlp-t", "hex", "denoiser", "controller-cab", "sudoku4"])
def test_every_storage_of_every_kind_of_model_is_its_own(preset: str, tmp_path: Path) -> None:
    """What the lowerings store for every front end and head (bytes, latent, controller, TRM's mlp_t, a trained q
    head's bias): the export's and the fused graphs' initializers, and the MIL constants of float32, float16 and
    float16-pair programs, every one the model's."""
    import onnx
    from onnx import numpy_helper

    from hrmc import hrm_ref
    from hrmc.lowering import export_onnx
    from hrmc.passes import lower_onnx
    from hrmc.targets.coreml.lowering import FLAVOURS, build_program
    import onnx_ir as ir

    model = hrm_ref.build_preset(preset)
    batch = hrm_ref.random_batch(model.config, 2, 0)
    export = export_onnx(model, tmp_path / "m.onnx", budget=2 if model.config.act else None)
    graphs = lower_onnx(export.act_path, tmp_path / "f.onnx", "fused").graphs
    for paths in ([export.act_path, export.step_path], graphs.values()):
        stored = [(t.name, numpy_helper.to_array(t)) for p in paths for t in onnx.load(str(p)).graph.initializer]
        assert check_weights(stored, model, HERE, None, batch).compared > 0
    models = {role: ir.load(str(path)) for role, path in graphs.items()}
    for flavour, pairs in (("coreml", False), ("ane", False), ("ane", True)):
        program = build_program(models, 1, "f.onnx", FLAVOURS[flavour], weight_pairs=pairs).program
        stored = [(op.outputs[0].name, op.outputs[0].val) for function in program.functions.values()
                  for op in function.operations if op.op_type == "const" and isinstance(op.outputs[0].val, np.ndarray)]
        assert check_weights(stored, model, HERE, None, batch).compared > 0
