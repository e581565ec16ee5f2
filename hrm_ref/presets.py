"""Built-in models with seeded random weights, so every command works without a download.

Upstream initialises the q head to (0, -5) and the puzzle embeddings to zero, which hides both
paths from any test; here every weight is random (truncated LeCun normal, as upstream's
`trunc_normal_init_` for linear layers) with zero biases, so under `q-halt` samples halt at
varied steps (tiny, 64 random samples: about half before the budget, none at step 1).

The trained presets (`TRAINED_PRESETS`: 4×4 and 6×6 Sudoku on the tiny core, 4×4 also as a TRM)
load their committed weights from `fixtures/` instead; `test_set_path(name)` is their held-out
test set with labels.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hrmc.hrm_ref.checkpoint import load_checkpoint
from hrmc.hrm_ref.config import HRMConfig
from hrmc.hrm_ref.model import HRM
from hrmc.errors import ConfigError

PRESETS: dict[str, HRMConfig] = {
    # Small enough for property tests; puzzle_emb_ndim 96 > hidden 64 exercises the padding path.
    "tiny": HRMConfig(vocab_size=11, hidden_size=64, num_heads=4, H_cycles=2, L_cycles=2, H_layers=2, L_layers=2,
                      expansion=4.0, puzzle_emb_ndim=96, num_puzzle_identifiers=8, halt_max_steps=8, seq_len=16),
    # Upstream's default arch (config/arch/hrm_v1.yaml) on Sudoku-Extreme: 27,275,266 parameters.
    "sudoku": HRMConfig(vocab_size=11, hidden_size=512, num_heads=8, H_cycles=2, L_cycles=2, H_layers=4, L_layers=4,
                        expansion=4.0, puzzle_emb_ndim=512, num_puzzle_identifiers=1, halt_max_steps=16, seq_len=81),
}
# The variants of the design documents, each on the tiny core.
_TINY_CORE = dict(hidden_size=64, num_heads=4, H_cycles=2, L_cycles=2, H_layers=2, L_layers=2, expansion=4.0)
PRESETS |= {
    "nibble": HRMConfig(vocab_size=256, input_mode="bytes", dead_energy_accumulators=2, free_energy_head=True,
                        halt_max_steps=8, seq_len=32, **_TINY_CORE),
    "hex": HRMConfig(vocab_size=256, input_mode="bytes", dead_energy_accumulators=1, hex_head="sha256",
                     halt_max_steps=8, seq_len=32, **_TINY_CORE),
    "nxt": HRMConfig(vocab_size=11, act=False, output_norm="stablemax", puzzle_emb_ndim=64,
                     num_puzzle_identifiers=4, seq_len=16, **_TINY_CORE).with_depth("normal"),
    "denoiser": HRMConfig(vocab_size=0, input_mode="latent", act=False, seq_len=16, **_TINY_CORE),
    # Controllers for a small frozen LLM (d_model 96, vocabulary 128), 12 token states per sample.
    "controller-grb": HRMConfig(vocab_size=128, input_mode="hidden", d_model=96, injector="grb", segments=2,
                                eval_segments=4, inner_T=2, seq_len=12, **_TINY_CORE),
    "controller-cab": HRMConfig(vocab_size=128, input_mode="hidden", d_model=96, injector="cab", mem_tokens=4,
                                segments=2, eval_segments=4, inner_T=2, seq_len=12, **_TINY_CORE),
}
# TRM (docs/design.md §2, the family): upstream's sudoku (mlp_t) and maze (attention) recipes, and
# both forms on the tiny core, where puzzle_emb_len 3 > ceil(96 / 64) exercises the explicit length.
_TRM = dict(family="trm", H_layers=0, L_layers=2, puzzle_emb_len=16, no_ACT_continue=True)  # config/arch/trm.yaml
_TINY_TRM = _TINY_CORE | _TRM | dict(puzzle_emb_ndim=96, puzzle_emb_len=3, num_puzzle_identifiers=8, halt_max_steps=8)
PRESETS |= {
    # README's Sudoku-Extreme mlp_t run: H 3 × L 6, no positions; 5,028,866 parameters.
    "trm-sudoku": HRMConfig(vocab_size=11, hidden_size=512, num_heads=8, H_cycles=3, L_cycles=6, expansion=4.0,
                            puzzle_emb_ndim=512, num_puzzle_identifiers=1, seq_len=81, mlp_t=True,
                            pos_encodings="none", **_TRM),
    # README's Maze-Hard run (30×30, vocabulary PAD + "# SGo"): H 3 × L 4, RoPE; 6,822,914 parameters.
    "trm-maze": HRMConfig(vocab_size=6, hidden_size=512, num_heads=8, H_cycles=3, L_cycles=4, expansion=4.0,
                          puzzle_emb_ndim=512, num_puzzle_identifiers=1, seq_len=900, **_TRM),
    "trm-tiny": HRMConfig(vocab_size=11, seq_len=16, **_TINY_TRM),
    "trm-tiny-mlp-t": HRMConfig(vocab_size=11, seq_len=16, mlp_t=True, pos_encodings="none", **_TINY_TRM),
}
# Trained on real tasks (`python -m hrmc.hrm_ref.train NAME`, see docs/fixtures.md): the weights are the
# committed `fixtures/NAME.safetensors`, the held-out puzzles with labels `fixtures/NAME-test.npz`.
# Their configs are stated here and checked equal to the file's metadata when loaded.
TRAINED_PRESETS = ("sudoku4", "sudoku6", "trm-sudoku4")
PRESETS |= {
    "sudoku4": HRMConfig(vocab_size=6, puzzle_emb_ndim=64, num_puzzle_identifiers=1, halt_max_steps=8, seq_len=16,
                         **_TINY_CORE),
    "sudoku6": HRMConfig(vocab_size=8, puzzle_emb_ndim=64, num_puzzle_identifiers=1, halt_max_steps=8, seq_len=36,
                         **_TINY_CORE),
    # sudoku4's task and puzzle embedding (one position) as a TRM: one 2-layer network, H 2 × L 3, RoPE.
    "trm-sudoku4": HRMConfig(vocab_size=6, puzzle_emb_ndim=64, num_puzzle_identifiers=1, halt_max_steps=8, seq_len=16,
                             **_TINY_CORE | _TRM | dict(H_cycles=2, L_cycles=3, puzzle_emb_len=1)),
}
FIXTURES_DIR = Path(__file__).parent / "fixtures"
PRESET_SEED = 20250626


def _truncated_normal(shape: torch.Size, std: float, generator: torch.Generator) -> torch.Tensor:
    tensor = torch.empty(shape)
    return torch.nn.init.trunc_normal_(tensor, std=std, a=-2 * std, b=2 * std, generator=generator)


@torch.no_grad()
def randomize_weights(model: HRM, seed: int) -> HRM:
    """Fill every weight and buffer of `model` from `seed` (same seed, same bits, any machine)."""
    generator = torch.Generator().manual_seed(seed)
    hidden_std = model.config.hidden_size ** -0.5
    for name, tensor in sorted(model.state_dict().items()):
        if name.endswith("_init"):
            std = 1.0
        elif name.endswith(("embedding_weight", "puzzle_emb.weights")):
            std = hidden_std  # upstream's embedding init, later scaled by √hidden
        elif name.endswith(("bias", "gate")):
            continue  # zero biases; gates keep the config's gate_init
        else:
            std = tensor.shape[-1] ** -0.5  # LeCun: 1/√fan_in
        tensor.copy_(_truncated_normal(tensor.shape, std, generator))
    return model


def _trained(name: str) -> str:
    if name not in TRAINED_PRESETS:
        raise ConfigError(f"{name!r} is not a trained preset: choose one of {', '.join(TRAINED_PRESETS)}")
    return name


def checkpoint_path(name: str) -> Path:
    """The committed weights of trained preset `name` (safetensors, arch config in its metadata)."""
    return FIXTURES_DIR / f"{_trained(name)}.safetensors"


def test_set_path(name: str) -> Path:
    """The held-out test set of trained preset `name`: an npz with inputs, puzzle_identifiers, labels."""
    return FIXTURES_DIR / f"{_trained(name)}-test.npz"


test_set_path.__test__ = False  # not a pytest test when imported into a test module


def build_preset(name: str, forward_dtype: str = "float32") -> HRM:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    if name in TRAINED_PRESETS:
        model = load_checkpoint(checkpoint_path(name), forward_dtype=forward_dtype)
        expected = PRESETS[name].replace(forward_dtype=forward_dtype)
        if model.config != expected:
            raise ConfigError(f"{checkpoint_path(name)}: its config {model.config} is not preset {name!r}'s {expected}")
        return model
    model = HRM(PRESETS[name].replace(forward_dtype=forward_dtype))
    return randomize_weights(model, PRESET_SEED).eval()
