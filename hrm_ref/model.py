"""HRM ACT v1: module tree and state_dict keys as upstream's `models/hrm/hrm_act_v1.py`.

`HRM.state_dict()` keys are upstream's without the loss-head prefix: `inner.H_level.layers.0.…`.
One call of `HRMInner.forward` is one ACT step's worth of reasoning (H_cycles × L_cycles L-steps
and H_cycles H-steps); the ACT loop and halting live in `hrm_ref.act`. The variants of the design
documents (byte front end, hex and free-energy heads, N×T mode, denoiser) are config options of
this one model; with none enabled it is upstream's model, bit for bit. So is TRM (`family: trm`,
docs/design.md §2): no H_level, its one network `L_level` does the H-steps too, and its blocks may
mix positions with a SwiGLU (`mlp_t`) instead of attention.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hrmc.hrm_ref.compression import COMPRESSIONS, compress, compressible
from hrmc.hrm_ref.config import HEX_SYMBOLS, HRMConfig
from hrmc.hrm_ref.controller import HiddenFrontEnd, VocabBias, make_injector
from hrmc.hrm_ref.frontends import ByteFiLM, LatentFrontEnd
from hrmc.hrm_ref.heads import FreeEnergyHead, HexHead, normalise
from hrmc.hrm_ref.layers import (Attention, CastedEmbedding, CastedLinear, PuzzleEmbedding, RotaryEmbedding, SwiGLU,
                            compute_dtype, rms_norm)

CosSin = tuple[torch.Tensor, torch.Tensor] | None
# Named input tensors: `inputs` and `puzzle_identifiers` (tokens, bytes), `x_t`, `t`, `cond` (latent)
# or `hidden`, `prompt_mask` (the controller).
Batch = dict[str, torch.Tensor]

# The module whose weights each head output reads (state_dict prefixes): what a graph whose head outputs were
# stripped (`hrmc lower --strip`) no longer stores.
HEAD_MODULES = {"logits": "inner.lm_head.", "probs": "inner.lm_head.", "q_halt_logits": "inner.q_head.",
                "q_continue_logits": "inner.q_head.", "hex_logits": "inner.hex_head.",
                "free_energy": "inner.free_energy_head."}
# The module each optional input is read through: a graph exported without that input does not store it.
INPUT_MODULES = {"cond": "inner.latent.cond_proj."}


class Block(nn.Module):
    """Post-norm transformer block: h = rms(h + attn(h)); h = rms(h + mlp(h)).

    With TRM's `mlp_t` a SwiGLU across the positions (`mlp_t`, as wide as puzzle_emb_len + seq_len)
    replaces attention; it runs transposed, and so does its norm, which normalises over the positions.
    """

    def __init__(self, config: HRMConfig) -> None:
        super().__init__()
        self.mixes_positions_by_mlp = config.mlp_t
        if config.mlp_t:
            positions = config.puzzle_emb_len + config.seq_len
            self.mlp_t = SwiGLU(positions, config.swiglu_width(positions))
        else:
            self.self_attn = Attention(config.hidden_size, config.num_heads)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)
        self.norm_eps = config.rms_norm_eps

    def forward(self, hidden_states: torch.Tensor, cos_sin: CosSin) -> torch.Tensor:
        if self.mixes_positions_by_mlp:
            by_position = hidden_states.transpose(1, 2)  # [batch, hidden, positions]
            hidden_states = rms_norm(by_position + self.mlp_t(by_position), self.norm_eps).transpose(1, 2)
        else:
            hidden_states = rms_norm(hidden_states + self.self_attn(hidden_states, cos_sin), self.norm_eps)
        return rms_norm(hidden_states + self.mlp(hidden_states), self.norm_eps)


class ReasoningModule(nn.Module):
    """One level (H or L): add the injected input, then run the blocks."""

    def __init__(self, config: HRMConfig, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Block(config) for _ in range(num_layers))

    def forward(self, hidden_states: torch.Tensor, injection: torch.Tensor, cos_sin: CosSin) -> torch.Tensor:
        hidden_states = hidden_states + injection
        for layer in self.layers:
            hidden_states = layer(hidden_states, cos_sin)
        return hidden_states


class HRMInner(nn.Module):
    """Front end → H/L reasoning → heads. Which front end and heads exist is set by the config."""

    def __init__(self, config: HRMConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_scale = math.sqrt(config.hidden_size)
        if config.input_mode == "latent":
            self.latent = LatentFrontEnd(config.hidden_size)
            self.eps_head = CastedLinear(config.hidden_size, config.hidden_size, bias=True)
        elif config.input_mode == "hidden":
            self.front = HiddenFrontEnd(config.d_model, config.hidden_size)
            self.injector = make_injector(config)
            if config.vocab_size:
                self.vocab_bias = VocabBias(config.hidden_size, config.vocab_size, config.gate_init)
        else:
            self.embed_tokens = CastedEmbedding(config.vocab_size, config.hidden_size)
            self.lm_head = CastedLinear(config.hidden_size, config.vocab_size, bias=False)
        if config.input_mode == "bytes":
            self.byte_film = ByteFiLM(config.hidden_size, config.film_dim, config.dead_energy_accumulators,
                                      config.nibble_index)
        if config.act:
            self.q_head = CastedLinear(config.hidden_size, 2, bias=True)
        if config.hex_head:
            self.hex_head = HexHead(config.hidden_size, HEX_SYMBOLS[config.hex_head], config.hex_prefix_suffix)
        if config.free_energy_head:
            self.free_energy_head = FreeEnergyHead(config.hidden_size)
        if config.puzzle_emb_ndim > 0:
            self.puzzle_emb = PuzzleEmbedding(config.num_puzzle_identifiers, config.puzzle_emb_ndim)
        if config.pos_encodings == "rope":
            self.rotary_emb = RotaryEmbedding(config.head_dim, config.rope_theta)
        elif config.pos_encodings == "learned":
            self.embed_pos = CastedEmbedding(config.seq_len + config.puzzle_emb_len, config.hidden_size)
        if config.family == "hrm":  # TRM's one network is L_level
            self.H_level = ReasoningModule(config, config.H_layers)
        self.L_level = ReasoningModule(config, config.L_layers)
        # Upstream keeps these in the forward dtype; float32 here holds bfloat16 values exactly.
        self.H_init = nn.Buffer(torch.zeros(config.hidden_size), persistent=True)
        self.L_init = nn.Buffer(torch.zeros(config.hidden_size), persistent=True)

    @property
    def dtype(self) -> torch.dtype:
        return self.config.torch_dtype

    def sequence_length(self, batch: Batch) -> int:
        """Positions of the inputs (tokens, latent rows or LLM token states)."""
        key = {"latent": "x_t", "hidden": "hidden"}.get(self.config.input_mode, "inputs")
        return batch[key].shape[1]

    def positions(self, batch: Batch) -> int:
        """Sequence positions of the carry: the puzzle embedding's, then one per input token.
        The controller reasons on one position, whatever the LLM's sequence length."""
        if self.config.input_mode == "hidden":
            return 1
        return self.config.puzzle_emb_len + self.sequence_length(batch)

    def input_embeddings(self, batch: Batch) -> torch.Tensor:
        """The injection [batch, positions, hidden] that every L-step adds to z_H."""
        config = self.config
        if config.input_mode == "latent":
            return self.latent(batch["x_t"].to(self.dtype), batch["t"], batch.get("cond"))
        if config.input_mode == "hidden":
            return self.front(batch["hidden"].to(self.dtype), batch["prompt_mask"])
        embedding = self.embed_tokens(batch["inputs"].to(torch.int32), self.dtype)
        if config.input_mode == "bytes":
            embedding = self.byte_film(embedding, batch["inputs"].to(torch.int32))
        if config.puzzle_emb_ndim > 0:
            puzzle = self.puzzle_emb(batch["puzzle_identifiers"], self.dtype)
            pad = config.puzzle_emb_len * config.hidden_size - puzzle.shape[-1]
            if pad > 0:
                puzzle = F.pad(puzzle, (0, pad))
            embedding = torch.cat((puzzle.view(-1, config.puzzle_emb_len, config.hidden_size), embedding), dim=-2)
        if config.pos_encodings == "learned":
            embedding = 0.707106781 * (embedding + self.embed_pos.embedding_weight.to(self.dtype))
        return self.embed_scale * embedding

    def cos_sin(self, injection: torch.Tensor) -> CosSin:
        """RoPE tables for the injection's positions, on its device."""
        if self.config.pos_encodings != "rope":
            return None
        return self.rotary_emb(injection.shape[1], self.dtype, injection.device)

    def initial_state(self, batch: int, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
        """z_H, z_L at the start of a puzzle: H_init / L_init at every position."""
        shape = (batch, positions, self.config.hidden_size)
        return self.H_init.to(self.dtype).expand(shape), self.L_init.to(self.dtype).expand(shape)

    def reason(self, z_H: torch.Tensor, z_L: torch.Tensor, injection: torch.Tensor,
               cos_sin: CosSin) -> tuple[torch.Tensor, torch.Tensor]:
        """The H/L cycles of one ACT step (upstream's no-grad cycles plus its 1-step-grad tail)."""
        for _ in range(self.config.H_cycles):
            for _ in range(self.config.L_cycles):
                z_L = self.L_level(z_L, z_H + injection, cos_sin)
            z_H = self.h_step(z_H, z_L, cos_sin)
        return z_H, z_L

    def h_step(self, z_H: torch.Tensor, z_L: torch.Tensor, cos_sin: CosSin) -> torch.Tensor:
        """One H-step, by H_level (TRM: by L_level, its one network); the controller normalises z_H
        after it (its segments end in an RMSNorm)."""
        z_H = (self.L_level if self.config.family == "trm" else self.H_level)(z_H, z_L, cos_sin)
        return rms_norm(z_H, self.config.rms_norm_eps) if self.config.input_mode == "hidden" else z_H

    def heads(self, z_H: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        """Every output the config asks for, read from z_H (and the LLM's states for the controller)."""
        config = self.config
        if config.input_mode == "latent":
            return {"eps": self.eps_head(z_H)}
        if config.input_mode == "hidden":
            return self.controller_heads(z_H[:, 0], batch)
        tokens = z_H[:, config.puzzle_emb_len:]
        outputs = {"logits": self.lm_head(tokens)}
        if config.act:
            q_logits = self.q_head(z_H[:, 0]).to(compute_dtype(self.dtype))
            outputs |= {"q_halt_logits": q_logits[..., 0], "q_continue_logits": q_logits[..., 1]}
        if config.output_norm:
            outputs["probs"] = normalise(outputs["logits"], config.output_norm, compute_dtype(self.dtype))
        if config.hex_head:
            outputs["hex_logits"] = self.hex_head(tokens)
        if config.free_energy_head:
            outputs["free_energy"] = self.free_energy_head(tokens)
        return outputs

    def controller_heads(self, z: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        """The conditioned LLM states [B, T, D], the vocab bias [B, V] and the q values."""
        outputs = {"conditioned": self.injector(batch["hidden"].to(self.dtype), z)}
        if self.config.vocab_size:
            outputs["vocab_bias"] = self.vocab_bias(z)
        if self.config.act:
            q_logits = self.q_head(z).to(compute_dtype(self.dtype))
            outputs |= {"q_halt_logits": q_logits[..., 0], "q_continue_logits": q_logits[..., 1]}
        return outputs

    def forward(self, z_H: torch.Tensor, z_L: torch.Tensor,
                batch: Batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """One ACT step from carry (z_H, z_L): the new z_H, z_L and the heads' outputs."""
        injection = self.input_embeddings(batch)
        z_H, z_L = self.reason(z_H, z_L, injection, self.cos_sin(injection))
        return z_H, z_L, self.heads(z_H, batch)


class HRM(nn.Module):
    """The ACT model as upstream's loss head sees it: `model.inner` holds every weight."""

    def __init__(self, config: HRMConfig, inner: type[HRMInner] = HRMInner) -> None:
        super().__init__()
        self.config = config
        self.inner = inner(config)
        self.requires_grad_(False)  # an inference reference: hrmc never trains, and step() runs without no_grad

    def num_parameters(self) -> int:
        """Trainable parameters, as upstream counts them (buffers such as puzzle_emb excluded)."""
        return sum(p.numel() for p in self.parameters())

    def twin(self, config: HRMConfig | None = None, inner: type[HRMInner] = HRMInner) -> "HRM":
        """An eval-mode model with these weights and another config (same shapes) or inner module."""
        twin = HRM(config or self.config, inner)
        twin.load_state_dict(self.state_dict())
        return twin.eval()

    def with_dtype(self, forward_dtype: str) -> "HRM":
        """The same weights running in another forward dtype (float64 for the noise floor)."""
        if forward_dtype == self.config.forward_dtype:
            return self
        return self.twin(self.config.replace(forward_dtype=forward_dtype))

    def with_weights_rounded(self, dtype: torch.dtype) -> "HRM":
        """The same model with every floating weight and buffer rounded to `dtype` and back: what
        storing the weights in `dtype` alone costs, the arithmetic unchanged."""
        twin = self.twin()
        with torch.no_grad():
            for tensor in twin.state_dict().values():
                if tensor.is_floating_point():
                    tensor.copy_(tensor.to(dtype))
        return twin

    def compressible_weights(self) -> set[str]:
        """The weights a compressed storage compresses (hrm_ref.compression), by state_dict name: each linear
        layer's matrix (a matmul weight in every lowering) of at least `compression.MIN_ELEMENTS` elements."""
        return {f"{name}.weight" for name, module in self.named_modules()
                if isinstance(module, CastedLinear) and compressible(tuple(module.weight.shape))}

    def with_weights_as_stored(self, storage: str, precision: str = "float16") -> "HRM":
        """The same model with every weight as a package that stores them `storage` holds it, in a program whose
        floats are `precision` (float16: the ane flavour; float32: coreml): the compiler's reference for such a
        package. float32: the weights as they are; float16: rounded once; int8, lut6, lut4: each compressible
        weight compressed from its float32 value and decompressed (tables in `precision`), every other weight in
        `precision`. (float16x2 keeps float32's values to 2⁻²², not exactly: not offered.)"""
        if storage not in ("float32", "float16", *COMPRESSIONS) or precision not in ("float16", "float32"):
            raise ValueError(f"no weights stored as {storage!r} in {precision!r}")
        rounded = "float16" if storage == "float16" or (storage in COMPRESSIONS and precision == "float16") else None
        twin = self.with_weights_rounded(torch.float16) if rounded else self.twin()
        if storage in COMPRESSIONS:
            ours, theirs = self.state_dict(), twin.state_dict()
            dtype = np.float16 if precision == "float16" else np.float32
            with torch.no_grad():
                for name in self.compressible_weights():
                    stored = compress(ours[name].float().numpy(), storage, 0, dtype).dense()
                    theirs[name].copy_(torch.from_numpy(stored.astype(np.float32)))
        return twin
