"""The Core ML target: packages, the op table's errors, and parity through the MIL replay (Linux)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from hrmc.targets import coreml
from tests.helpers import assert_one_line_error, assert_second_gate_converts_nothing, hrmc

ANE = coreml.FLAVOURS["ane"]


def test_lower_writes_packages_without_control_flow(capsys, tiny_export: Path, tmp_path: Path) -> None:
    code, out, _ = hrmc(capsys, "lower", "--target", "coreml", "--onnx-model", str(tiny_export), "--policy", "q-halt",
                        "--batch", "2", "-o", str(tmp_path / "t.mlpackage"))
    assert code == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["t.mlpackage"]
    functions = coreml.package_functions(tmp_path / "t.mlpackage")
    assert {role: f.name for role, f in functions.items()} == {"static": "solve", "step": "step", "init": "init"}
    ops = coreml.op_counts(tmp_path / "t.mlpackage")
    assert ops["matmul"] > 0 and not {"while_loop", "cond"} & set(ops)
    assert functions["static"].record.flavour == "coreml" and functions["step"].batch == 2
    assert functions["static"].record.outputs[0] == "logits"
    assert coreml.op_counts(tmp_path / "t.mlpackage", "step")["matmul"] < ops["matmul"]


def test_a_missing_op_lowering_names_the_op_and_leaves_nothing(capsys, tiny_export: Path, tmp_path: Path,
                                                               monkeypatch) -> None:
    monkeypatch.delitem(coreml.OPS, "hrmc.Rope")
    code, _, err = hrmc(capsys, "lower", "--target", "ane", "--onnx-model", str(tiny_export), "--policy", "q-halt",
                        "-o", str(tmp_path / "t.mlpackage"))
    assert_one_line_error(code, err, "no MIL lowering for op 'hrmc.Rope'", "node '")
    assert list(tmp_path.iterdir()) == []


def test_coreml_passes_the_step_gate_under_mil_semantics(capsys, tiny_export: Path) -> None:
    code, out, _ = hrmc(capsys, "parity", "torch", "coreml", "--onnx-model", str(tiny_export), "--policy", "q-halt",
                        "--batch", "2")
    assert code == 0 and out.rstrip().endswith("PASS") and "MIL reference semantics" in out, out


def test_integer_division_and_cumsum_follow_onnx_under_mil_semantics() -> None:
    """ONNX integer Div truncates toward zero where MIL's floor_div floors; CumSum keeps its flags."""
    ints = [helper.make_tensor_value_info(name, TensorProto.INT32, ["batch", 4]) for name in ("x", "y", "q", "c")]
    graph = helper.make_graph([helper.make_node("Div", ["x", "y"], ["q"]),
                               helper.make_node("CumSum", ["x", "axis"], ["c"], reverse=1)],
                              "g", ints[:2], ints[2:], [helper.make_tensor("axis", TensorProto.INT64, [], [1])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    feed = {"x": np.array([[7, -7, 7, -7], [0, 5, -9, 9]], np.int32),
            "y": np.array([[2, 2, -2, -2], [3, -5, 4, -4]], np.int32)}
    expected = ort.InferenceSession(proto.SerializeToString()).run(None, feed)
    program = coreml.build_program({"main": ir.serde.deserialize_model(proto)}, 2, "g.onnx").program
    replayed = coreml.replay(program.functions["main"], feed)
    np.testing.assert_array_equal(replayed["q"], expected[0])
    np.testing.assert_array_equal(replayed["c"], expected[1])


def test_float16_pairs_give_matmuls_their_float32_weights() -> None:
    """float16x2: x·W (+ b) with W (and b) as float16 pairs (hi, lo) is x·W (+ b) rounded once to float16;
    one float16 per weight is not."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((64, 48)).astype(np.float32) / 8
    x = rng.standard_normal((3, 64)).astype(np.float16)
    bias = (rng.standard_normal(48) * 8).astype(np.float32)  # |x·W + b| up to ~30, where float16's step is 2⁻⁶
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"]),
                               helper.make_node("Gemm", ["x", "wt"], ["z"], transB=1),
                               helper.make_node("Gemm", ["x", "wt", "b"], ["zb"], transB=1),
                               helper.make_node("Gemm", ["x", "w", "b"], ["yb"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 64])],
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, [3, 48])
                               for name in ("y", "z", "zb", "yb")],
                              [helper.make_tensor("w", TensorProto.FLOAT, weight.shape, weight.ravel()),
                               helper.make_tensor("wt", TensorProto.FLOAT, weight.T.shape, weight.T.ravel()),
                               helper.make_tensor("b", TensorProto.FLOAT, bias.shape, bias)])
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    product = x.astype(np.float64) @ weight.astype(np.float64)
    exact = {"y": product, "z": product, "zb": product + bias, "yb": product + bias}
    replayed = {pairs: coreml.replay(coreml.build_program({"main": model}, 3, "g.onnx", ANE, weight_pairs=pairs)
                                     .program.functions["main"], {"x": x}) for pairs in (False, True)}
    for name, value in exact.items():  # pairs, with the bias inside the one matmul: one rounding of the output
        ulps = np.abs(replayed[True][name].astype(np.float64) - value) / np.spacing(np.abs(value).astype(np.float16))
        assert ulps.max() <= 0.5 + 1e-3, name
        assert not np.array_equal(replayed[False][name], value.astype(np.float16)), name


def test_ane_float16_pairs_are_closer_to_float32_on_every_output(tiny, step_graph: Path) -> None:
    from hrmc import hrm_ref
    from hrmc.parity.executors import TorchExecutor
    from hrmc.parity.gate import psnr
    from hrmc.targets.host_loop import carry_feed, split_step

    batch = hrm_ref.random_batch(tiny.config, 8, seed=0)
    carry = hrm_ref.initial_carry(tiny, batch)
    reference = TorchExecutor()
    reference.prepare(tiny, "q-halt", None, batch)
    expected = reference.step(carry, batch)
    feed = {name: value.astype(np.float16) if value.dtype.kind == "f" else value.astype(np.int32)
            for name, value in carry_feed(carry, batch).items()}
    model = ir.load(str(step_graph))
    db = {}
    for pairs in (False, True):
        main = coreml.build_program({"main": model}, 8, "t.onnx", ANE, weight_pairs=pairs).program.functions["main"]
        outputs = split_step(coreml.replay(main, feed), chunked=True)
        outputs["q"], expected["q"] = (np.concatenate([arrays["q_halt_logits"], arrays["q_continue_logits"]])
                                       for arrays in (outputs, expected))
        db[pairs] = {name: psnr(np.asarray(outputs[name], np.float32), expected[name])
                     for name in ("z_H", "z_L", "logits", "q")}
    # measured: +0.6 dB on z_H, +0.4 on z_L, +1.4 on logits, +2.0 on the q values
    assert all(db[True][name] > db[False][name] for name in db[True]), db


@pytest.mark.heavy  # a minute and a half
def test_ane_is_gated_on_the_float16_contract(capsys, tiny_export: Path) -> None:
    """States and per-token outputs by the float16 rule (RMSE against hrm_ref float64 ≤ 2 × hrm_ref float16's),
    and --psnr's absolute floor where asked; the q values by their absolute error against the q scale; every
    decision compared: the default contract passes tiny's package."""
    code, out, _ = hrmc(capsys, "parity", "torch", "ane", "--onnx-model", str(tiny_export), "--policy", "q-halt",
                        "--batch", "2", "--psnr", "68", "--json")
    report = json.loads(out)
    assert report["psnr_db"] == 68
    assert "float16" in report["executors"][1] and "MIL reference semantics" in report["executors"][1]
    rows = [row for row in report["rows"] if row["check"] == "A vs B"]
    by_rule = [row for row in rows if row["gated"] in ("ratio", "rounding")]
    by_error = [row for row in rows if row["gated"] == "abs"]
    assert {row["output"] for row in by_error} == {"q_halt_logits", "q_continue_logits"}
    assert {row["output"] for row in by_rule} == {"z_H", "z_L", "logits"}
    assert all(row["passed"] == (row["needed"] <= row["limit"] and row["psnr"] >= 68) for row in by_rule)
    assert all(row["passed"] == (row["max_abs"] <= row["limit"]) and row["psnr"] is not None for row in by_error)
    assert all(row["needed"] <= row["limit"] for row in by_rule)  # within the rule at every step
    assert not all(row["passed"] for row in by_rule)  # 68 dB is above what float16 reaches on every step
    assert max(row["max_abs"] for row in rows) > 1e-5  # float16 really ran: float32 would be within 1e-5
    # beside each row, hrm_ref float16's PSNR against float64 and the ratio of the errors: float16's own
    assert all(55 < row["float16_psnr"] < np.inf and 0.5 < row["ratio"] <= 2 for row in by_rule)
    assert report["answers"]["compared"] == 2 * 16 * report["budget"] and report["halting"]["compared"] > 0
    assert code == 1 and not report["passed"]
    code, out, _ = hrmc(capsys, "parity", "torch", "ane", "--onnx-model", str(tiny_export), "--policy", "q-halt",
                        "--batch", "2")
    assert code == 0 and out.rstrip().endswith("PASS"), out
    assert " ratio " in out and "x16 PSNR" in out and "≥60 dB" in out


@pytest.mark.heavy
def test_coreml_passes_the_trajectory_gate(capsys, tiny_export: Path) -> None:
    code, out, _ = hrmc(capsys, "parity", "torch", "coreml", "--onnx-model", str(tiny_export), "--policy", "q-halt",
                        "--batch", "2", "--mode", "trajectory")
    assert code == 0 and out.rstrip().endswith("PASS"), out


@pytest.fixture(scope="module")
def step_graph(tiny_export: Path, tmp_path_factory) -> Path:
    """tiny's one-step graph after the `mlx` pipeline: what the Core ML lowering starts from."""
    from hrmc.passes import lower_onnx

    return lower_onnx(tiny_export, tmp_path_factory.mktemp("lowered") / "t.onnx", "fused").step_path


def test_two_lowerings_give_byte_identical_packages(step_graph: Path, tmp_path: Path) -> None:
    """Whatever their names: a package records nothing of its own name, nor of the folder it was written in."""
    contents = []
    for folder, name in (("a", "t"), ("b", "HRMSolver")):
        (tmp_path / folder).mkdir()
        package = coreml.lower_coreml({"step": step_graph}, tmp_path / folder / f"{name}.mlpackage", "ane", 1, "t.onnx")
        contents.append({p.relative_to(package): p.read_bytes() for p in sorted(package.rglob("*")) if p.is_file()})
    assert contents[0] == contents[1] and len(contents[0]) == 6  # spec, weights, manifest, hrmc's parts, origins, values
    assert not any(b"HRMSolver" in data or str(tmp_path).encode() in data for data in contents[1].values())


def test_attention_per_head_computes_what_the_batched_heads_do(tiny, step_graph: Path) -> None:
    """The ANE flavour's attention (one [B, S, D] matmul pair per head, no transposes) against the batched one."""
    from hrmc import hrm_ref
    from hrmc.targets.host_loop import carry_feed

    batch = hrm_ref.random_batch(tiny.config, 2, seed=5)
    feed = carry_feed(hrm_ref.initial_carry(tiny, batch), batch)
    model = ir.load(str(step_graph))
    flavours = {apart: dataclasses.replace(coreml.FLAVOURS["coreml"], heads_apart=apart) for apart in (False, True)}
    programs = {apart: coreml.build_program({"main": model}, 2, "t.onnx", flavour).program.functions["main"]
                for apart, flavour in flavours.items()}
    types = {apart: [op.op_type for op in main.operations] for apart, main in programs.items()}
    assert "transpose" in types[False] and "transpose" not in types[True]
    batched, per_head = (coreml.replay(programs[apart], feed) for apart in (False, True))
    for name, value in batched.items():
        np.testing.assert_allclose(per_head[name], value, rtol=1e-5, atol=1e-5, err_msg=name)


def test_inspect_reports_ane_readiness(capsys, step_graph: Path, tmp_path: Path) -> None:
    package = coreml.lower_coreml({"step": step_graph}, tmp_path / "s.mlpackage", "ane", 2, "t.onnx")
    written = {p: p.read_bytes() for p in package.rglob("*") if p.is_file()}
    code, out, _ = hrmc(capsys, "inspect", str(package), "--json")
    assert {p: p.read_bytes() for p in package.rglob("*") if p.is_file()} == written  # reading changes nothing
    report = json.loads(out)
    assert code == 0 and report["flavour"] == "ane" and report["ops"]["matmul"] > 0
    assert "while_loop" not in report["ops"] and not any("dynamic" in k for k in report["not_on_ane"])
    assert any("embedding lookup" in k for k in report["not_on_ane"])  # the token embedding
    # one float16 per weight by default: the float16 parameter bytes (within 5 %); float16 pairs, the float32 bytes
    # less half the token embedding's (one float16)
    fp32_parameters = 4 * sum(t.const_value.size for t in ir.load(str(step_graph)).graph.initializers.values())
    assert report["weights"] == "float16" and report["weight_bytes_per_float16_parameter"] <= 1.05
    assert fp32_parameters * 0.95 / 2 <= report["weight_bytes"] <= fp32_parameters * 1.05 / 2
    pairs = coreml.lower_coreml({"step": step_graph}, tmp_path / "pairs.mlpackage", "ane", 2, "t.onnx",
                                weights="float16x2")
    pairs_bytes = (pairs / "Data" / "com.apple.CoreML" / "weights" / "weight.bin").stat().st_size
    assert fp32_parameters * 0.95 <= pairs_bytes <= fp32_parameters * 1.05
    code, _, err = hrmc(capsys, "inspect", str(tmp_path / "missing.mlpackage"))
    assert_one_line_error(code, err, "expected an .mlpackage")
    copy = shutil.copytree(package, tmp_path / "HRMSolver.mlpackage")  # renamed: the same package
    assert hrmc(capsys, "inspect", str(copy))[0] == 0
    gutted = copy / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    gutted.write_bytes(gutted.read_bytes()[:1000])  # the copy's own files are the ones verified
    assert_one_line_error(*hrmc(capsys, "inspect", str(copy))[::2], str(gutted), "does not match the sha256")
    weights = package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    weights.write_bytes(weights.read_bytes()[:-4096])  # truncated: inspect verifies every part first
    assert_one_line_error(*hrmc(capsys, "inspect", str(package))[::2], "weight.bin: does not match the sha256")
    weights.unlink()
    assert_one_line_error(*hrmc(capsys, "inspect", str(package))[::2], "weight.bin: missing")
    (package / "Data" / "com.hrmc" / "parts.json").unlink()  # a package without hrmc's record: refused
    assert_one_line_error(*hrmc(capsys, "inspect", str(package))[::2], "no record of its parts")
    assert_one_line_error(*hrmc(capsys, "inspect", str(package), "--unrecorded")[::2],  # unless asked: read in full
                          "weight.bin: missing (the package's weights)")
    (package / "Data" / "com.apple.CoreML" / "model.mlmodel").write_bytes(b"\xff not a spec")
    code, _, err = hrmc(capsys, "inspect", str(package), "--unrecorded")
    assert_one_line_error(code, err, "model.mlmodel: not a Core ML model spec")
    (package / "Data" / "com.apple.CoreML" / "model.mlmodel").unlink()
    code, _, err = hrmc(capsys, "inspect", str(package), "--unrecorded")
    assert_one_line_error(code, err, "model.mlmodel (the model spec", "Manifest.json names) not found")


def _matmul_graph(weight: np.ndarray, small: np.ndarray, bias: np.ndarray) -> ir.Model:
    """x·W, x·Wᵀᵀ + b (Gemm, transB) and x·S: a weight large enough to compress, read both ways, and one too small."""
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"]),
                               helper.make_node("Gemm", ["x", "wt", "b"], ["z"], transB=1),
                               helper.make_node("MatMul", ["x", "s"], ["u"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 64])],
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, [3, n])
                               for name, n in (("y", 48), ("z", 48), ("u", 16))],
                              [helper.make_tensor("w", TensorProto.FLOAT, weight.shape, weight.ravel()),
                               helper.make_tensor("wt", TensorProto.FLOAT, weight.T.shape, weight.T.ravel()),
                               helper.make_tensor("b", TensorProto.FLOAT, bias.shape, bias),
                               helper.make_tensor("s", TensorProto.FLOAT, small.shape, small.ravel())])
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


