"""The design documents' variants: byte/nibble front end, hex and free-energy heads, N×T mode, denoiser."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from hrmc import hrm_ref
from hrmc.hrm_ref import HRM, HRMConfig
from hrmc.hrm_ref.act import denoise
from hrmc.hrm_ref.frontends import COUNTER_MAX, dead_energy_counters, encode_bytes
from hrmc.hrm_ref.heads import byte_error_rate, decode_hex, hex_accuracy, stablemax
from hrmc.errors import ConfigError, InputError

EXPECTED_OUTPUTS = {  # preset → {output: shape per step for batch 3}
    "nibble": {"logits": (3, 32, 256), "q_halt_logits": (3,), "free_energy": (3, 32)},
    "hex": {"logits": (3, 32, 256), "hex_logits": (3, 64, 16)},
    "nxt": {"logits": (3, 16, 11), "probs": (3, 16, 11)},
    "denoiser": {"eps": (3, 16, 64)},
}


@pytest.mark.parametrize("preset", EXPECTED_OUTPUTS)
def test_variant_outputs_and_shapes(preset: str) -> None:
    model = hrm_ref.build_preset(preset)
    out = hrm_ref.run(model, hrm_ref.random_batch(model.config, 3, seed=0))
    steps = out["steps"].shape[0]
    assert steps == (model.config.halt_max_steps if model.config.act else 1)
    for name, shape in EXPECTED_OUTPUTS[preset].items():
        assert tuple(out[name].shape) == (steps, *shape), name
    if "free_energy" in out:
        assert ((out["free_energy"] > 0) & (out["free_energy"] < 1)).all()


def test_counters_saturate_and_never_wrap() -> None:
    doubled = torch.zeros(1, 300, dtype=torch.int32)  # 0x00: high − low = 0, event 0 every byte
    counts = dead_energy_counters(doubled, accumulators=2)
    assert counts[0, :, 0].tolist() == [min(i + 1, COUNTER_MAX) for i in range(300)]
    assert counts[0, :, 1].tolist() == [0] * 300
    assert counts.max() == COUNTER_MAX and counts.dtype == torch.int32


def test_counters_count_nibble_difference_events() -> None:
    data = torch.tensor([[0x21, 0x10, 0x33, 0x32, 0xF0]], dtype=torch.int32)  # (hi − lo) mod 16: 1, 1, 0, 1, 15
    assert dead_energy_counters(data, 2)[0].tolist() == [[0, 1], [0, 2], [1, 2], [1, 3], [1, 3]]


def test_film_identity_gives_the_plain_byte_embedding() -> None:
    model = hrm_ref.build_preset("nibble")
    with torch.no_grad():
        model.inner.byte_film.film_proj.weight.zero_()
        model.inner.byte_film.film_proj.bias.zero_()  # γ = 1, β = 0
    batch = hrm_ref.random_batch(model.config, 2, seed=1)
    plain = model.inner.embed_scale * model.inner.embed_tokens.embedding_weight[batch["inputs"].long()]
    assert torch.equal(model.inner.input_embeddings(batch), plain)


def test_film_conditioning_changes_the_embedding() -> None:
    model = hrm_ref.build_preset("nibble")
    batch = hrm_ref.random_batch(model.config, 2, seed=1)
    plain = model.inner.embed_scale * model.inner.embed_tokens.embedding_weight[batch["inputs"].long()]
    assert not torch.allclose(model.inner.input_embeddings(batch), plain)


def test_prefix_suffix_mode_is_exactly_the_ends_of_the_full_head() -> None:
    full = hrm_ref.build_preset("hex")
    ends = HRM(full.config.replace(hex_prefix_suffix=True))
    ends.load_state_dict(full.state_dict())
    batch = hrm_ref.random_batch(full.config, 3, seed=2)
    whole, short = hrm_ref.run(full, batch)["hex_logits"], hrm_ref.run(ends.eval(), batch)["hex_logits"]
    assert short.shape[-2] == 16
    assert torch.equal(short, torch.cat((whole[..., :8, :], whole[..., -8:, :]), dim=-2))


def test_hex_decoding_and_metrics() -> None:
    digest = hashlib.sha256(b"hrmc").hexdigest()
    logits = np.eye(16)[["0123456789abcdef".index(c) for c in digest]][None]
    assert decode_hex(logits) == [digest]
    wrong = ("f" if digest[0] != "f" else "0") + digest[1:]
    assert hex_accuracy([wrong], [digest]) == 63 / 64
    assert byte_error_rate([wrong], [digest]) == 1 / 32


def test_stablemax_normalises_as_defined() -> None:
    logits = torch.tensor([[-3.0, -0.5, 0.0, 2.0]])
    scores = torch.tensor([[1 / 4, 1 / 1.5, 1.0, 3.0]])
    assert torch.allclose(stablemax(logits), scores / scores.sum())


def test_nxt_probabilities_sum_to_one_and_depth_sets_the_cycles() -> None:
    model = hrm_ref.build_preset("nxt")
    probs = hrm_ref.run(model, hrm_ref.random_batch(model.config, 2, seed=3))["probs"]
    assert torch.allclose(probs.sum(-1), torch.ones(1, 2, 16))
    assert model.config.with_depth("extreme").H_cycles == 6 and model.config.with_depth("deep").L_cycles == 2
    with pytest.raises(InputError, match="no ACT"):
        hrm_ref.run(model, hrm_ref.random_batch(model.config, 2, seed=3), "q-halt")


def test_denoiser_uses_its_time_and_condition() -> None:
    model = hrm_ref.build_preset("denoiser")
    x = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(0))
    base = denoise(model, x, torch.tensor([10, 10]))
    assert not torch.equal(base, denoise(model, x, torch.tensor([500, 500])))
    assert not torch.equal(base, denoise(model, x, torch.tensor([10, 10]), torch.ones_like(x)))


def test_byte_helper() -> None:
    rows = encode_bytes(["hi", b"\xff\x00xyz"], seq_len=4)
    assert rows.tolist() == [[104, 105, 0, 0], [255, 0, 120, 121]] and rows.dtype == np.int32


@pytest.mark.parametrize("change, message", [
    ({"hex_head": "md5"}, "hex_head 'md5' is not one of None, sha1, sha256"),
    ({"dead_energy_accumulators": -1}, r"dead_energy_accumulators must be in \[0, 16\], got -1"),
    ({"input_mode": "pixels"}, "input_mode 'pixels'"),
    ({"output_norm": "sparsemax"}, "output_norm 'sparsemax'"),
])
def test_bad_variant_configs_are_named(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        hrm_ref.PRESETS["nibble"].replace(**change)


def test_bytes_mode_needs_the_byte_vocabulary() -> None:
    with pytest.raises(ConfigError, match="needs vocab_size 256"):
        HRMConfig(vocab_size=11, input_mode="bytes")
