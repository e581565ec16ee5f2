"""The MLX target: the emitted folder, its op table's errors, and parity against the reference."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hrmc import hrm_ref
from hrmc.cli import main
from hrmc.lowering import step_path_for
from hrmc.targets import mlx as mlx_target
from tests.helpers import assert_one_line_error, hrmc


def lower(capsys, tiny_export: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    return hrmc(capsys, "lower", "--target", "mlx", "--onnx-model", str(tiny_export), "--policy", "q-halt", *extra,
                "-o", str(out))


def test_lower_writes_a_self_contained_folder(capsys, tiny, tiny_export: Path, tmp_path: Path) -> None:
    code, out, _ = lower(capsys, tiny_export, tmp_path / "tiny-mlx", "--chunk", "2")
    folder = tmp_path / "tiny-mlx"
    assert code == 0 and sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "hrm_mlx.py",
                                                                     "weights.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-mlx"]  # no temporary folder left beside it
    code_text = (folder / "hrm_mlx.py").read_text()
    assert "mx.fast.rms_norm" in code_text and "mx.fast.scaled_dot_product_attention" in code_text
    assert "class Inference" in code_text and "class Step" in code_text and "class Chunk" in code_text
    config = json.loads((folder / "config.json").read_text())
    assert config["policy"] == "q-halt" and config["graphs"] == {"static": "inference", "step": "step", "chunk": "chunk",
                                                                 "init": "init"}
    parameter_bytes = 4 * tiny.num_parameters()
    assert parameter_bytes <= (folder / "weights.safetensors").stat().st_size <= 1.05 * parameter_bytes
    # an app's loop, with early exit: the chunk module from init until every sample halted, as hrm_ref runs it
    batch = hrm_ref.random_batch(tiny.config, 4, seed=3)
    reference = hrm_ref.run(tiny, batch, "q-halt")
    script = (f"import sys, json, numpy as np; sys.path.insert(0, {str(folder)!r}); import hrm_mlx, mlx.core as mx\n"
              "config, graphs = hrm_mlx.load()\n"
              f"batch = {{k: mx.array(np.array(v, np.int32)) for k, v in json.loads({json.dumps(json.dumps({k: v.tolist() for k, v in batch.items()}))}).items()}}\n"
              "solved = hrm_mlx.solve(graphs, config, batch)\n"
              "print(json.dumps({k: np.array(v).tolist() for k, v in solved.items()}))")
    solved = json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout)
    assert solved["halt_step"] == reference["steps"][-1].tolist() and len(set(solved["halt_step"])) > 1
    assert solved["answer"] == reference["logits"][-1].argmax(-1).tolist()


def test_a_missing_op_mapping_fails_at_lower_time_and_leaves_nothing(capsys, tiny_export: Path, tmp_path: Path,
                                                                   monkeypatch) -> None:
    monkeypatch.delitem(mlx_target.OPS, "hrmc.SwiGLU")
    code, _, err = lower(capsys, tiny_export, tmp_path / "m")
    assert_one_line_error(code, err, "no MLX mapping for op 'hrmc.SwiGLU'", "node '")
    assert list(tmp_path.iterdir()) == []


def test_a_graph_with_loops_is_refused(tiny_export: Path, tmp_path: Path) -> None:
    graphs = {"static": tiny_export, "step": step_path_for(tiny_export)}
    with pytest.raises(mlx_target.LowerError, match=r"is a Loop: the MLX lowering takes a static graph"):
        mlx_target.lower_mlx(graphs, tmp_path / "m", "tiny.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("executor", ["mlx", "mlx-chunked"])
def test_mlx_passes_the_gate_in_both_modes(capsys, tiny_export: Path, executor: str) -> None:
    for mode in ("step", "trajectory"):
        code, out, _ = hrmc(capsys, "parity", "torch", executor, "--onnx-model", str(tiny_export), "--policy", "q-halt",
                            "--batch", "8", "--mode", mode)
        assert code == 0 and out.rstrip().endswith("PASS") and "mlx" in out, out


def test_mlx_chunked_stops_once_every_sample_halted(tiny, tiny_export: Path) -> None:
    from hrmc.parity.executors import make_executor

    batch = hrm_ref.random_batch(tiny.config, 4, seed=3)
    executor = make_executor("mlx-chunked", onnx_model=str(tiny_export), chunk=1)
    executor.prepare(tiny, "q-halt", None, batch)
    steps_taken = executor.run(batch)["steps"].shape[0]
    assert executor.graph_calls == steps_taken == hrm_ref.run(tiny, batch, "q-halt")["steps"].shape[0]


SNIPPET = """
import sys, numpy as np
sys.path.insert(0, sys.argv[1])
import hrm_mlx
import mlx.core as mx
config, graphs = hrm_mlx.load()
feed = dict(np.load(sys.argv[2]))
outputs = graphs["inference"](**{k: mx.array(v) for k, v in feed.items()})
np.savez(sys.argv[3], **{k: np.array(v) for k, v in outputs.items()})
"""


TF32 = "MLX_ENABLE_TF32"


def python_with(environment: dict[str, str], code: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter, with `environment` over ours (MLX reads its variables once, at start)."""
    return subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, cwd=cwd,
                          env=os.environ | environment, check=True)


