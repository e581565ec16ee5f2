"""The Core AI target: the asset hrmc writes, its functions run in Apple's runtime (on Linux, coreai-core's
reference interpreter), and its gate. A conversion takes 20–50 s on 2 cores (torch.export of every function,
`solve` unrolled over the budget): the tests that convert run under `heavy` (`make test`, CI), to keep the default
`pytest` within its time; those refusing bad options and a missing dependency run always."""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from hrmc import hrm_ref
from hrmc.cli import main
from hrmc.errors import InputError
from hrmc.hrm_ref.act import initial_carry, step
from hrmc.hrm_ref.compression import compress
from hrmc.lowering.export import weights_sha256
from hrmc.targets import TARGETS
from hrmc.targets.coreai.package import METADATA, PROGRAM, _array, read_asset, read_metadata
from hrmc.targets.coreai.runtime import LoadedAsset
from tests.helpers import assert_one_line_error, assert_second_gate_converts_nothing, hrmc

GATED = ("--policy", "q-halt", "--budget", "4", "--batch", "4", "--seed", "1")  # tiny's samples halt at 4, 2, 4, 4


def rerecord(asset: Path, program: bytes) -> None:
    """Write a changed program into the asset and its sha256 into the record, as someone hiding the change would."""
    (asset / PROGRAM).write_bytes(bytes(program))
    metadata = json.loads((asset / METADATA).read_text())
    parts = json.loads(metadata["creatorDefinedMetadata"]["hrmc.parts"])
    parts["program"]["sha256"] = hashlib.sha256(program).hexdigest()
    metadata["creatorDefinedMetadata"]["hrmc.parts"] = json.dumps(parts)
    (asset / METADATA).write_text(json.dumps(metadata))


