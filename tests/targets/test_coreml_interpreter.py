"""The MIL interpreter, on programs hrmc reads itself (program.py), against its slow reference: coremltools'
reader, every op rebuilt through coremltools' builder (coreml_builder_replay.py). The same bits, on saved
packages of every flavour and weight storage, on a trained fixture, and op by op on random tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hrmc.cli import main
from hrmc.errors import InputError
from hrmc.hrm_ref import HRM, build_preset, random_batch
from hrmc.targets import coreml
from hrmc.targets.coreml._coremltools import Function, mb, mil_types
from hrmc.targets.coreml.interpreter import (FLOAT16_PATTERNS, KERNELS, _float16_sum, _sigmoid, _silu, _wide,
                                             interpret)
from hrmc.targets.coreml.runtime import saved_program
from tests.targets.coreml_builder_replay import builder_replay, coremltools_program


def feed_for(function: Function, model: HRM, seed: int = 0) -> dict[str, np.ndarray]:
    """A function's inputs: the model's random batch of puzzles, and (step and chunk functions) a carry: standard
    normal states, step counts and halted flags of 0 or 1."""
    rng, rows = np.random.default_rng(seed), next(iter(function.inputs.values())).shape[0]
    feed = {name: value.numpy().astype(np.int32) for name, value in random_batch(model.config, rows, seed=seed).items()}
    floats = {mil_types.fp16: np.float16, mil_types.fp32: np.float32}
    for name, var in function.inputs.items():
        if name not in feed:
            feed[name] = (rng.standard_normal(var.shape).astype(floats[var.dtype]) if var.dtype in floats
                          else rng.integers(0, 2, var.shape).astype(np.int32))
    return {name: feed[name] for name in function.inputs}


def assert_identical(package: Path, model: HRM, roles: tuple[str, ...] | None = None) -> None:
    """Every function of a package (or those of `roles`), interpreted and rebuilt op by op: the same outputs, bit
    for bit, in the same types; and the float32 replay of the range check computes only float32."""
    for role, function in coreml.package_functions(package).items():
        if roles is not None and role not in roles:
            continue
        program = saved_program(package, function.name)
        feed = feed_for(program, model)
        interpreted, rebuilt = interpret(program, feed), builder_replay(coremltools_program(package, function.name), feed)
        assert interpreted.keys() == rebuilt.keys()
        for name, value in interpreted.items():
            assert value.dtype == rebuilt[name].dtype and value.shape == rebuilt[name].shape, (role, name)
            assert np.array_equal(value, rebuilt[name], equal_nan=True), (package.name, role, name)
        widened = interpret(program, feed, float32=True)
        assert not any(value.dtype == np.float16 for value in widened.values())


def test_the_interpreter_gives_the_rebuilds_bits_on_a_step_function(tiny, tiny_export: Path, tmp_path: Path) -> None:
    """tiny's ane step function alone (the whole packages below are heavy)."""
    from hrmc.passes import lower_onnx

    step = lower_onnx(tiny_export, tmp_path / "t.onnx", "fused").step_path
    assert_identical(coreml.lower_coreml({"step": step}, tmp_path / "step.mlpackage", "ane", 2, "t.onnx"), tiny)


@pytest.mark.heavy
@pytest.mark.parametrize("target, extra", [("ane", ["--chunk", "2"]), ("coreml", [])])
def test_the_interpreter_gives_the_rebuilds_bits(tiny, tiny_export: Path, tmp_path: Path, target: str,
                                                 extra: list[str]) -> None:
    """tiny at batch 2: the ane package with a 2-step chunk function, the float32 coreml package."""
    package = tmp_path / f"{target}.mlpackage"
    assert main(["lower", "--target", target, "--onnx-model", str(tiny_export), "--policy", "q-halt", "--batch", "2",
                 "-o", str(package), *extra]) == 0
    assert_identical(package, tiny)


@pytest.mark.heavy
@pytest.mark.parametrize("storage", ["int8", "lut4", "float16x2"])
def test_the_interpreter_gives_the_rebuilds_bits_for_every_weight_storage(tiny, tiny_export: Path, tmp_path: Path,
                                                                          storage: str) -> None:
    """The step function, which reads every weight as each function does (the other functions' ops: above)."""
    package = tmp_path / f"{storage}.mlpackage"
    assert main(["lower", "--target", "ane", "--weights", storage, "--onnx-model", str(tiny_export), "--policy",
                "q-halt", "--batch", "2", "-o", str(package)]) == 0
    assert_identical(package, tiny, roles=("step",))


