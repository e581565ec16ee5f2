"""hrm_ref against upstream (HRM and TRM): state_dict keys, parameter counts, and outputs of every ACT step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from hrmc import hrm_ref
from hrmc.hrm_ref import HRM, HRMConfig
from hrmc.hrm_ref.layers import rms_norm
from hrmc.hrm_ref.presets import randomize_weights
from tests.conftest import upstream_arch, write_upstream_checkpoint
from tests.hrm_ref.upstream_oracle import ORACLES, UpstreamOracle

ATOL = RTOL = 1e-5  # the fidelity contract's step tolerance (docs/design.md §4)
TRM_FORMS = ("trm-tiny", "trm-tiny-mlp-t")  # attention, and mlp_t with no positions
INNER_KEYS = {"inner.H_init", "inner.L_init", "inner.embed_tokens.embedding_weight", "inner.lm_head.weight",
              "inner.q_head.weight", "inner.q_head.bias", "inner.puzzle_emb.weights"}  # outside the levels


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    excess = (actual.double() - expected.double()).abs() - (ATOL + RTOL * expected.double().abs())
    assert excess.max() <= 0, f"{what}: max |a-b| {(actual - expected).abs().max():.3g} over tolerance"


def oracle_for(model: HRM) -> UpstreamOracle:
    arch = upstream_arch(model)
    return ORACLES[arch["name"]](model.state_dict(), arch)


def expected_q_halt(reference: dict[str, torch.Tensor], budget: int,
                    oracle: UpstreamOracle) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Upstream outputs frozen at each row's first step whose q values say halt (or the budget)."""
    wants_halt = oracle.halts(reference["q_halt_logits"], reference["q_continue_logits"])
    wants_halt[budget - 1] = True
    halting_step = wants_halt.int().argmax(0)  # 0-based step of the first halt
    steps = int(halting_step.max()) + 1
    index = torch.minimum(torch.arange(steps)[:, None], halting_step[None, :])
    frozen = {name: value[index, torch.arange(value.shape[1])] for name, value in reference.items()}
    return frozen, halting_step + 1


