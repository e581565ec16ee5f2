"""`hrmc parity --localize` names the node where a failing step first diverges, in shipped artifacts.

Each artifact test changes one thing in a lowered artifact (a weight, or the code of one op) and asks
--localize for the node: it must be the first node, in graph order, that reads the changed weight, or
the op whose code changed. The artifact no longer matches its record, so the run says so and exits 1.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnx_ir as ir
import pytest
from hypothesis import given, settings, strategies as st

from hrmc.cli import main
from hrmc.hrm_ref import HRM, build_preset
from hrmc.parity.localize import Localization, _walk
from hrmc.passes import lower_onnx
from hrmc.targets.executor import Trace
from tests.helpers import assert_one_line_error

WEIGHT = "inner.L_level.layers.1.self_attn.o_proj.weight"  # the weight changed: read first in H cycle 1, L cycle 1


def localize(capsys, b: str, artifact: Path, export: Path, *model: str) -> tuple[int, dict]:
    capsys.readouterr()  # what lowering printed
    code = main(["parity", "torch", b, "--policy", "q-halt", "--onnx-model", str(export), "--artifact", str(artifact),
                 *model, "--localize", "--json"])
    return code, json.loads(capsys.readouterr().out)


def held(array: np.ndarray, weight: np.ndarray) -> bool:
    """Whether `array` holds `weight` (as stored, or transposed, as the exporter and the lowerings keep it)."""
    return any(array.shape == w.shape and np.array_equal(array, w) for w in (weight, weight.T))


def first_reader(graph_path: Path, weight: np.ndarray) -> str:
    """The first node, in graph order, that reads a constant holding `weight`."""
    graph = ir.load(str(graph_path)).graph
    return next(node.name for node in graph for value in node.inputs
                if value is not None and value.const_value is not None and held(value.const_value.numpy(), weight))


def changed_weight(model: HRM) -> np.ndarray:
    return dict(model.named_parameters())[WEIGHT].detach().numpy()


@pytest.mark.heavy  # the default run keeps the walk's property test and the CLI's pass and usage cases
@pytest.mark.parametrize("preset", ["tiny", "sudoku4"])
def test_localize_names_the_node_reading_a_changed_weight_in_an_onnx_artifact(capsys, preset, exported, tmp_path):
    """On random weights (tiny) and on a trained model (sudoku4, 8 of its held-out puzzles)."""
    export, model = exported(preset), build_preset(preset)
    artifact = tmp_path / "m.static.onnx"
    assert main(["lower", "--target", "onnx", "--policy", "q-halt", "--onnx-model", str(export),
                 "-o", str(artifact)]) == 0
    step = tmp_path / "m.static.step.onnx"
    proto = onnx.load(str(step))
    weight = changed_weight(model)
    tensor = next(t for t in proto.graph.initializer if held(onnx.numpy_helper.to_array(t), weight))
    array = onnx.numpy_helper.to_array(tensor).copy()
    array.flat[70] += 0.05
    tensor.CopyFrom(onnx.numpy_helper.from_array(array, tensor.name))
    onnx.save(proto, str(step))

    code, found = localize(capsys, "static", artifact, export, "--preset", preset, "--batch", "8")
    assert code == 1 and not found["passed"]
    assert found["step"] == 1
    assert found["first"]["node"] == first_reader(step, array)
    assert found["first"]["cycle"] == "H cycle 1, L cycle 1" and found["first"]["layer"] == "L_level.layers.1"
    assert all(not drift["exceeds"] for drift in found["first"]["inputs"])
    assert "held by none of the model's parameters" in found["first"]["weights"][0]
    assert "m.static.step.onnx: does not match the sha256" in found["changed"][0]


def test_localize_passes_where_no_step_fails(capsys, tiny_export):
    code = main(["parity", "torch", "static", "--policy", "q-halt", "--onnx-model", str(tiny_export), "--localize"])
    out = capsys.readouterr().out
    assert code == 0 and out.rstrip().endswith("PASS") and "nothing to localise" in out


def test_localize_is_a_step_mode_check(capsys):
    code = main(["parity", "torch", "static", "--localize", "--mode", "trajectory"])
    assert_one_line_error(code, capsys.readouterr().err, "--localize works in step mode")


@pytest.fixture(scope="module")
def fused_step(tiny_export, tmp_path_factory) -> Path:
    """The step graph of the fused pipeline, made from tiny's export: what MLX and Core ML lower."""
    return lower_onnx(tiny_export, tmp_path_factory.mktemp("fused") / "fused.onnx", "fused").step_path