def test_the_emitted_module_sets_mlx_enable_tf32_to_0_before_importing_mlx(capsys, tiny_export: Path,
                                                                            tmp_path: Path) -> None:
    """On Linux MLX has no TF32 path, so what is tested is the variable: set before `import mlx`, whatever the
    environment said (a 1 exported is overridden, with a warning), and recorded in config.json."""
    assert lower(capsys, tiny_export, tmp_path / "m")[0] == 0
    tree = ast.parse((tmp_path / "m" / "hrm_mlx.py").read_text())
    statements = [ast.unparse(node) for node in tree.body]
    pinned = statements.index("os.environ['MLX_ENABLE_TF32'] = '0'")
    imports = [i for i, node in enumerate(tree.body) if isinstance(node, (ast.Import, ast.ImportFrom))
               and any(alias.name.startswith("mlx") for alias in node.names) or getattr(node, "module", "") == "mlx"]
    assert imports and pinned < min(imports)
    seen = "import os, sys; sys.path.insert(0, 'm'); import hrm_mlx; print(os.environ['MLX_ENABLE_TF32'])"
    for exported, warned in ((None, ""), ("0", ""), ("1", "MLX_ENABLE_TF32=1 overridden to 0")):
        result = python_with({TF32: exported} if exported else {}, seen, cwd=tmp_path)
        assert result.stdout.strip() == "0" and (warned in result.stderr if warned else "Warning" not in result.stderr)
    late = python_with({TF32: "1"}, "import sys; sys.path.insert(0, 'm'); import mlx.core; import hrm_mlx", tmp_path)
    assert "MLX was imported before this module" in late.stderr
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["tf32"] is False and TF32 in (tmp_path / "m" / "README.md").read_text()


def test_hrmcs_mlx_executors_import_mlx_with_float32_pinned(tmp_path: Path) -> None:
    """Every import of MLX in hrmc goes through `targets/mlx/_mlx.py`, which sets the variable first (set, not
    defaulted: an exported 1 is overridden) and says so in the executors' descriptions."""
    backend = Path(mlx_target.__file__).parent
    for path in backend.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [
                getattr(node, "module", None) or ""] if isinstance(node, ast.ImportFrom) else []
            assert path.name == "_mlx.py" or not any(name.split(".")[0] == "mlx" for name in names), path.name
    code = ("import os, sys; from hrmc.targets import TARGETS; from hrmc.targets.mlx import MlxExecutor; "
            "assert 'mlx.core' not in sys.modules; d = MlxExecutor(TARGETS['mlx']).describe(); print(d[d.index('MLX_ENABLE_TF32'):-1]); print(os.environ['MLX_ENABLE_TF32'])")
    for exported, described in ((None, "MLX_ENABLE_TF32=0"),
                                ("1", "MLX_ENABLE_TF32=0 (the environment's 1 overridden)")):
        lines = python_with({TF32: exported} if exported else {}, code).stdout.splitlines()
        assert lines == [described, "0"], lines


@pytest.mark.heavy
def test_the_folder_runs_with_only_mlx_and_numpy(capsys, tiny, tiny_export: Path, tmp_path: Path) -> None:
    """A fresh virtual environment with `mlx[cpu]` and `numpy` only, as the README snippet promises."""
    assert lower(capsys, tiny_export, tmp_path / "m")[0] == 0
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "mlx[cpu]", "numpy"], check=True,
                   env=os.environ | {"PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze"], check=True, capture_output=True,
                            text=True).stdout
    assert "torch" not in listed and "onnx" not in listed
    batch = hrm_ref.random_batch(tiny.config, 2, seed=5)
    np.savez(tmp_path / "in.npz", **{k: v.numpy() for k, v in batch.items()})
    (tmp_path / "snippet.py").write_text(SNIPPET)
    subprocess.run([str(python), str(tmp_path / "snippet.py"), str(tmp_path / "m"), str(tmp_path / "in.npz"),
                    str(tmp_path / "out.npz")], check=True, cwd=tmp_path)
    fresh = np.load(tmp_path / "out.npz")
    _, graphs = mlx_target.load_package(tmp_path / "m")
    import mlx.core as mx

    here = graphs["inference"](**{k: mx.array(v.numpy()) for k, v in batch.items()})
    for name, value in here.items():
        assert np.array_equal(fresh[name], np.array(value)), name


@pytest.mark.heavy  # exports afresh: a minute
def test_parity_torch_mlx_with_no_arguments_is_the_headline(capsys) -> None:
    assert main(["parity", "torch", "mlx", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["mode"] == "step"


@pytest.mark.heavy  # exports the denoiser: a minute
def test_denoiser_ddim_sample_is_bit_identical_across_mlx_runs(capsys, tmp_path: Path) -> None:
    from hrmc.hrm_ref.act import denoise
    from hrmc.hrm_ref.ddim import DDIMScheduler
    from hrmc.parity.ddim import sample
    from hrmc.parity.executors import make_executor

    model = hrm_ref.build_preset("denoiser")
    batch = hrm_ref.random_batch(model.config, 2, seed=0)
    assert main(["export", "--preset", "denoiser", "-o", str(tmp_path / "d.onnx")]) == 0
    code = main(["parity", "torch", "mlx", "--preset", "denoiser", "--batch", "2", "--onnx-model", str(tmp_path / "d.onnx")])
    assert code == 0 and capsys.readouterr().out.rstrip().endswith("PASS")
    shape = tuple(batch["x_t"].shape)
    samples = []
    for _ in range(2):  # two executors, each lowering and compiling afresh
        executor = make_executor("mlx", onnx_model=str(tmp_path / "d.onnx"))
        executor.prepare(model, "max-steps", None, batch)
        samples.append(sample(executor, model, shape, steps=5, seed=7))
    assert samples[0].dtype == np.float32 and np.array_equal(samples[0], samples[1])
    reference = DDIMScheduler().sample(5, shape, lambda x, t, c: denoise(model, x, t, c), None, 7)
    assert np.abs(samples[0] - reference.numpy()).max() < 1e-3  # five steps of step-parity drift, not another model
