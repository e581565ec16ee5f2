"""The controller variant: an HRM that steers a frozen LLM through its last hidden states.

    hidden [B, T, D], prompt_mask [B, T]
      → PromptPooling: mean and last prompt token, mixed by a linear → [B, D]
      → proj to the HRM width → the injection x [B, 1, h] (the HRM reasons on one position)
      → segments × (inner_T L-steps, one H-step, RMSNorm on z_H)   (HRMInner, ACT steps)
      → injector(hidden, z_H):  grb  hidden + σ(g)·W(z_H)                       (every token)
                                cab  hidden + σ(g)·o(attn(q(hidden), k(M), v(M))), M = m tokens from z_H
      → vocab bias σ(g_v)·W_vocab(z_H) [B, V]   (when vocab_size > 0)

Masked-out tokens contribute exactly nothing to the pooling (they are multiplied by 0), and a gate
at −∞ adds exactly 0, so the hidden states come back unchanged. Attention and the gates compute
in float32 at least, as the core's softmax does.
"""

from __future__ import annotations

import torch
from torch import nn

from hrmc.hrm_ref.layers import CastedLinear, compute_dtype, matmul


class PromptPooling(nn.Module):
    """[B, T, D] token states and a 0/1 prompt mask [B, T] → [B, D], from prompt tokens only."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.mix = CastedLinear(2 * d_model, d_model, bias=True)

    def forward(self, hidden: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        mask = prompt_mask.to(hidden.dtype).unsqueeze(-1)
        mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1)
        # The last prompt token: the masked position with the largest index (a one-hot, no gather).
        order = torch.arange(1, hidden.shape[1] + 1, dtype=hidden.dtype, device=hidden.device).unsqueeze(-1) * mask
        last = (hidden * (order == order.amax(dim=1, keepdim=True)).to(hidden.dtype)).sum(dim=1)
        return self.mix(torch.cat((mean, last), dim=-1))


class HiddenFrontEnd(nn.Module):
    """The controller's input: pooled prompt states projected to one HRM position [B, 1, h]."""

    def __init__(self, d_model: int, hidden_size: int) -> None:
        super().__init__()
        self.pool = PromptPooling(d_model)
        self.proj = CastedLinear(d_model, hidden_size, bias=True)

    def forward(self, hidden: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(hidden, prompt_mask)).unsqueeze(1)


class Gate(nn.Module):
    """σ(g) for a learned scalar g, in float32 at least; g starts at the config's gate_init."""

    def __init__(self, initial: float) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.tensor(float(initial)))

    def forward(self, like: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.gate.to(compute_dtype(like.dtype)))


class GatedResidualBias(nn.Module):
    """grb: every token state gets the same bias W(z_H), scaled by the gate."""

    def __init__(self, hidden_size: int, d_model: int, gate_init: float) -> None:
        super().__init__()
        self.proj = CastedLinear(hidden_size, d_model, bias=True)
        self.gate = Gate(gate_init)

    def forward(self, hidden: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        bias = self.proj(z.to(hidden.dtype)).unsqueeze(1)
        return hidden + (self.gate(hidden) * bias).to(hidden.dtype)


class CrossAttentionBridge(nn.Module):
    """cab: z_H → m memory tokens of width D; every token state attends to them (one head)."""

    def __init__(self, hidden_size: int, d_model: int, mem_tokens: int, gate_init: float) -> None:
        super().__init__()
        self.mem_tokens, self.d_model = mem_tokens, d_model
        self.memory = CastedLinear(hidden_size, mem_tokens * d_model, bias=True)
        self.q_proj = CastedLinear(d_model, d_model, bias=False)
        self.k_proj = CastedLinear(d_model, d_model, bias=False)
        self.v_proj = CastedLinear(d_model, d_model, bias=False)
        self.o_proj = CastedLinear(d_model, d_model, bias=False)
        self.gate = Gate(gate_init)

    def forward(self, hidden: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        memory = self.memory(z.to(hidden.dtype)).view(-1, self.mem_tokens, self.d_model)
        query, key, value = self.q_proj(hidden), self.k_proj(memory), self.v_proj(memory)
        scores = matmul(query, key.transpose(-2, -1)) * self.d_model ** -0.5
        weights = torch.softmax(scores, dim=-1, dtype=compute_dtype(scores.dtype)).to(value.dtype)
        update = self.o_proj(matmul(weights, value))
        return hidden + (self.gate(hidden) * update).to(hidden.dtype)


class VocabBias(nn.Module):
    """σ(g)·W_vocab(z_H): a [B, V] bias the LLM adds to its logits."""

    def __init__(self, hidden_size: int, vocab_size: int, gate_init: float) -> None:
        super().__init__()
        self.proj = CastedLinear(hidden_size, vocab_size, bias=True)
        self.gate = Gate(gate_init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        bias = self.proj(z)
        return self.gate(bias) * bias.to(compute_dtype(bias.dtype))


def make_injector(config) -> nn.Module:
    if config.injector == "cab":
        return CrossAttentionBridge(config.hidden_size, config.d_model, config.mem_tokens, config.gate_init)
    return GatedResidualBias(config.hidden_size, config.d_model, config.gate_init)