def test_state_dict_keys_are_upstreams(tiny: HRM) -> None:
    expected = set(INNER_KEYS)
    for level, layers in (("H_level", tiny.config.H_layers), ("L_level", tiny.config.L_layers)):
        for i in range(layers):
            expected |= {f"inner.{level}.layers.{i}.{name}.weight" for name in
                         ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")}
    assert set(tiny.state_dict()) == expected


@pytest.mark.parametrize("preset, mixer", [("trm-tiny", ("self_attn.qkv_proj", "self_attn.o_proj")),
                                            ("trm-tiny-mlp-t", ("mlp_t.gate_up_proj", "mlp_t.down_proj"))])
def test_trm_state_dict_keys_are_upstreams(preset: str, mixer: tuple[str, ...]) -> None:
    """TRM's one network is L_level: no H_level keys, whatever H_layers says."""
    expected = INNER_KEYS | {f"inner.L_level.layers.{i}.{name}.weight" for i in range(2)
                             for name in (*mixer, "mlp.gate_up_proj", "mlp.down_proj")}
    assert set(hrm_ref.build_preset(preset).state_dict()) == expected


def test_trm_sizes_follow_upstream() -> None:
    """mlp_t is a SwiGLU over the 16 + 81 positions: inner width round(4·97·2/3) = 259, up to 512."""
    sudoku = HRM(hrm_ref.PRESETS["trm-sudoku"])
    shapes = {name: tuple(value.shape) for name, value in sudoku.state_dict().items()}
    assert shapes["inner.L_level.layers.1.mlp_t.gate_up_proj.weight"] == (1024, 97)
    assert shapes["inner.L_level.layers.1.mlp_t.down_proj.weight"] == (97, 512)
    assert sudoku.num_parameters() == 5_028_866
    assert HRM(hrm_ref.PRESETS["trm-maze"]).num_parameters() == 6_822_914


def test_learned_positions_add_the_position_table() -> None:
    model = HRM(HRMConfig(vocab_size=5, hidden_size=32, num_heads=2, pos_encodings="learned", seq_len=6,
                          puzzle_emb_ndim=40, H_layers=1, L_layers=1))
    assert model.state_dict()["inner.embed_pos.embedding_weight"].shape == (6 + 2, 32)


def test_swiglu_width_and_parameter_count_follow_upstream() -> None:
    sudoku = hrm_ref.PRESETS["sudoku"]
    assert sudoku.intermediate_size == 1536  # round(4·512·2/3) = 1365, up to a multiple of 256
    assert HRM(sudoku).num_parameters() == 27_275_266


def assert_matches_upstream(checkpoint: Path, policy: str) -> None:
    """hrm_ref loading `checkpoint` runs every ACT step as the oracle of its arch.name does on the raw file."""
    model = hrm_ref.load_checkpoint(checkpoint)
    raw = torch.load(checkpoint, weights_only=True)
    weights = {key.removeprefix("_orig_mod.model."): value.float() for key, value in raw.items()}
    arch = yaml.safe_load((checkpoint.parent / "all_config.yaml").read_text())["arch"]
    oracle = ORACLES[arch["name"]](weights, arch)
    budget = arch["halt_max_steps"]
    batch = hrm_ref.random_batch(model.config, 32, seed=1, seq_len=16)
    ours = hrm_ref.run(model, batch, policy)
    reference = oracle.evaluate(batch["inputs"], batch.get("puzzle_identifiers"))
    if policy == "max-steps":
        expected, halting = reference, torch.full((32,), budget)
    else:
        expected, halting = expected_q_halt(reference, budget, oracle)
        assert 1 < len(set(halting.tolist())), "the model should halt samples at different steps"
    assert torch.equal(ours["steps"][-1], halting.to(torch.int32))
    assert ours["logits"].shape[0] == expected["logits"].shape[0]
    assert expected["logits"].shape[0] == budget or policy == "q-halt"
    for name in ("logits", "q_halt_logits", "q_continue_logits", "z_H", "z_L"):
        assert_close(ours[name], expected[name], name)


@pytest.mark.parametrize("policy", hrm_ref.POLICIES)
def test_upstream_checkpoint_matches_upstream_on_every_step(upstream_checkpoint: Path, policy: str) -> None:
    """The checkpoint as upstream writes it (compiled-model keys, bfloat16 H_init, all_config.yaml)."""
    assert_matches_upstream(upstream_checkpoint, policy)


@pytest.mark.parametrize("preset", TRM_FORMS)
@pytest.mark.parametrize("policy, no_ACT_continue", [("max-steps", True), ("q-halt", True), ("q-halt", False)])
def test_upstream_trm_checkpoint_matches_upstream_on_every_step(tmp_path: Path, preset: str, policy: str,
                                                                no_ACT_continue: bool) -> None:
    """A TRM checkpoint as TinyRecursiveModels' pretrain.py writes it, under both halting rules."""
    model = hrm_ref.build_preset(preset)
    model = model.twin(model.config.replace(no_ACT_continue=no_ACT_continue))
    assert_matches_upstream(write_upstream_checkpoint(model, tmp_path / "run"), policy)


small_configs = st.builds(
    HRMConfig, vocab_size=st.integers(2, 12), hidden_size=st.sampled_from([16, 32]), num_heads=st.sampled_from([1, 2, 4]),
    H_cycles=st.integers(1, 3), L_cycles=st.integers(1, 3), H_layers=st.integers(1, 2), L_layers=st.integers(1, 2),
    expansion=st.sampled_from([1.0, 2.5, 4.0]), puzzle_emb_ndim=st.sampled_from([0, 8, 32, 48]),
    num_puzzle_identifiers=st.integers(1, 3), pos_encodings=st.sampled_from(["rope", "learned"]),
    halt_max_steps=st.integers(1, 4), seq_len=st.integers(1, 9))


# The same space as TRM: mlp_t or attention, any positions, an explicit puzzle_emb_len or ceil(ndim / hidden).
small_trm_configs = small_configs.flatmap(lambda config: st.builds(
    config.replace, family=st.just("trm"), mlp_t=st.booleans(), no_ACT_continue=st.booleans(),
    pos_encodings=st.sampled_from(["rope", "learned", "none"]),
    puzzle_emb_len=st.sampled_from([0, 3]) if config.puzzle_emb_ndim else st.just(0)))


@settings(max_examples=25, deadline=None)
@given(config=small_configs, batch_size=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_random_configs_match_upstream(config: HRMConfig, batch_size: int, seed: int) -> None:
    assert_random_model_matches_upstream(config, batch_size, seed)


@settings(max_examples=25, deadline=None)
@given(config=small_trm_configs, batch_size=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_random_trm_configs_match_upstream(config: HRMConfig, batch_size: int, seed: int) -> None:
    assert_random_model_matches_upstream(config, batch_size, seed)


def assert_random_model_matches_upstream(config: HRMConfig, batch_size: int, seed: int) -> None:
    model = randomize_weights(HRM(config), seed).eval()
    batch = hrm_ref.random_batch(config, batch_size, seed)
    ours = hrm_ref.run(model, batch, "max-steps")
    reference = oracle_for(model).evaluate(batch["inputs"], batch.get("puzzle_identifiers"))
    for name in ("logits", "q_halt_logits", "q_continue_logits", "z_H", "z_L"):
        assert_close(ours[name], reference[name], name)


@pytest.mark.parametrize("preset", ("tiny", *TRM_FORMS))
def test_float64_twin_stays_within_float32_rounding_after_one_step(preset: str) -> None:
    tiny = hrm_ref.build_preset(preset)
    batch = hrm_ref.random_batch(tiny.config, 8, seed=2)
    twin = tiny.with_dtype("float64")
    carry = hrm_ref.initial_carry(tiny, batch)
    _, ours = hrm_ref.step(tiny, carry, batch, "max-steps", 8)
    carry64 = hrm_ref.initial_carry(twin, batch)
    _, exact = hrm_ref.step(twin, carry64, batch, "max-steps", 8)
    assert exact["logits"].dtype == torch.float64
    drift = (ours["logits"].double() - exact["logits"]).abs().max()
    assert 0 < drift < 1e-4  # float32 rounding, not a different function


@pytest.mark.parametrize("preset", ("tiny", *TRM_FORMS))
def test_bfloat16_forward_runs_close_to_float32(preset: str) -> None:
    tiny = hrm_ref.build_preset(preset)
    batch = hrm_ref.random_batch(tiny.config, 4, seed=3)
    carry = hrm_ref.initial_carry(tiny, batch)
    _, full = hrm_ref.step(tiny, carry, batch, "max-steps", 8)
    half = tiny.with_dtype("bfloat16")
    _, low = hrm_ref.step(half, hrm_ref.initial_carry(half, batch), batch, "max-steps", 8)
    assert low["logits"].dtype == torch.bfloat16 and low["q_halt_logits"].dtype == torch.float32
    scale = full["logits"].abs().max()
    assert np.isfinite(low["logits"].float().numpy()).all()
    assert (low["logits"].float() - full["logits"]).abs().max() < 0.1 * scale


def _rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).square().mean().sqrt())


@pytest.mark.parametrize("preset", ("tiny", "sudoku4", *TRM_FORMS))
def test_float16_forward_is_the_model_in_float16_with_its_float32_islands(preset: str) -> None:
    """float16 weights and activations, the q head's output in float32; against float64 from the same start it
    errs more than float32 and less than bfloat16 (8 bits of mantissa fewer), on every output."""
    model = hrm_ref.build_preset(preset)
    batch = hrm_ref.random_batch(model.config, 4, seed=5)
    outputs = {}
    for dtype in ("float64", "float32", "float16", "bfloat16"):
        twin = model.with_dtype(dtype)
        carry, outputs[dtype] = hrm_ref.step(twin, hrm_ref.initial_carry(twin, batch), batch, "max-steps", 8)
        outputs[dtype] |= {"z_H": carry.z_H, "z_L": carry.z_L}
    half = outputs["float16"]
    assert half["logits"].dtype == half["z_H"].dtype == torch.float16 and half["q_halt_logits"].dtype == torch.float32
    for name, exact in outputs["float64"].items():
        errors = [_rmse(outputs[dtype][name], exact) for dtype in ("float32", "float16", "bfloat16")]
        assert errors[0] < errors[1] < errors[2], (name, errors)


def test_float16_rms_norm_squares_in_float32() -> None:
    """|x| = 1000 squares to 1e6, beyond float16's 65504: the variance is an island of float32."""
    x = torch.full((1, 2, 8), 1000.0, dtype=torch.float16)
    x[..., ::2] = -1000.0
    normalised = rms_norm(x, 1e-5)
    assert normalised.dtype == torch.float16 and torch.equal(normalised.abs(), torch.ones_like(x))


def test_weights_rounded_to_float16_are_float16_values_and_leave_the_model_alone(tiny: HRM) -> None:
    before = {name: tensor.clone() for name, tensor in tiny.state_dict().items()}
    rounded = tiny.with_weights_rounded(torch.float16)
    for (name, ours), theirs in zip(tiny.state_dict().items(), rounded.state_dict().values()):
        if ours.is_floating_point():
            assert torch.equal(theirs, theirs.half().float()), name
    changed = [name for name, p in tiny.state_dict().items() if not torch.equal(p, rounded.state_dict()[name])]
    assert changed and all(torch.equal(before[name], p) for name, p in tiny.state_dict().items())
    batch = hrm_ref.random_batch(tiny.config, 2, seed=4)
    _, ours = hrm_ref.step(tiny, hrm_ref.initial_carry(tiny, batch), batch, "max-steps", 8)
    _, theirs = hrm_ref.step(rounded, hrm_ref.initial_carry(rounded, batch), batch, "max-steps", 8)
    drift = (ours["logits"] - theirs["logits"]).abs().max()
    assert 0 < drift < 1e-2  # float16 weight rounding, float32 arithmetic