@pytest.mark.parametrize("storage", ["int8", "lut6", "lut4"])
@pytest.mark.parametrize("flavour", ["ane", "coreml"])
def test_compressed_weights_are_constexpr_ops_that_the_replay_decompresses_as_hrmc_does(flavour: str,
                                                                                         storage: str) -> None:
    """--weights int8|lut6|lut4: a compressible matmul weight (3,072 elements) becomes one iOS 18 constexpr
    dequantisation op over its compressed constants, read as stored (W) or transposed (Gemm's Wᵀ); one of 1,024
    elements stays a plain constant. The replay (coremltools' own decompress, MIL's semantics) computes exactly
    what the same program computes with hrmc's decompressed weights as plain constants."""
    from hrmc.hrm_ref.compression import compress

    rng = np.random.default_rng(1)
    weight = (rng.standard_normal((64, 48)) / 8).astype(np.float32)
    small = (rng.standard_normal((64, 16)) / 8).astype(np.float32)
    bias = rng.standard_normal(48).astype(np.float32)
    chosen = coreml.FLAVOURS[flavour]
    dtype = np.float16 if flavour == "ane" else np.float32
    program = coreml.build_program({"main": _matmul_graph(weight, small, bias)}, 3, "g.onnx", chosen,
                                   compression=storage).program
    main = program.functions["main"]
    assert main.opset_version == coremltools_target().iOS18
    decompressing = [op for op in main.operations if op.op_type.startswith("constexpr_")]
    assert [op.op_type for op in decompressing] == ["constexpr_blockwise_shift_scale" if storage == "int8"
                                                    else "constexpr_lut_to_dense"] * 2  # W, and Wᵀ apart
    dense = {axis: compress(array, storage, axis, dtype).dense().astype(np.float32)
             for axis, array in ((1, weight), (0, weight.T))}
    plain = coreml.build_program({"main": _matmul_graph(dense[1], small, bias)}, 3, "g.onnx", chosen).program
    x = rng.standard_normal((3, 64)).astype(dtype)
    replayed, expected = (coreml.replay(p.functions["main"], {"x": x}) for p in (program, plain))
    np.testing.assert_array_equal(dense[0], dense[1].T)  # the two orientations compress alike
    for name in ("y", "u"):
        np.testing.assert_array_equal(replayed[name], expected[name], err_msg=name)
    # float16 folds a plain weight's bias into its matmul, rounding once; a compressed weight's bias is added after
    # its product is rounded: half a step of the product's and one of the sum's apart at most
    z = np.abs(expected["z"]).astype(np.float64)
    steps = np.spacing((z + np.abs(bias)).astype(dtype)) / 2 + np.spacing(z.astype(dtype))
    assert (np.abs(replayed["z"].astype(np.float64) - expected["z"]) <= steps).all()
    if flavour == "coreml":
        np.testing.assert_array_equal(replayed["z"], expected["z"])


