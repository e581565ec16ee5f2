"""HRM ACT v1: module tree and state_dict keys as upstream's `models/hrm/hrm_act_v1.py`.

`HRM.state_dict()` keys are upstream's without the loss-head prefix: `inner.H_level.layers.0.…`.
One call of `HRMInner.forward` is one ACT step's worth of reasoning (H_cycles × L_cycles L-steps
and H_cycles H-steps); the ACT loop and halting live in `hrm_ref.act`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hrm_ref.config import HRMConfig
from hrm_ref.layers import (Attention, CastedEmbedding, CastedLinear, PuzzleEmbedding, RotaryEmbedding, SwiGLU,
                            compute_dtype, rms_norm)

CosSin = tuple[torch.Tensor, torch.Tensor] | None


class Block(nn.Module):
    """Post-norm transformer block: h = rms(h + attn(h)); h = rms(h + mlp(h))."""

    def __init__(self, config: HRMConfig) -> None:
        super().__init__()
        self.self_attn = Attention(config.hidden_size, config.num_heads)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)
        self.norm_eps = config.rms_norm_eps

    def forward(self, hidden_states: torch.Tensor, cos_sin: CosSin) -> torch.Tensor:
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
    def __init__(self, config: HRMConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_scale = math.sqrt(config.hidden_size)
        self.embed_tokens = CastedEmbedding(config.vocab_size, config.hidden_size)
        self.lm_head = CastedLinear(config.hidden_size, config.vocab_size, bias=False)
        self.q_head = CastedLinear(config.hidden_size, 2, bias=True)
        if config.puzzle_emb_ndim > 0:
            self.puzzle_emb = PuzzleEmbedding(config.num_puzzle_identifiers, config.puzzle_emb_ndim)
        if config.pos_encodings == "rope":
            self.rotary_emb = RotaryEmbedding(config.head_dim, config.rope_theta)
        else:
            self.embed_pos = CastedEmbedding(config.seq_len + config.puzzle_emb_len, config.hidden_size)
        self.H_level = ReasoningModule(config, config.H_layers)
        self.L_level = ReasoningModule(config, config.L_layers)
        # Upstream keeps these in the forward dtype; float32 here holds bfloat16 values exactly.
        self.H_init = nn.Buffer(torch.zeros(config.hidden_size), persistent=True)
        self.L_init = nn.Buffer(torch.zeros(config.hidden_size), persistent=True)

    @property
    def dtype(self) -> torch.dtype:
        return self.config.torch_dtype

    def input_embeddings(self, inputs: torch.Tensor, puzzle_identifiers: torch.Tensor) -> torch.Tensor:
        """Token (and puzzle) embeddings [batch, puzzle_emb_len + seq, hidden], times √hidden."""
        config = self.config
        embedding = self.embed_tokens(inputs.to(torch.int32), self.dtype)
        if config.puzzle_emb_ndim > 0:
            puzzle = self.puzzle_emb(puzzle_identifiers, self.dtype)
            pad = config.puzzle_emb_len * config.hidden_size - puzzle.shape[-1]
            if pad > 0:
                puzzle = F.pad(puzzle, (0, pad))
            embedding = torch.cat((puzzle.view(-1, config.puzzle_emb_len, config.hidden_size), embedding), dim=-2)
        if config.pos_encodings == "learned":
            embedding = 0.707106781 * (embedding + self.embed_pos.embedding_weight.to(self.dtype))
        return self.embed_scale * embedding

    def cos_sin(self, positions: int) -> CosSin:
        return self.rotary_emb(positions, self.dtype) if self.config.pos_encodings == "rope" else None

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
            z_H = self.H_level(z_H, z_L, cos_sin)
        return z_H, z_L

    def heads(self, z_H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """logits [batch, seq, vocab] and the q values (halt, continue) [batch] read from z_H."""
        logits = self.lm_head(z_H)[:, self.config.puzzle_emb_len:]
        q_logits = self.q_head(z_H[:, 0]).to(compute_dtype(self.dtype))
        return logits, q_logits[..., 0], q_logits[..., 1]

    def forward(self, z_H: torch.Tensor, z_L: torch.Tensor, inputs: torch.Tensor,
                puzzle_identifiers: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One ACT step from carry (z_H, z_L): returns z_H, z_L, logits, q_halt, q_continue."""
        injection = self.input_embeddings(inputs, puzzle_identifiers)
        z_H, z_L = self.reason(z_H, z_L, injection, self.cos_sin(injection.shape[1]))
        return (z_H, z_L, *self.heads(z_H))


class HRM(nn.Module):
    """The ACT model as upstream's loss head sees it: `model.inner` holds every weight."""

    def __init__(self, config: HRMConfig) -> None:
        super().__init__()
        self.config = config
        self.inner = HRMInner(config)

    def num_parameters(self) -> int:
        """Trainable parameters, as upstream counts them (buffers such as puzzle_emb excluded)."""
        return sum(p.numel() for p in self.parameters())

    def with_dtype(self, forward_dtype: str) -> "HRM":
        """The same weights running in another forward dtype (float64 for the noise floor)."""
        if forward_dtype == self.config.forward_dtype:
            return self
        twin = HRM(self.config.replace(forward_dtype=forward_dtype))
        twin.load_state_dict(self.state_dict())
        return twin.eval()