@pytest.mark.heavy
def test_localize_names_the_node_reading_a_changed_weight_in_an_mlx_folder(capsys, tiny, tiny_export, fused_step,
                                                                           tmp_path):
    import mlx.core as mx

    folder = tmp_path / "tiny-mlx"
    assert main(["lower", "--target", "mlx", "--policy", "q-halt", "--onnx-model", str(tiny_export),
                 "-o", str(folder)]) == 0
    weights = mx.load(str(folder / "weights.safetensors"))
    weight = changed_weight(tiny)
    key = next(key for key, value in weights.items() if held(np.array(value), weight))
    array = np.array(weights[key])
    array.flat[70] += 0.05
    mx.save_safetensors(str(folder / "weights.safetensors"), weights | {key: mx.array(array)})

    code, found = localize(capsys, "mlx", folder, tiny_export)
    assert code == 1 and found["step"] == 1
    assert found["first"]["node"] == first_reader(fused_step, weight)
    assert found["first"]["weights"] == [WEIGHT.removeprefix("inner.")]
    assert "weights.safetensors: does not match the sha256" in found["changed"][0]


@pytest.mark.heavy
def test_localize_names_an_op_whose_mlx_code_was_changed(capsys, tiny_export, tmp_path):
    folder = tmp_path / "tiny-mlx"
    assert main(["lower", "--target", "mlx", "--policy", "q-halt", "--onnx-model", str(tiny_export),
                 "-o", str(folder)]) == 0
    module = folder / "hrm_mlx.py"
    code_text = module.read_text()
    step_class = code_text.index("class Step(")
    line = re.compile(r"^        (\w+) = rope\(", re.M).search(code_text, step_class)
    target = line.group(1)  # the first RoPE of the step module, made subtly wrong
    code_text = code_text[:line.end() - len("rope(")] + "1.001 * rope(" + code_text[line.end():]
    module.write_text(code_text)

    code, found = localize(capsys, "mlx", folder, tiny_export)
    assert code == 1 and found["step"] == 1
    assert found["first"]["op_type"] == "Rope" and found["first"]["made_by"] == "fuse"
    assert re.sub(r"\W", "_", found["first"]["output"]["value"]) == target
    assert "hrm_mlx.py: does not match the sha256" in found["changed"][0]


@pytest.mark.heavy
def test_localize_names_the_node_reading_a_changed_weight_in_a_core_ml_package(capsys, tiny, tiny_export,
                                                                               fused_step, tmp_path):
    package = tmp_path / "tiny.mlpackage"
    assert main(["lower", "--target", "coreml", "--policy", "q-halt", "--onnx-model", str(tiny_export),
                 "-o", str(package)]) == 0
    blob_path = package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    blob = bytearray(blob_path.read_bytes())
    weight = changed_weight(tiny)
    offset = next(offset for stored in (weight, np.ascontiguousarray(weight.T))
                  if (offset := blob.find(stored.astype(np.float32).tobytes())) >= 0)
    element = np.frombuffer(blob, np.float32, count=1, offset=offset + 4 * 70)[0]
    blob[offset + 4 * 70: offset + 4 * 71] = np.float32(element + 0.05).tobytes()
    blob_path.write_bytes(bytes(blob))

    code, found = localize(capsys, "coreml", package, tiny_export)
    assert code == 1 and found["step"] == 1
    assert found["first"]["node"] == first_reader(fused_step, weight)
    assert found["first"]["weights"] == [WEIGHT.removeprefix("inner.")]
    assert "weight.bin: does not match the sha256" in found["changed"][0]