def coremltools_target():
    from hrmc.targets.coreml._coremltools import ct

    return ct.target


@pytest.fixture(scope="module")
def float16_step_package(step_graph: Path, tmp_path_factory) -> Path:
    """tiny's step function, ane, batch 2, one float16 per weight (the default)."""
    return coreml.lower_coreml({"step": step_graph}, tmp_path_factory.mktemp("ane") / "float16.mlpackage", "ane", 2,
                               "t.onnx")


@pytest.mark.parametrize("storage", ["int8", "lut6", "lut4"])
def test_a_compressed_package_keeps_its_weights_compressed(tiny, step_graph: Path, float16_step_package: Path,
                                                            tmp_path: Path, storage: str) -> None:
    """Saved (ct.convert keeps the constexpr ops) and read back: the weight file holds the compressed weights
    (int8: about half the float16 bytes of what it compresses, lut6 3/8, lut4 1/4, plus the float16 weights it does
    not), every one of them hrmc's compression of the model's (the weight check), and the replayed step is the
    model run on its weights as stored: closer to it than to the model's own weights."""
    from hrmc import hrm_ref
    from hrmc.hrm_ref.compression import compress
    from hrmc.parity.executors import TorchExecutor
    from hrmc.parity.gate import psnr
    from hrmc.targets.coreml.runtime import program_constants
    from hrmc.targets.host_loop import carry_feed, split_step
    from hrmc.targets.weights import check_weights

    package = coreml.lower_coreml({"step": step_graph}, tmp_path / f"{storage}.mlpackage", "ane", 2, "t.onnx",
                                  weights=storage)
    plain = float16_step_package
    assert coreml.package_functions(package)["step"].record.weights == storage
    ops = coreml.op_counts(package, "step")
    assert ops["constexpr_blockwise_shift_scale" if storage == "int8" else "constexpr_lut_to_dense"] == 16
    sizes = {p: (p / "Data" / "com.apple.CoreML" / "weights" / "weight.bin").stat().st_size for p in (package, plain)}
    bits = {"int8": 8, "lut6": 6, "lut4": 4}[storage]
    packed = [compress(tiny.state_dict()[name].numpy(), storage, 0) for name in tiny.compressible_weights()]
    saved = sum(p.values.size * (2 - bits / 8) - p.table.nbytes for p in packed)  # float16 bytes less what replaces them
    assert abs(sizes[plain] - sizes[package] - saved) <= 3 * 64 * len(packed)  # each blob aligned to 64 bytes
    # (the step function reads the carry: H_init and L_init are the whole inference's, not stored here)
    initial = [(name, tiny.state_dict()[name].numpy().astype(np.float16)) for name in ("inner.H_init", "inner.L_init")]
    check = check_weights([*program_constants(package), *initial], tiny, package, storage=storage)
    assert storage in check.storages and "float16" in check.storages
    batch = hrm_ref.random_batch(tiny.config, 2, seed=0)
    carry = hrm_ref.initial_carry(tiny, batch)
    feed = {name: value.astype(np.float16) if value.dtype.kind == "f" else value.astype(np.int32)
            for name, value in carry_feed(carry, batch).items()}
    replayed = split_step(coreml.replay(coreml.saved_program(package, "step"), feed), chunked=True)
    db = {}
    for stored in (False, True):
        reference = TorchExecutor()
        reference.prepare(tiny.with_weights_as_stored(storage) if stored else tiny, "q-halt", None, batch)
        expected = reference.step(carry, batch)
        db[stored] = psnr(np.asarray(replayed["z_H"], np.float32), expected["z_H"])
    assert db[True] > 55 and db[True] > db[False] + 3, db


@pytest.mark.heavy  # a chunk package per step: a minute
def test_coreml_chunked_runs_only_the_chunks_needed(tiny, tiny_export: Path) -> None:
    from hrmc import hrm_ref
    from hrmc.parity.executors import make_executor

    batch = hrm_ref.random_batch(tiny.config, 4, seed=3)
    executor = make_executor("coreml-chunked", onnx_model=str(tiny_export), chunk=1)
    executor.prepare(tiny, "q-halt", None, batch)
    trajectory = executor.run(batch)
    reference = hrm_ref.run(tiny, batch, "q-halt")
    assert executor.graph_calls == trajectory["steps"].shape[0] == reference["steps"].shape[0]
    assert (trajectory["steps"][-1] == reference["steps"][-1].numpy()).all()


def test_a_second_gate_without_an_artifact_converts_nothing(capsys, tiny_export: Path, monkeypatch) -> None:
    """The packages a gate makes afresh are cached by the graph they come from (the session's cache): run again,
    nothing is converted, and the verdict is the same."""
    from hrmc.targets.coreml import executors

    assert_second_gate_converts_nothing(capsys, monkeypatch, executors, "lower_coreml", "torch", "ane", "--policy",
                                        "q-halt", "--batch", "3")
