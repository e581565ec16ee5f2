"""Compressed weights: hrmc's own int8 quantisation and k-means palettization, in numpy.

The one definition of what a compressed weight is. `hrmc lower --weights int8|lut6|lut4` writes it into a
Core ML package (as constexpr dequantisation ops), the weight check recomputes it from the model's
parameters and compares it with what a package stores, exactly, and `HRM.with_weights_as_stored` runs the
reference on it decompressed: the three must agree to the bit, so all three call these functions.

    int8   symmetric, per output channel: scale s = fp(max |w| / 127), rounded up where rounding took it below
           (so |w| / s ≤ 127), 0 → 1; q = rint(w / s);
           decompressed fp(q · s), in the storage's float type (float16 for the ANE)
    lutB   a palette of 2**B values per group of GROUP_CHANNELS output channels (fewer where the channels do
           not divide by it: the largest divisor), found by 1-D k-means (Lloyd) started at the group's quantiles;
           each element stores the index of its nearest palette entry (of the palette as stored, rounded to the
           float type); decompressed palette[index]

Deterministic: no random start, so the same weight gives the same bytes. Independent of the weight's
orientation: W with channels on axis 0 and Wᵀ with them on axis 1 compress to transposes of each other.
Only matmul weights of at least MIN_ELEMENTS elements are compressed (`compressible`); smaller ones, the
embedding tables and everything else stay in the storage's float type (coremltools' `weight_threshold`
default is 2048 too).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COMPRESSIONS = {"int8": None, "lut6": 6, "lut4": 4}  # storage → bits of a palette index (int8: none, quantised)
MIN_ELEMENTS = 2048  # matmul weights smaller than this stay uncompressed
GROUP_CHANNELS = 16  # output channels sharing one palette, at most
KMEANS_ITERATIONS = 100  # Lloyd steps at most (a 1-D k-means converges in far fewer on weights)
INT8_LEVELS = 127  # symmetric: −127 … 127


@dataclass(frozen=True, eq=False)
class Compressed:
    """One weight as a compressed storage keeps it."""

    storage: str  # int8, lut6, lut4
    axis: int  # the output-channel axis of `values`
    values: np.ndarray  # the weight's shape: int8 quantised values, or uint8 palette indices
    table: np.ndarray  # int8: the scale of each output channel (the weight's rank, 1 but along `axis`);
    #                    lutB: the palettes, [groups, 2**B], each sorted; in the storage's float type

    def dense(self) -> np.ndarray:
        """The weight decompressed, in the table's float type."""
        if COMPRESSIONS[self.storage] is None:
            return self.values.astype(self.table.dtype) * self.table
        channels = np.moveaxis(self.values, self.axis, 0)
        groups = channels.reshape(self.table.shape[0], -1).astype(np.intp)
        picked = np.take_along_axis(self.table, groups, axis=1)
        return np.moveaxis(picked.reshape(channels.shape), 0, self.axis)

    def same(self, other: "Compressed") -> bool:
        """The same storage, the same values and tables, bit for bit."""
        return self.storage == other.storage and all(
            mine.dtype == theirs.dtype and mine.shape == theirs.shape and mine.tobytes() == theirs.tobytes()
            for mine, theirs in ((self.values, other.values), (self.table, other.table)))

    def describe(self) -> str:
        return f"{self.storage} {list(self.values.shape)}, {self.table.dtype} {self.kind}"

    @property
    def kind(self) -> str:
        return "scales" if COMPRESSIONS[self.storage] is None else "palettes"


def compressible(shape: tuple[int, ...]) -> bool:
    """Whether a matmul weight of this shape is compressed: a matrix of at least MIN_ELEMENTS elements."""
    return len(shape) == 2 and int(np.prod(shape)) >= MIN_ELEMENTS


def group_channels(channels: int) -> int:
    """How many output channels share a palette: GROUP_CHANNELS, or the largest divisor of `channels` below it."""
    return max(size for size in range(1, min(GROUP_CHANNELS, channels) + 1) if channels % size == 0)


def compress(weight: np.ndarray, storage: str, axis: int, dtype: type = np.float16) -> Compressed:
    """`weight` (float) compressed as `storage`, output channels along `axis`, tables in `dtype`."""
    if storage not in COMPRESSIONS:
        raise ValueError(f"no compression {storage!r} (offered: {', '.join(COMPRESSIONS)})")
    bits = COMPRESSIONS[storage]
    wide = np.asarray(weight, np.float64)
    if bits is None:
        return _quantised(wide, axis, np.dtype(dtype))
    return _palettized(wide, storage, bits, axis, np.dtype(dtype))