@pytest.fixture(scope="session")
def asset(tmp_path_factory, worker_id: str) -> Path:
    """tiny lowered with every function (init, step, chunk2, solve) and its Mac check (tiny.check/), once per test
    session: the first test worker to ask lowers it (50 s), the others wait on the lock and read it."""
    root = tmp_path_factory.getbasetemp()
    shared = (root.parent if worker_id != "master" else root) / "coreai-asset"
    shared.mkdir(exist_ok=True)
    out = shared / "tiny" / "tiny.aimodel"
    with open(shared / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not out.is_dir():
            out.parent.mkdir(exist_ok=True)
            assert main(["lower", "--target", "coreai", *GATED, "--chunk", "2", "--author", "A. Author",
                         "--mac-check", "-o", str(out)]) == 0
    return out


@pytest.mark.heavy  # a Core AI conversion: 20–50 s
def test_lower_writes_one_asset_with_every_function_and_its_record(tiny, asset: Path) -> None:
    assert sorted(p.name for p in asset.iterdir()) == ["main.hash", PROGRAM, METADATA]
    # no temporary folder left beside it: the asset and its Mac check (--mac-check)
    assert sorted(p.name for p in asset.parent.iterdir()) == sorted([asset.name, asset.with_suffix(".check").name])
    record, functions = read_asset(asset)
    assert functions == ("init", "step", "solve", "chunk2")
    assert (record.policy, record.budget, record.batch, record.chunk, record.kind) == ("q-halt", 4, 4, 2, "coreai")
    assert record.weights_sha256 == weights_sha256(tiny) and record.checkpoint.preset == "tiny"
    for file in asset.iterdir():  # nothing in it names this machine: no path, no stack trace
        data = file.read_bytes()
        for path in (str(asset.parent), str(Path.cwd()), str(Path.home()), "site-packages", ".py\""):
            assert path.encode() not in data, (file.name, path)
    assert b"A. Author" in (asset / METADATA).read_bytes()


@pytest.mark.heavy  # a Core AI conversion: 20–50 s
def test_every_input_output_and_state_of_every_function_says_what_it_means(asset: Path) -> None:
    """As the runtime lists them: each described with its meaning, its type and its shape."""
    described = json.loads(read_metadata(asset)["hrmc.descriptions"])
    loaded = LoadedAsset(asset)
    for function in read_asset(asset)[1]:
        desc = loaded.executable.load_function(function).desc
        for kind, names in (("inputs", desc.input_names), ("outputs", desc.output_names), ("state", desc.state_names)):
            assert sorted(described[function][kind]) == sorted(names), (function, kind)
            for name in names:
                text = described[function][kind][name]
                runtime_type = getattr(desc, f"{kind.removesuffix('s')}_descriptor")(name).dtype
                assert f"{runtime_type} [" in text, (function, name, text)
    assert "runtime state" in described["step"]["state"]["z_H"] and "[4, 18, 64]" in described["step"]["state"]["z_H"]
    assert "argmax" in described["solve"]["outputs"]["answer"]


@pytest.mark.heavy  # a Core AI conversion: 20–50 s
def test_the_gate_passes_the_asset_and_runs_each_of_its_functions(capsys, tiny, asset: Path) -> None:
    halting = hrm_ref.run(tiny, hrm_ref.random_batch(tiny.config, 4, seed=1), "q-halt", 4)["steps"][-1]
    assert len(set(halting.tolist())) > 1  # the masked steps of solve and chunk2 are exercised
    code, out, err = hrmc(capsys, "parity", "torch", "coreai", "--artifact", str(asset), *GATED)
    assert code == 0 and out.rstrip().endswith("PASS"), out
    assert "stored tensors compared with the model's 23 parameters (float32): every one is the model's" in out
    assert "ODIE" not in err  # the runtime's own loading lines are not shown
    assert "coreai-core" in out and f"{asset.name}:solve" in out and f"{asset.name}:chunk2 in a host loop" in out


@pytest.mark.heavy  # a Core AI conversion: 20–50 s
def test_the_step_carries_its_state_as_hrm_ref_steps(tiny, asset: Path) -> None:
    """From a carry with halted rows: the state after the call is hrm_ref's next carry, the outputs its outputs."""
    executor = TARGETS["coreai"].executor("coreai", artifact=asset)
    batch = hrm_ref.random_batch(tiny.config, 4, seed=5)
    executor.prepare(tiny, "q-halt", 4, batch)
    with torch.no_grad():
        carry = initial_carry(tiny, batch)
        carry, _ = step(tiny, carry, batch, "q-halt", 4)
        carry.halted = torch.tensor([True, False, True, False])
        expected_carry, expected = step(tiny, carry, batch, "q-halt", 4)
    got = executor.step(carry, batch)
    for name, value in expected.items() | vars(expected_carry).items():
        assert np.allclose(got[name], value.numpy(), rtol=0, atol=1e-5), name


@pytest.mark.heavy  # a Core AI conversion: 20–50 s
def test_a_changed_program_is_refused_before_it_runs(capsys, asset: Path, tmp_path: Path) -> None:
    changed = tmp_path / "changed.aimodel"
    shutil.copytree(asset, changed)
    program = bytearray((changed / PROGRAM).read_bytes())
    program[len(program) // 2] ^= 1
    (changed / PROGRAM).write_bytes(bytes(program))
    code, _, err = hrmc(capsys, "parity", "torch", "coreai", "--artifact", str(changed), *GATED)
    assert_one_line_error(code, err, str(changed / PROGRAM), "does not match the sha256")


@pytest.mark.heavy  # a Core AI conversion: 20–50 s
def test_a_changed_weight_is_refused_though_its_digest_was_recorded_again(capsys, tiny, asset: Path,
                                                                          tmp_path: Path) -> None:
    """A puzzle-embedding row no input reads, changed, and the program's sha256 written into the record again: the
    binding cannot tell, the numbers cannot see it, the stored weights (read back from the program) can."""
    changed = tmp_path / "changed.aimodel"
    shutil.copytree(asset, changed)
    program = bytearray((changed / PROGRAM).read_bytes())
    table = tiny.state_dict()["inner.puzzle_emb.weights"].numpy()
    at = bytes(program).find(table.tobytes())
    assert at > 0 and 7 not in hrm_ref.random_batch(tiny.config, 4, seed=1)["puzzle_identifiers"].tolist()
    program[at + table[:7].nbytes] ^= 0x40  # row 7
    rerecord(changed, program)
    code, out, err = hrmc(capsys, "parity", "torch", "coreai", "--artifact", str(changed), *GATED)
    assert code == 1 and "inner.puzzle_emb.weights is stored nowhere" in out + err, out + err


@pytest.mark.heavy  # a Core AI conversion: 20–50 s
def test_the_mac_check_judges_the_asset_as_the_gate_does_and_times_it(asset: Path, tmp_path: Path) -> None:
    """check.py beside the asset, run here as on a Mac but on coreai-core's reference interpreter (the one unit off
    macOS): its verdict is the one hrmc recorded (linux.json), every function and the app loop are timed; a copy of
    the asset with a changed program is not the asset it was written for (exit 2)."""
    check = shutil.copytree(asset.with_suffix(".check"), tmp_path / "tiny.check")
    copy = shutil.copytree(asset, tmp_path / "tiny.aimodel")
    result = subprocess.run([sys.executable, str(check / "check.py")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "INTERPRETER PASS" in result.stdout and "overall: PASS (coreai-core's reference interpreter; Linux said: PASS)" \
        in result.stdout
    latency = json.loads((check / "latency.json").read_text())
    timed = latency["units"]["INTERPRETER"]
    assert set(timed["functions"]) == {"init", "step", "chunk2", "solve"} and timed["check"] == "PASS"
    assert [loop["batch"] for loop in timed["app_loop"]] == [1, 4] and latency["flavour"] == "coreai"
    program = bytearray((copy / PROGRAM).read_bytes())
    program[len(program) // 2] ^= 1
    (copy / PROGRAM).write_bytes(bytes(program))
    result = subprocess.run([sys.executable, str(check / "check.py")], capture_output=True, text=True)
    assert result.returncode == 2 and "main.mlirb does not match its recorded sha256" in result.stderr, result.stderr


@pytest.mark.heavy  # a Core AI conversion: 20–50 s
def test_an_asset_runs_only_at_the_batch_it_was_lowered_for(capsys, tiny, asset: Path) -> None:
    code, _, err = hrmc(capsys, "parity", "torch", "coreai", "--artifact", str(asset), *GATED[:4], "--batch", "2")
    assert_one_line_error(code, err, "--batch 2", "was made with batch 4")
    executor = TARGETS["coreai"].executor("coreai", artifact=asset)
    with pytest.raises(InputError, match="lowered for batch 4, not 2"):
        executor.prepare(tiny, "q-halt", 4, hrm_ref.random_batch(tiny.config, 2, seed=0))


@pytest.mark.parametrize("option", [("--onnx-model", "m.onnx"), ("--pipeline", "fused"), ("--strip", "logits")])
def test_options_of_an_onnx_lowering_are_refused(capsys, tmp_path: Path, option) -> None:
    code, _, err = hrmc(capsys, "lower", "--target", "coreai", *option, "-o", str(tmp_path / "m.aimodel"))
    assert_one_line_error(code, err, option[0], "converts the model itself")
    assert list(tmp_path.iterdir()) == []


def test_without_the_core_ai_tools_one_line_says_what_to_install(capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "coreai", None)  # import coreai → ImportError
    monkeypatch.delitem(sys.modules, "hrmc.targets.coreai._coreai", raising=False)
    code, _, err = hrmc(capsys, "lower", "--target", "coreai", "-o", str(tmp_path / "m.aimodel"))
    assert_one_line_error(code, err, "pip install 'hrmc[coreai]'")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.heavy  # a Core AI conversion: 20–50 s
def test_a_gate_without_an_artifact_converts_the_model_once(capsys, monkeypatch) -> None:
    """Converted afresh into the session's cache (lowering/cache.py): a second gate converts nothing, same verdict."""
    from hrmc.targets.coreai import executors

    assert_second_gate_converts_nothing(capsys, monkeypatch, executors, "lower_coreai", "torch", "coreai", "--budget",
                                        "2", "--batch", "2")


@pytest.mark.heavy  # a Core AI conversion of a trained fixture: about a minute
def test_a_trained_fixture_solves_its_held_out_puzzles_as_hrm_ref_does(capsys, tmp_path: Path) -> None:
    """sudoku4, trained: Core AI folds its one-row puzzle embedding and the q head's bias into what reads them
    (every input reads them whole: the numbers judge them); every other weight is stored, and the asset solves
    what hrm_ref solves."""
    out = tmp_path / "sudoku4.aimodel"
    assert main(["lower", "--target", "coreai", "--preset", "sudoku4", "--policy", "q-halt", "--batch", "8",
                 "-o", str(out)]) == 0
    code, report, _ = hrmc(capsys, "parity", "torch", "coreai", "--artifact", str(out))
    assert code == 0 and report.rstrip().endswith("PASS"), report
    assert "accuracy against labels, B: 100.00 % exact" in report and "answers agree on 8 of 8 samples" in report
    assert "stored tensors compared with the model's 23 parameters (float32): every one is the model's" in report


@pytest.mark.heavy  # a Core AI conversion of a trained fixture: about a minute
def test_int8_weights_solve_the_held_out_puzzles_and_a_changed_level_is_refused(capsys, tmp_path: Path) -> None:
    """sudoku4 with int8 weights (hrm_ref.compression's, stored as blockwise_shift_scale): the compiler's question
    (against hrm_ref on the weights as stored) and the compression's (puzzles solved against the model's own
    weights) both pass; one quantised level changed, the program's sha256 recorded again, is refused."""
    out = tmp_path / "sudoku4.aimodel"
    assert main(["lower", "--target", "coreai", "--preset", "sudoku4", "--policy", "q-halt", "--batch", "8",
                 "--weights", "int8", "-o", str(out)]) == 0
    code, report, _ = hrmc(capsys, "parity", "torch", "coreai", "--artifact", str(out))
    assert code == 0 and report.rstrip().endswith("PASS"), report
    assert "compression (int8 weights)" in report and "exact-solved 100.00 % (uncompressed 100.00 %)" in report
    assert "(float32, int8): every one is the model's" in report

    model = hrm_ref.build_preset("sudoku4")
    name = sorted(model.compressible_weights())[0]
    levels = compress(model.state_dict()[name].numpy(), "int8", 0, np.float32).values
    program = bytearray((out / PROGRAM).read_bytes())
    at = bytes(program).find(levels.tobytes())
    assert at > 0
    program[at] = (program[at] + 1) % 256 if levels.flat[0] < 127 else program[at] - 1
    changed = tmp_path / "changed.aimodel"
    shutil.copytree(out, changed)
    rerecord(changed, program)
    code, report, err = hrmc(capsys, "parity", "torch", "coreai", "--artifact", str(changed))
    assert code == 1 and "is none of the model's parameters as hrmc compresses them" in report + err, report + err


@pytest.mark.heavy  # a Core AI conversion: 20–50 s
def test_palettized_weights_are_stored_as_packed_indices_and_read_back(tiny, tmp_path: Path) -> None:
    """lut4: each compressible weight's 4-bit indices (packed two to a byte) and palettes, read back out of the
    program, are hrm_ref.compression's; no float32 copy of them is stored."""
    out = tmp_path / "tiny.aimodel"
    assert main(["lower", "--target", "coreai", "--budget", "2", "--batch", "2", "--weights", "lut4",
                 "-o", str(out)]) == 0
    executor = TARGETS["coreai"].executor("coreai", artifact=out)
    executor.prepare(tiny, "max-steps", 2, hrm_ref.random_batch(tiny.config, 2, seed=0))
    assert executor.compression() == "lut4" and "(float32, lut4): every one is the model's" in executor.weights_checked
    program = (out / PROGRAM).read_bytes()
    assert not any(tiny.state_dict()[name].numpy().tobytes() in program for name in tiny.compressible_weights())


@settings(max_examples=40, derandomize=True, deadline=None)
@given(bits=st.integers(1, 8), shape=st.lists(st.integers(1, 9), min_size=1, max_size=3), data=st.data())
def test_packed_indices_are_read_low_bits_first(bits: int, shape: list[int], data) -> None:
    """A sub-byte constant (palette indices, `ui4`) is packed low bits first, as coreai-core writes it."""
    values = data.draw(arrays(np.uint8, shape, elements=st.integers(0, 2 ** bits - 1)))
    packed = np.packbits(np.unpackbits(values.reshape(-1, 1), axis=1, bitorder="little")[:, :bits],
                         bitorder="little").tobytes()
    np.testing.assert_array_equal(_array(packed, "x".join(map(str, shape)) + f"xui{bits}"), values)