@settings(max_examples=25, deadline=None)
@given(length=st.integers(2, 12), data=st.data())
def test_the_walk_names_the_first_node_past_the_tolerance_whose_inputs_are_within_it(length, data, tmp_path_factory,
                                                                                      tiny):
    """A chain x → n0 → n1 → …: B's values drift within the tolerance up to node k, past it from k on
    (drift propagates); the walk must name node k, whatever comes after."""
    k = data.draw(st.integers(0, length - 1))
    noise = data.draw(st.lists(st.floats(0, 5e-6), min_size=length, max_size=length))
    x = ir.Value(name="x", shape=ir.Shape([4]), type=ir.TensorType(ir.DataType.FLOAT))
    nodes, value = [], x
    for index in range(length):
        node = ir.node("Neg", [value], name=f"n{index}")
        node.outputs[0].name = f"v{index}"
        nodes.append(node)
        value = node.outputs[0]
    path = tmp_path_factory.mktemp("chain") / "chain.onnx"
    ir.save(ir.Model(ir.Graph([x], [value], nodes=nodes, opset_imports={"": 20}), ir_version=10), str(path))
    a = {f"v{i}": np.full(4, (-1.0) ** (i + 1), np.float32) for i in range(length)}
    b = {name: array + np.float32(noise[i] + (1e-2 if i >= k else 0.0)) for i, (name, array) in enumerate(a.items())}
    found = Localization(["a", "b"], [], "chain", "max-steps", 1, 1, 0, "atol", "")
    _walk(found, Trace(path, a, "a"), Trace(path, b, "b"), tiny, 1e-5, 1e-5, None)
    assert found.first is not None and found.first.node == f"n{k}"
    assert [drift.value for drift in found.first.inputs] == ([f"v{k - 1}"] if k else [])
    assert len(found.after) == min(length - k - 1, 10)


def test_float16_q_values_are_measured_as_the_contract_measures_them():
    """One or two numbers per sample (the q head) against 1e-2 × their scale, not PSNR, which a q near zero
    would fail; state-sized values on PSNR."""
    from hrmc.parity.localize import _drift

    q = np.array([[8.0, -0.01], [6.0, 0.02]], np.float32)
    near = _drift("q", q, q + np.float32(0.05), 1e-5, 1e-5, 60.0, batch=2)
    assert near.kind == "q" and not near.exceeds and near.measure == pytest.approx(0.08)
    assert _drift("q", q, q + np.float32(0.1), 1e-5, 1e-5, 60.0, batch=2).exceeds
    state = np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32)
    assert _drift("z", state, state + np.float32(1e-4), 1e-5, 1e-5, 60.0, batch=2).kind == "psnr"


def test_float16_values_are_held_to_the_bound_the_rule_put_on_the_failing_step():
    """No ONNX value has a float16 twin in hrm_ref, so a value's PSNR is held to the float16 rule's limit on the
    loosest failing output of that step, as a PSNR (of every output, where only decisions failed); --psnr where
    higher."""
    from hrmc.parity.gate import Report, Row
    from hrmc.parity.localize import _float16_threshold

    def row(output: str, psnr: float, error: float, limit: float, step: int = 2) -> Row:
        return Row(output, step, 0.0, 0.0, error, limit, error <= limit, psnr=psnr, float16_psnr=psnr, ratio=1.0,
                   gated="ratio")

    report = Report("step", ["a", "b"], "m", "q-halt", 8, 2, 0, 1e-5, 1e-5, first_failing_step=2,
                    rows=[row("z_H", 50.0, 2e-3, 1e-3), row("logits", 55.0, 4e-3, 1e-3), row("z_L", 70.0, 1e-4, 1e-3),
                          row("z_H", 20.0, 1.0, 1e-3, step=1)])
    threshold, described = _float16_threshold(report)
    assert threshold == pytest.approx(50.0 + 20 * np.log10(2e-3 / 1e-3)) and "z_H at step 2" in described
    report.psnr_db = 60.0
    assert _float16_threshold(report) == (60.0, "PSNR ≥ 60 dB (--psnr)")
    report.psnr_db, report.rows = None, [row("z_L", 70.0, 1e-4, 1e-3)]  # only decisions failed
    assert _float16_threshold(report)[0] == pytest.approx(70.0 - 20)
