"""Loading upstream checkpoints and safetensors; every mismatch ends in one CheckpointError."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from hrmc import hrm_ref
from hrmc.hrm_ref import HRM, HRMConfig
from hrmc.hrm_ref.checkpoint import arch_section
from hrmc.hrm_ref.presets import randomize_weights
from hrmc.errors import CheckpointError, ConfigError, HrmcError
from tests.conftest import upstream_arch, write_upstream_checkpoint


def same_weights(a: HRM, b: HRM) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].float(), sb[k].float()) for k in sa)


@pytest.mark.parametrize("prefix", ["_orig_mod.model.", "model.", ""])
def test_upstream_checkpoint_loads_with_every_key_prefix(tiny: HRM, tmp_path: Path, prefix: str) -> None:
    path = write_upstream_checkpoint(tiny, tmp_path / "run", prefix=prefix)
    loaded = hrm_ref.load_checkpoint(path)
    assert loaded.config == tiny.config.replace(seq_len=None)  # seq_len is not in upstream's yaml
    # H_init/L_init come back at bfloat16 precision, as upstream saved them.
    assert torch.equal(loaded.inner.H_init, tiny.inner.H_init.to(torch.bfloat16).float())
    assert torch.equal(loaded.inner.H_level.layers[1].mlp.down_proj.weight, tiny.inner.H_level.layers[1].mlp.down_proj.weight)


def test_arch_yaml_with_hydra_reference_resolves(tmp_path: Path) -> None:
    """upstream's config/arch/hrm_v1.yaml says `puzzle_emb_ndim: ${.hidden_size}`."""
    model = randomize_weights(HRM(HRMConfig(vocab_size=5, hidden_size=32, num_heads=2, puzzle_emb_ndim=32,
                                            H_layers=1, L_layers=1)), seed=0)
    path = write_upstream_checkpoint(model, tmp_path / "run")
    (tmp_path / "arch.yaml").write_text(yaml.dump(upstream_arch(model) | {"puzzle_emb_ndim": "${.hidden_size}"}))
    assert hrm_ref.load_checkpoint(path, tmp_path / "arch.yaml").config.puzzle_emb_ndim == 32


def test_config_that_contradicts_the_weights_is_named(tiny: HRM, upstream_checkpoint: Path, tmp_path: Path) -> None:
    (tmp_path / "arch.yaml").write_text(yaml.dump(upstream_arch(tiny) | {"puzzle_emb_ndim": 64}))
    with pytest.raises(HrmcError, match="arch.puzzle_emb_ndim is 64 but inner.puzzle_emb.weights has width 96"):
        hrm_ref.load_checkpoint(upstream_checkpoint, tmp_path / "arch.yaml")
    (tmp_path / "arch.yaml").write_text(yaml.dump(upstream_arch(tiny) | {"hidden_size": 48}))
    with pytest.raises(HrmcError, match="arch.hidden_size is 48 but inner.embed_tokens.embedding_weight has width 64"):
        hrm_ref.load_checkpoint(upstream_checkpoint, tmp_path / "arch.yaml")


@pytest.mark.parametrize("preset", ["tiny", "nibble", "hex", "nxt", "denoiser", "controller-cab", "trm-tiny",
                                    "trm-tiny-mlp-t"])
def test_safetensors_round_trip_carries_its_config(tmp_path: Path, preset: str) -> None:
    model = hrm_ref.build_preset(preset)
    hrm_ref.save_checkpoint(model, tmp_path / "model.safetensors")
    loaded = hrm_ref.load_checkpoint(tmp_path / "model.safetensors")
    assert loaded.config == model.config and same_weights(loaded, model)


def test_forward_dtype_is_chosen_at_load(upstream_checkpoint: Path) -> None:
    assert hrm_ref.load_checkpoint(upstream_checkpoint, forward_dtype="float64").config.forward_dtype == "float64"