@pytest.mark.heavy
def test_the_interpreter_gives_the_rebuilds_bits_on_a_trained_fixture(tmp_path: Path) -> None:
    package = tmp_path / "sudoku4.mlpackage"
    assert main(["lower", "--target", "ane", "--preset", "sudoku4", "--batch", "2", "-o", str(package)]) == 0
    assert_identical(package, build_preset("sudoku4"))


def test_an_op_without_a_kernel_is_named() -> None:
    with Function({"x": mb.placeholder(shape=(2, 3))}) as function:
        function.set_outputs([mb.erf(x=function.inputs["x"])])
    with pytest.raises(InputError, match="MIL op erf .*no kernel"):
        interpret(function, {"x": np.zeros((2, 3), np.float32)})


def test_the_kernels_run_with_torch_on_one_thread_and_leave_its_setting_as_it_was(monkeypatch) -> None:
    """torch's conversions between numpy's BLAS calls, on two threads, doubled trm-maze's replay on two cores."""
    with Function({"x": mb.placeholder(shape=(2, 3), dtype=mil_types.fp16)}) as function:
        function.set_outputs([mb.mul(x=function.inputs["x"], y=np.float16(2.0))])
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)  # the user's setting, whatever the machine's cores
    seen, settings = [], []
    monkeypatch.setattr(torch, "set_num_threads", settings.append)
    interpret(function, {"x": np.ones((2, 3), np.float16)}, observe=lambda op, results: seen.append(list(settings)))
    assert seen == [[1]] and settings == [1, 3]  # one thread while the op ran, then the user's three again


@pytest.mark.parametrize("name", ["exp", "sqrt", "tanh", "sigmoid", "silu", "sin", "cos", "sign", "floor", "abs"])
def test_a_float16_function_looked_up_is_numpy_computing_it(name: str) -> None:
    """Every float16 bit pattern, NaNs included, through the op's kernel (a table): numpy's bits on a contiguous
    array in any order (the loop coremltools' value_inference takes on the arrays it makes). numpy's other loop
    (one element, a strided array) is not always the same function: on AVX-512 machines its scalar exp differs
    from its SIMD exp by one float16 ulp on 4 patterns (sin and cos on 2), and only there may the table differ
    (sigmoid and silu carry exp's ulp through their float16 arithmetic: two at most)."""
    kernel, patterns = KERNELS[name], FLOAT16_PATTERNS
    function = {"sigmoid": _sigmoid, "silu": _silu}.get(name) or getattr(np, name)
    order = np.random.default_rng(0).permutation(patterns.size)
    with np.errstate(all="ignore"):
        contiguous = np.asarray(function(np.ascontiguousarray(patterns[order])), np.float16)
        each = np.array([function(value) for value in patterns], np.float16)
        strided = np.asarray(function(np.repeat(patterns, 2)[::2]), np.float16)
    looked_up = kernel(patterns.reshape(256, 256)).reshape(-1)
    assert looked_up.dtype == np.float16
    assert np.array_equal(looked_up[order].view(np.uint16), contiguous.view(np.uint16))
    for other in (each, strided):
        differs = looked_up.view(np.uint16) != other.view(np.uint16)
        assert not (np.isnan(looked_up) != np.isnan(other)).any()
        differs &= ~np.isnan(other)
        assert differs.mean() < 1e-3  # a few patterns, where numpy's own loops disagree
        assert (np.abs(looked_up[differs].view(np.uint16).astype(int) - other[differs].view(np.uint16).astype(int))
                <= 2).all()  # one ulp of exp, sin or cos; two once sigmoid's and silu's float16 steps carry it


@settings(max_examples=200, deadline=None)
@given(data=st.data(), rows=st.integers(1, 3), length=st.integers(1, 2000), axis=st.sampled_from([-1, 0]))
def test_a_float16_sum_from_float32_is_numpys_float16_sum(data, rows: int, length: int, axis: int) -> None:
    """Long rows (numpy's pairwise blocks are 8 and 128 long), any scale, infinities and NaN among them."""
    scale = float(np.float16(data.draw(st.sampled_from([1e-6, 1e-2, 1.0, 60.0, 6e4]))))
    finite = st.floats(-scale, scale, width=16)
    special = st.sampled_from([np.inf, -np.inf, np.nan, -0.0])
    values = data.draw(hnp.arrays(np.float16, (rows, length), elements=finite | special if length < 50 else finite))
    with np.errstate(all="ignore"):
        expected, got = np.sum(values, axis=axis, keepdims=True), _float16_sum(_wide(values), axis)
    assert got.dtype == np.float16 and np.array_equal(np.isnan(got), np.isnan(expected))
    assert np.array_equal(bits_but_nan(got), bits_but_nan(expected))  # a NaN's payload is the interpreter's own


