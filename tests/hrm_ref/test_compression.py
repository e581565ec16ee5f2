"""hrmc's weight compression (hrm_ref/compression.py): deterministic, within its error bounds, the same in
either orientation, and a fixed point of itself; and the model run on its weights as a package stores them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from hrmc.hrm_ref.compression import (COMPRESSIONS, compress, compressible, group_channels, lut_shape, nearest,
                                     read_int8, read_lut)

FLOATS = (np.float16, np.float32)


@st.composite
def weights(draw) -> np.ndarray:
    """A float32 matrix of 1–48 × 1–40 elements, values up to 10³ (some far below float16's normal range after
    division by 127), with repeats, zero channels and outliers among them."""
    shape = (draw(st.integers(1, 48)), draw(st.integers(1, 40)))
    values = st.one_of(st.floats(-100, 100, width=32), st.sampled_from([0.0, 0.5, -0.5, 1e-3]))
    weight = draw(arrays(np.float32, shape, elements=values))
    scale = draw(st.sampled_from([1.0, 1e-2, 1e1, 1e-5]))
    return (weight * np.float32(scale)).astype(np.float32)


@settings(max_examples=60, derandomize=True, deadline=None)
@given(weight=weights(), storage=st.sampled_from(list(COMPRESSIONS)), axis=st.integers(0, 1),
       dtype=st.sampled_from(FLOATS))
def test_compression_is_deterministic_and_the_same_in_either_orientation(weight, storage, axis, dtype) -> None:
    first, again = compress(weight, storage, axis, dtype), compress(weight.copy(), storage, axis, dtype)
    assert first.same(again) and first.dense().tobytes() == again.dense().tobytes()
    turned = compress(np.ascontiguousarray(weight.T), storage, 1 - axis, dtype)  # Wᵀ, channels on the other axis
    np.testing.assert_array_equal(turned.values, first.values.T)
    np.testing.assert_array_equal(turned.dense(), first.dense().T)
    assert first.dense().dtype == dtype and first.dense().shape == weight.shape


@settings(max_examples=60, derandomize=True, deadline=None)
@given(weight=weights(), axis=st.integers(0, 1), dtype=st.sampled_from(FLOATS))
def test_int8_is_within_half_a_step_of_each_channel(weight, axis, dtype) -> None:
    """|w − q·s| ≤ s/2 per output channel, plus the one rounding of q·s to the float type: the scale is max|w|/127
    rounded, up where rounding took it below (tiny channels, float16 subnormals), so no value is clipped."""
    packed = compress(weight, "int8", axis, dtype)
    assert packed.values.dtype == np.int8 and np.abs(packed.values.astype(int)).max() <= 127
    scale = packed.table.astype(np.float64)
    assert scale.shape == tuple(n if a == axis else 1 for a, n in enumerate(weight.shape))
    dense = packed.dense().astype(np.float64)
    rounding = np.abs(dense) * np.finfo(dtype).eps / 2
    assert (np.abs(dense - weight) <= scale / 2 + rounding + scale * np.finfo(dtype).eps).all()


@settings(max_examples=60, derandomize=True, deadline=None)
@given(weight=weights(), storage=st.sampled_from(["lut6", "lut4"]), axis=st.integers(0, 1),
       dtype=st.sampled_from(FLOATS))
def test_palettes_are_sorted_and_every_element_takes_its_nearest_entry(weight, storage, axis, dtype) -> None:
    packed = compress(weight, storage, axis, dtype)
    bits = COMPRESSIONS[storage]
    channels = weight.shape[axis]
    assert packed.table.shape == (channels // group_channels(channels), 2 ** bits) and packed.table.dtype == dtype
    assert (np.diff(packed.table.astype(np.float64), axis=1) >= 0).all()
    assert packed.values.dtype == np.uint8 and packed.values.max(initial=0) < 2 ** bits
    grouped = np.moveaxis(weight, axis, 0).reshape(packed.table.shape[0], -1)
    dense = np.moveaxis(packed.dense(), axis, 0).reshape(grouped.shape).astype(np.float64)
    for values, table, got in zip(grouped, packed.table.astype(np.float64), dense):
        best = np.abs(values[:, None] - table[None, :]).min(axis=1)
        np.testing.assert_array_equal(np.abs(got - values), best)  # no entry of the palette is nearer
        assert table.min() >= values.min() - np.abs(values.min()) * 1e-3 - 1e-7  # centroids inside the values'
        assert table.max() <= values.max() + np.abs(values.max()) * 1e-3 + 1e-7  # range (up to the rounding)


@settings(max_examples=40, derandomize=True, deadline=None)
@given(weight=weights(), storage=st.sampled_from(list(COMPRESSIONS)), axis=st.integers(0, 1),
       dtype=st.sampled_from(FLOATS))
def test_a_decompressed_weight_compresses_to_itself(weight, storage, axis, dtype) -> None:
    """Round trip: what a package stores, decompressed and compressed again, decompresses to the same values (a
    palette of at most 2**B distinct values is kept exactly; int8 levels land on their own levels)."""
    once = compress(weight, storage, axis, dtype).dense()
    twice = compress(once.astype(np.float32), storage, axis, dtype).dense()
    if storage == "int8":  # the scale may be recomputed one float rounding apart: levels stay within it
        np.testing.assert_allclose(twice, once, rtol=4 * np.finfo(dtype).eps, atol=0)
    else:
        np.testing.assert_array_equal(twice, once)


@settings(max_examples=40, derandomize=True, deadline=None)
@given(weight=weights(), storage=st.sampled_from(list(COMPRESSIONS)), axis=st.integers(0, 1),
       dtype=st.sampled_from(FLOATS))
def test_a_weight_read_back_from_its_dequantising_op_is_the_one_written(weight, storage, axis, dtype) -> None:
    """What a lowering hands a dequantising op (the scale in the weight's rank; the palettes as `lut_shape`), read
    back, is the compressed weight itself, its channel axis included: what the weight check compares."""
    written = compress(weight, storage, axis, dtype)
    bits = COMPRESSIONS[storage]
    read = (read_int8(written.values, written.table) if bits is None else
            read_lut(written.values, written.table.reshape(lut_shape(written.values.shape, written.axis, bits))))
    # one scale for a 1 × 1 weight, one palette for the whole weight: either axis is it, and both decompress alike
    either = written.table.size == 1 if bits is None else lut_shape(weight.shape, 0, bits) == lut_shape(weight.shape, 1, bits)
    assert read.same(written) and (read.axis == written.axis or either)
    np.testing.assert_array_equal(read.dense(), written.dense())


def test_nearest_takes_the_lower_entry_on_a_tie() -> None:
    table = np.array([-1.0, 0.0, 0.0, 2.0], np.float16)
    picked = nearest(np.array([-0.5, 0.0, 1.0, 1.5, 9.0]), table)
    assert table[picked].tolist() == [-1.0, 0.0, 0.0, 2.0, 2.0]


def test_only_matrices_of_2048_elements_or_more_are_compressible() -> None:
    assert compressible((64, 32)) and not compressible((64, 31)) and not compressible((4096,))
    assert group_channels(64) == 16 and group_channels(11) == 11 and group_channels(18) == 9
    with pytest.raises(ValueError, match="no compression 'int4'"):
        compress(np.ones((64, 64), np.float32), "int4", 0)


@pytest.mark.parametrize("storage", list(COMPRESSIONS))
def test_the_model_as_stored_runs_each_compressible_weight_decompressed(storage: str) -> None:
    """with_weights_as_stored: the linear layers' matrices of 2048 elements or more compressed from their float32
    values and decompressed; every other weight (embeddings, the heads, the q bias) rounded to float16, as an ane
    package stores them; coreml's float32 packages keep them as they are."""
    from hrmc import hrm_ref

    model = hrm_ref.build_preset("sudoku4")
    compressed = model.compressible_weights()
    assert "inner.L_level.layers.0.self_attn.qkv_proj.weight" in compressed
    assert not compressed & {"inner.lm_head.weight", "inner.q_head.weight", "inner.embed_tokens.embedding_weight"}
    for precision, dtype in (("float16", np.float16), ("float32", np.float32)):
        stored = model.with_weights_as_stored(storage, precision).state_dict()
        for name, weight in model.state_dict().items():
            if name in compressed:
                expected = compress(weight.numpy(), storage, 0, dtype).dense().astype(np.float32)
            else:
                expected = weight.to(torch.float16 if precision == "float16" else torch.float32).float().numpy()
            np.testing.assert_array_equal(stored[name].numpy(), expected, err_msg=name)
    np.testing.assert_array_equal(model.with_weights_as_stored("float16").state_dict()["inner.lm_head.weight"],
                                  model.with_weights_rounded(torch.float16).state_dict()["inner.lm_head.weight"])
    with pytest.raises(ValueError, match="float16x2"):
        model.with_weights_as_stored("float16x2")