def rewrite(path: Path, change) -> None:
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("_orig_mod.model.inner.L_level.layers.1.mlp.down_proj.weight"),
     r"missing keys inner\.L_level\.layers\.1\.mlp\.down_proj\.weight"),
    (lambda s: s.__setitem__("_orig_mod.model.inner.L_level.layers.2.mlp.down_proj.weight", torch.zeros(1)),
     r"unexpected keys inner\.L_level\.layers\.2\.mlp\.down_proj\.weight"),
    (lambda s: s.__setitem__("_orig_mod.model.inner.q_head.weight", torch.zeros(3, 64)),
     r"shape mismatch inner\.q_head\.weight \(3, 64\) \(model \(2, 64\)\)"),
    (lambda s: s.__setitem__("inner.lm_head.weight", torch.zeros(1)),
     r"keys mix the prefixes"),
    (lambda s: s.clear(), r"holds no weights \(an empty state_dict\)"),
    (lambda s: s.__setitem__("_orig_mod.model.inner.embed_tokens.embedding_weight", torch.zeros(11)),
     r"tensor inner\.embed_tokens\.embedding_weight has shape \(11,\), not a matrix"),
    (lambda s: s.__setitem__("module.encoder.weight", torch.zeros(1)),
     r"key 'module\.encoder\.weight' does not start with"),
    (lambda s: s.pop("_orig_mod.model.inner.embed_tokens.embedding_weight"),
     r"missing key inner\.embed_tokens\.embedding_weight"),
    (lambda s: s["_orig_mod.model.inner.lm_head.weight"].__setitem__((0, 0), float("nan")),
     r"tensor inner\.lm_head\.weight has 1 non-finite value\(s\)"),
    (lambda s: s["_orig_mod.model.inner.q_head.bias"].__setitem__(1, float("inf")),
     r"tensor inner\.q_head\.bias has 1 non-finite value\(s\)"),
    (lambda s: s.__setitem__("_orig_mod.model.inner.q_head.weight", torch.ones(2, 64, dtype=torch.int64)),
     r"tensor inner\.q_head\.weight is int64, not a float type"),
    (lambda s: s.__setitem__("_orig_mod.model.inner.q_head.weight", torch.ones(2, 64, dtype=torch.complex64)),
     r"tensor inner\.q_head\.weight is complex64, not a float type"),
])
def test_bad_keys_are_named(upstream_checkpoint: Path, change, message: str) -> None:
    rewrite(upstream_checkpoint, change)
    with pytest.raises(CheckpointError, match=message):
        hrm_ref.load_checkpoint(upstream_checkpoint)


TRM_NAME = "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1"


@pytest.fixture
def trm_checkpoint(tmp_path: Path) -> Path:
    """trm-tiny-mlp-t as TinyRecursiveModels' pretrain.py saves it."""
    return write_upstream_checkpoint(hrm_ref.build_preset("trm-tiny-mlp-t"), tmp_path / "run")


@pytest.mark.parametrize("forward_dtype", ["float32", "bfloat16", "float64"])
def test_trm_checkpoint_loads_by_arch_name_in_every_dtype(trm_checkpoint: Path, forward_dtype: str) -> None:
    """arch.name picks TRM; seq_len, which upstream's yaml leaves to the dataset, comes from mlp_t's width."""
    loaded = hrm_ref.load_checkpoint(trm_checkpoint, forward_dtype=forward_dtype)
    assert loaded.config == hrm_ref.PRESETS["trm-tiny-mlp-t"].replace(forward_dtype=forward_dtype)
    outputs = hrm_ref.run(loaded, hrm_ref.random_batch(loaded.config, 2, seed=0), budget=2)
    assert outputs["logits"].dtype == loaded.config.torch_dtype and torch.isfinite(outputs["logits"]).all()


def rename_arch(checkpoint: Path, **changes) -> None:
    config_path = checkpoint.parent / "all_config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["arch"] |= changes
    config_path.write_text(yaml.dump(config))


@pytest.mark.parametrize("changes, message", [
    ({"name": "hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1", "H_layers": 2},
     r"all_config\.yaml: config pos_encodings 'none' is a TRM option: it needs family 'trm'"),
    ({"name": "hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1", "H_layers": 2, "mlp_t": False,
      "no_ACT_continue": False, "pos_encodings": "rope"}, r"missing keys inner\.H_level\.layers\.0\.mlp\.down_proj"),
    ({"name": "recursive_reasoning.trm_singlez@TinyRecursiveReasoningModel_ACTV1"},
     r"all_config\.yaml: arch\.name 'recursive_reasoning\.trm_singlez@TinyRecursiveReasoningModel_ACTV1' is not a "
     r"model hrmc runs"),
    ({"family": "hrm"}, r"arch\.family 'hrm' contradicts arch\.name"),
])
def test_arch_name_decides_the_model(trm_checkpoint: Path, changes: dict, message: str) -> None:
    rename_arch(trm_checkpoint, **changes)
    with pytest.raises(HrmcError, match=message):
        hrm_ref.load_checkpoint(trm_checkpoint)


def test_trm_yaml_without_trm_keys_takes_upstream_trms_defaults() -> None:
    arch = {"name": TRM_NAME, "hidden_size": 64, "loss": {"name": "losses@ACTLossHead"}, "halt_exploration_prob": 0.1}
    assert arch_section({"arch": arch}, "x") == {"family": "trm", "hidden_size": 64, "puzzle_emb_len": 16,
                                                 "no_ACT_continue": True}
    hrm = arch | {"name": "hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1"}
    assert arch_section({"arch": hrm}, "x") == {"family": "hrm", "hidden_size": 64}


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("_orig_mod.model.inner.L_level.layers.1.mlp_t.down_proj.weight"),
     r"missing keys inner\.L_level\.layers\.1\.mlp_t\.down_proj\.weight"),
    (lambda s: s.__setitem__("_orig_mod.model.inner.H_level.layers.0.mlp.down_proj.weight", torch.zeros(64, 256)),
     r"unexpected keys inner\.H_level\.layers\.0\.mlp\.down_proj\.weight"),
    (lambda s: s.__setitem__("_orig_mod.model.inner.L_level.layers.0.self_attn.o_proj.weight", torch.zeros(64, 64)),
     r"unexpected keys inner\.L_level\.layers\.0\.self_attn\.o_proj\.weight"),
    (lambda s: s.__setitem__("_orig_mod.model.inner.L_level.layers.0.mlp_t.gate_up_proj.weight", torch.zeros(512, 20)),
     r"shape mismatch inner\.L_level\.layers\.0\.mlp_t\.gate_up_proj\.weight \(512, 20\) \(model \(512, 19\)\)"),
])
def test_bad_trm_keys_are_named(trm_checkpoint: Path, change, message: str) -> None:
    rewrite(trm_checkpoint, change)
    with pytest.raises(CheckpointError, match=message):
        hrm_ref.load_checkpoint(trm_checkpoint)