def bits_but_nan(values: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(values), 0, values.view(np.uint16))


def scalar(like, value: float) -> np.ndarray:
    return np.array(value, np.float16 if like.dtype == mil_types.fp16 else np.float32)


BINARY = ["add", "sub", "mul", "real_div", "maximum", "minimum", "greater", "less_equal", "equal"]
UNARY = {"sqrt": lambda x: mb.sqrt(x=mb.abs(x=x)), "exp": lambda x: mb.exp(x=x), "tanh": lambda x: mb.tanh(x=x),
         "sigmoid": lambda x: mb.sigmoid(x=x), "inverse": lambda x: mb.inverse(x=x, epsilon=scalar(x, 0.0)),
         "softmax": lambda x: mb.softmax(x=x, axis=-1), "sign": lambda x: mb.sign(x=x),
         "reduce_mean": lambda x: mb.reduce_mean(x=x, axes=[-1], keep_dims=True),
         "reduce_sum": lambda x: mb.reduce_sum(x=x, axes=[0], keep_dims=False),
         "reduce_max": lambda x: mb.reduce_max(x=x, axes=[-1], keep_dims=False),
         "reduce_argmax": lambda x: mb.reduce_argmax(x=x, axis=-1, keep_dims=True),
         "cumsum": lambda x: mb.cumsum(x=x, axis=-1, reverse=True),
         "transpose": lambda x: mb.transpose(x=x, perm=list(range(x.rank))[::-1]),
         "expand_dims": lambda x: mb.expand_dims(x=x, axes=[0, -1]),
         "tile": lambda x: mb.tile(x=x, reps=[2] * x.rank),
         "concat": lambda x: mb.concat(values=[x, mb.mul(x=x, y=x)], axis=-1),
         "split": lambda x: mb.split(x=mb.concat(values=[x, x], axis=0), num_splits=2, axis=0)[1],
         "slice_by_index": lambda x: mb.slice_by_index(x=x, begin=[0] * x.rank, end=[1] * x.rank, end_mask=[True] * x.rank),
         "pad": lambda x: mb.pad(x=x, pad=np.array([1, 0] * x.rank, np.int32), constant_val=scalar(x, 0.5)),
         "cast": lambda x: mb.cast(x=x, dtype="int32" if x.dtype != mil_types.int32 else "fp32"),
         "gather": lambda x: mb.gather(x=x, indices=np.array([0, 0], np.int32), axis=0)}

shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)
dtypes = st.sampled_from([np.float16, np.float32])


@settings(max_examples=60, deadline=None)
@given(data=st.data(), dtype=dtypes, shape=shapes)
def test_each_kernel_gives_the_value_inference_bits(data, dtype, shape) -> None:
    """One op on random tensors (infinities and NaN among them): interpreted as coremltools infers it."""
    elements = st.floats(width=16 if dtype == np.float16 else 32, allow_nan=True, allow_infinity=True)
    x, y = (data.draw(hnp.arrays(dtype, shape, elements=elements)) for _ in range(2))
    name = data.draw(st.sampled_from(BINARY + sorted(UNARY)))
    mil_dtype = mil_types.fp16 if dtype == np.float16 else mil_types.fp32
    with Function({"x": mb.placeholder(shape=shape, dtype=mil_dtype),
                   "y": mb.placeholder(shape=shape, dtype=mil_dtype)}) as function:
        x_var, y_var = function.inputs["x"], function.inputs["y"]
        result = getattr(mb, name)(x=x_var, y=y_var) if name in BINARY else UNARY[name](x_var)
        function.set_outputs([mb.identity(x=result)])
    feed = {"x": x, "y": y}
    interpreted, rebuilt = interpret(function, feed), builder_replay(function, feed)
    for key, value in interpreted.items():
        assert value.dtype == rebuilt[key].dtype and np.array_equal(value, rebuilt[key], equal_nan=True), name