def _quantised(weight: np.ndarray, axis: int, dtype: np.dtype) -> Compressed:
    others = tuple(a for a in range(weight.ndim) if a != axis % weight.ndim)
    largest = np.abs(weight).max(axis=others, keepdims=True)
    scale = (largest / INT8_LEVELS).astype(dtype)
    while (short := scale.astype(np.float64) * INT8_LEVELS < largest).any():  # rounded down: up one step, so no
        scale = np.where(short, np.nextafter(scale, dtype.type(np.inf)), scale)  # level passes ±127
    scale[scale == 0] = 1  # a channel of zeros: any scale gives q = 0
    levels = np.clip(np.rint(weight / scale.astype(np.float64)), -INT8_LEVELS, INT8_LEVELS)
    return Compressed("int8", axis % weight.ndim, levels.astype(np.int8), scale)


def _palettized(weight: np.ndarray, storage: str, bits: int, axis: int, dtype: np.dtype) -> Compressed:
    channels = np.moveaxis(weight, axis, 0)
    groups = channels.reshape(channels.shape[0] // group_channels(channels.shape[0]), -1)
    tables = np.empty((groups.shape[0], 2 ** bits), dtype)
    indices = np.empty(groups.shape, np.uint8)
    for g, values in enumerate(groups):
        tables[g] = _kmeans(np.sort(values), 2 ** bits).astype(dtype)  # rounding keeps the order
        indices[g] = nearest(values, tables[g])
    return Compressed(storage, axis % weight.ndim, np.moveaxis(indices.reshape(channels.shape), 0, axis), tables)


def lut_shape(shape: tuple[int, ...], axis: int, bits: int) -> tuple[int, ...]:
    """The rank-(K + 2) palette tensor of a lutB weight of `shape` (K axes), output channels along `axis`, as
    Core ML's constexpr_lut_to_dense and Core AI's lut_to_dense take it: one palette per group of channels,
    [.., groups at `axis`, .., 2**B, 1]."""
    return tuple(size // group_channels(size) if a == axis else 1 for a, size in enumerate(shape)) + (2 ** bits, 1)


def read_int8(data: np.ndarray, scale: np.ndarray) -> Compressed:
    """An int8 weight as a dequantising op holds it (Core ML's constexpr_blockwise_shift_scale, Core AI's
    blockwise_shift_scale, no offset): its channel axis is the one its scale is not 1 along."""
    data = np.asarray(data, np.int8)
    axis = next(a for a in range(data.ndim) if scale.shape == tuple(size if b == a else 1
                                                                     for b, size in enumerate(data.shape)))
    return Compressed("int8", axis, data, np.asarray(scale))


def read_lut(indices: np.ndarray, lut: np.ndarray) -> Compressed:
    """A palettized weight as a palette-lookup op holds it (`lut_shape`)."""
    indices, bits = np.asarray(indices, np.uint8), int(np.log2(lut.shape[-2]))
    axis = next(a for a in range(indices.ndim) if lut.shape == lut_shape(indices.shape, a, bits))
    return Compressed(f"lut{bits}", axis, indices, np.asarray(lut).reshape(-1, 2 ** bits))


def nearest(values: np.ndarray, table: np.ndarray) -> np.ndarray:
    """The index of the entry of a sorted `table` nearest to each value (the lower one on a tie)."""
    entries = table.astype(np.float64)
    return np.searchsorted((entries[:-1] + entries[1:]) / 2, values, side="left").astype(np.uint8)


def _kmeans(ordered: np.ndarray, k: int) -> np.ndarray:
    """k centroids of sorted values, sorted: the distinct values where there are at most k (exact), else Lloyd's
    iterations from the quantiles. In 1-D each cluster is a run of the sorted values, so a step is a search of
    the midpoints and a difference of cumulative sums."""
    distinct = np.unique(ordered)
    if distinct.size <= k:
        return np.concatenate([distinct, np.repeat(distinct[-1:], k - distinct.size)])
    centroids = np.quantile(ordered, (np.arange(k) + 0.5) / k)
    sums = np.concatenate([[0.0], np.cumsum(ordered)])
    for _ in range(KMEANS_ITERATIONS):
        edges = np.concatenate([[0], np.searchsorted(ordered, (centroids[:-1] + centroids[1:]) / 2), [ordered.size]])
        counts = np.diff(edges)
        means = (sums[edges[1:]] - sums[edges[:-1]]) / np.maximum(counts, 1)
        updated = np.where(counts > 0, means, centroids)  # an empty cluster keeps its place (order is kept)
        if np.array_equal(updated, centroids):
            break
        centroids = updated
    return centroids


__all__ = ["COMPRESSIONS", "Compressed", "GROUP_CHANNELS", "MIN_ELEMENTS", "compress", "compressible",
           "group_channels", "lut_shape", "nearest", "read_int8", "read_lut"]