def test_unreadable_files_are_named(tmp_path: Path, upstream_checkpoint: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint not found: .*nope"):
        hrm_ref.load_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="is a directory"):
        hrm_ref.load_checkpoint(tmp_path)
    garbage = upstream_checkpoint.parent / "step_1"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=f"cannot read checkpoint {garbage}"):
        hrm_ref.load_checkpoint(garbage)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="cannot read safetensors checkpoint"):
        hrm_ref.load_checkpoint(broken)


def test_a_pickled_object_is_refused(tmp_path: Path) -> None:
    (tmp_path / "all_config.yaml").write_text("arch: {hidden_size: 8}")
    torch.save({"inner.x": torch.nn.Linear(2, 2)}, tmp_path / "step_0")  # weights_only=True refuses modules
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        hrm_ref.load_checkpoint(tmp_path / "step_0")


def test_missing_or_bad_config_is_named(upstream_checkpoint: Path) -> None:
    config = upstream_checkpoint.parent / "all_config.yaml"
    config.write_text("arch: [unclosed")
    with pytest.raises(CheckpointError, match="cannot parse config .*all_config.yaml"):
        hrm_ref.load_checkpoint(upstream_checkpoint)
    config.write_text(yaml.dump({"arch": {"name": "x"}}))
    with pytest.raises(HrmcError, match="all_config.yaml: no arch.hidden_size"):
        hrm_ref.load_checkpoint(upstream_checkpoint)
    config.unlink()
    with pytest.raises(CheckpointError, match="no all_config.yaml beside .*pass the architecture with --config"):
        hrm_ref.load_checkpoint(upstream_checkpoint)


@pytest.mark.parametrize("key, value, message", [
    ("expansion", -400, "config expansion must be positive and finite, got -400"),
    ("hidden_size", 64.0, "config hidden_size must be an integer, got 64.0"),
    ("seq_len", -5, "config seq_len must be at least 1, got -5"),
    ("rms_norm_eps", float("nan"), "config rms_norm_eps must be a number"),
    ("halt_max_steps", 5000, "config halt_max_steps 5000 is beyond what hrmc supports: at most 1024 ACT steps"),
    # each key's type first, before a value is compared with the weights (or, here, with 0: a traceback)
    ("hidden_size", "64", "config hidden_size must be an integer, got the string '64'"),
    ("hidden_size", True, "config hidden_size must be an integer, got True"),
    ("puzzle_emb_ndim", "96", "config puzzle_emb_ndim must be an integer, got the string '96'"),
    ("mlp_t", "yes", "config mlp_t must be true or false, got the string 'yes'"),
    ("expansion", 10**400, "config expansion must be a number, got 1000"),
    # what the model computes with in float32 is a normal float32: 1e300 is inf there, 1e-45 flushed to 0
    ("rms_norm_eps", 1e300, "config rms_norm_eps must be a positive normal float32, in [1.18e-38, 3.4e+38], got 1e+300"),
    ("rms_norm_eps", 1e-45, "config rms_norm_eps must be a positive normal float32"),
    ("rope_theta", 1e39, "config rope_theta must be a positive normal float32"),
    # named before a model that wide is built (a traceback, or every byte of memory)
    ("expansion", 1e300, "arch.expansion 1e+300 does not give the SwiGLU width of "
                         "inner.L_level.layers.0.mlp.gate_up_proj.weight, 256"),
])
def test_arch_values_of_the_wrong_kind_are_named_with_the_file(upstream_checkpoint: Path, key: str, value,
                                                               message: str) -> None:
    config_path = upstream_checkpoint.parent / "all_config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["arch"][key] = value
    config_path.write_text(yaml.dump(config))
    with pytest.raises(HrmcError, match=re.escape(f"all_config.yaml: {message}")):
        hrm_ref.load_checkpoint(upstream_checkpoint)


def test_safetensors_arch_metadata_that_is_not_json_is_named(tiny: HRM, tmp_path: Path) -> None:
    import safetensors.torch

    tensors = {key: value.contiguous() for key, value in tiny.state_dict().items()}
    safetensors.torch.save_file(tensors, str(tmp_path / "m.safetensors"), metadata={"hrmc.arch": "{not json"})
    with pytest.raises(CheckpointError, match="m.safetensors: metadata hrmc.arch is not JSON"):
        hrm_ref.load_checkpoint(tmp_path / "m.safetensors")
