"""Stored weights against the model's, in every storage a target uses (targets/weights.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hrmc.errors import GateFailure
from hrmc.hrm_ref.compression import COMPRESSIONS, Compressed, compress
from hrmc.targets.weights import check_weights

HERE = Path("artifact")


def parameters(model) -> dict[str, np.ndarray]:
    return {name: tensor.detach().numpy() for name, tensor in model.state_dict().items()}


def pair(array: np.ndarray, axis: int) -> np.ndarray:
    high = array.astype(np.float16)
    return np.concatenate([high, (array - high.astype(np.float32)).astype(np.float16)], axis=axis)


def stored_as(model, storage: str) -> list[tuple[str, np.ndarray | Compressed]]:
    """The model's weights as a lowering stores them: matrices transposed, in float32, float16 or pairs, and the
    q head's bias folded into its weight as a float16 program does; compressed (int8, lut6, lut4, an ane
    package's float16 tables), the compressible ones, the rest in float16."""
    weights = parameters(model)
    stored = []
    for name, weight in weights.items():
        if name in model.compressible_weights() and storage in COMPRESSIONS:
            stored.append((name, compress(weight.T, storage, 1)))
            continue
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


@pytest.mark.parametrize("storage", ["float32", "float16", "float16x2", "int8", "lut6", "lut4"])
def test_the_models_own_weights_pass_in_every_storage(trained, storage: str) -> None:
    check = check_weights(stored_as(trained, storage), trained, HERE, storage=storage)
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


@settings(max_examples=25, derandomize=True, deadline=None)
@given(index=st.integers(0, 10_000), storage=st.sampled_from(list(COMPRESSIONS)), part=st.sampled_from(["values",
                                                                                                        "table"]))
def test_any_changed_index_level_scale_or_palette_entry_fails(trained, index: int, storage: str, part: str) -> None:
    """A compressed weight must be hrmc's own compression of the parameter, exactly: one quantised level or palette
    index moved by one, or one scale or palette entry changed by one float16 step, fails."""
    stored = stored_as(trained, storage)
    packed = [i for i, (_, item) in enumerate(stored) if isinstance(item, Compressed)]
    position = packed[index % len(packed)]
    name, item = stored[position]
    changed = getattr(item, part).copy()
    flat = changed.reshape(-1)
    element = (index // len(packed)) % flat.size
    if part == "values":
        flat[element] = flat[element] - 1 if flat[element] > (-127 if storage == "int8" else 0) else flat[element] + 1
    else:
        flat[element] = np.nextafter(flat[element], np.float16(np.inf))
    stored[position] = (name, Compressed(item.storage, item.axis, *(
        (changed, item.table) if part == "values" else (item.values, changed))))
    with pytest.raises(GateFailure, match="is none of the model's parameters as hrmc compresses them"):
        check_weights(stored, trained, HERE, storage=storage)


def test_a_compressed_artifact_stores_every_compressible_weight_so_and_in_its_own_storage(trained) -> None:
    stored = stored_as(trained, "int8")
    first = next(i for i, (_, item) in enumerate(stored) if isinstance(item, Compressed))
    name = stored[first][0]
    plain = list(stored)
    plain[first] = (name, parameters(trained)[name].T.astype(np.float16))  # the model's, but not compressed
    assert check_weights(plain, trained, HERE).compared == len(stored) - 2  # nothing asked: a float16 weight (and
    # the two constants that are no parameter's)
    with pytest.raises(GateFailure, match=f"records int8 weights, but stores the model's {name} uncompressed"):
        check_weights(plain, trained, HERE, storage="int8")
    with pytest.raises(GateFailure, match="is int8, but it records lut6 weights"):
        check_weights(stored, trained, HERE, storage="lut6")
    other = list(stored)  # the same weight compressed, but not as hrmc does (per tensor, not per channel)
    flat = compress(parameters(trained)[name].T.reshape(1, -1), "int8", 0)
    other[first] = (name, Compressed("int8", 1, flat.values.reshape(stored[first][1].values.shape),
                                     np.repeat(flat.table, stored[first][1].table.size).reshape(1, -1)))
    with pytest.raises(GateFailure, match="as hrmc compresses them"):
        check_weights(other, trained, HERE, storage="int8")


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
    head's bias): the export's and the fused graphs' initializers, and the MIL constants of float32, float16,
    float16-pair and compressed programs, every one the model's (the compressed ones: every compressible weight
    compressed, which is what `HRM.with_weights_as_stored` assumes)."""
    import onnx
    from onnx import numpy_helper

    from hrmc import hrm_ref
    from hrmc.lowering import export_onnx
    from hrmc.passes import lower_onnx
    from hrmc.targets.coreml.lowering import DECOMPRESSING, FLAVOURS, build_program, stored_compressed
    import onnx_ir as ir

    model = hrm_ref.build_preset(preset)
    batch = hrm_ref.random_batch(model.config, 2, 0)
    export = export_onnx(model, tmp_path / "m.onnx", budget=2 if model.config.act else None)
    graphs = lower_onnx(export.act_path, tmp_path / "f.onnx", "fused").graphs
    for paths in ([export.act_path, export.step_path], graphs.values()):
        stored = [(t.name, numpy_helper.to_array(t)) for p in paths for t in onnx.load(str(p)).graph.initializer]
        assert check_weights(stored, model, HERE, None, batch).compared > 0
    models = {role: ir.load(str(path)) for role, path in graphs.items()}
    for flavour, pairs, compression in (("coreml", False, None), ("ane", False, None), ("ane", True, None),
                                        ("coreml", False, "lut4"), ("ane", False, "int8"), ("ane", False, "lut6")):
        program = build_program(models, 1, "f.onnx", FLAVOURS[flavour], pairs, compression).program
        stored = [(op.outputs[0].name, stored_compressed(op) if op.op_type in DECOMPRESSING else op.outputs[0].val)
                  for function in program.functions.values() for op in function.operations
                  if op.op_type in DECOMPRESSING or (op.op_type == "const" and isinstance(op.outputs[0].val, np.ndarray)
                                                    and not any(child.op_type in DECOMPRESSING
                                                                for child in op.outputs[0].child_ops))]
        assert check_weights(stored, model, HERE, None, batch, compression).compared > 0
