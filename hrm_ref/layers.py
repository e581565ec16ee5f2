"""Transformer pieces of HRM ACT v1, numerically as upstream's `models/layers.py`.

Parameters are float32 and cast to the activations' dtype at use ("casted" layers), as
upstream does. Norms and RoPE compute in float32, or in float64 when the model runs in float64
(the noise-floor reference), never below float32. In bfloat16 and float16 these are the float32 islands:
RMSNorm's variance, softmax, the RoPE tables and rotation, and the q head's output; every weight and
every other activation is in the forward dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision for norms, RoPE, softmax and the q head's output: float32 (for float32, bfloat16 and
    float16 models), or float64 for a float64 model."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def rms_norm(hidden_states: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm without weight, computed in float32 (float64 for float64 inputs)."""
    input_dtype = hidden_states.dtype
    hidden_states = hidden_states.to(compute_dtype(input_dtype))
    variance = hidden_states.square().mean(-1, keepdim=True)
    return (hidden_states * torch.rsqrt(variance + eps)).to(input_dtype)


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b; in float16 summed in float32 and rounded once, as float16 matrix products accumulate (cuBLAS's
    default; torch's CPU kernel too, up to the order of its sums): on a CPU that one is 30 times slower than
    float32's, and hrm_ref float16 is every float16 gate's yardstick."""
    if a.dtype == torch.float16:
        return torch.matmul(a.float(), b.float()).half()
    return torch.matmul(a, b)


def rotary_tables(head_dim: int, positions: int, theta: float, dtype: torch.dtype,
                  device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [positions, head_dim] in the `cat((freqs, freqs))` layout upstream uses."""
    table_dtype = compute_dtype(dtype)
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=table_dtype, device=device) / head_dim))
    freqs = torch.outer(torch.arange(positions, dtype=table_dtype, device=device), inv_freq)
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [batch, seq, heads, head_dim] in the tables' precision, return it in x's dtype."""
    rotated = x.to(cos.dtype)
    rotated = rotated * cos.unsqueeze(-2) + rotate_half(rotated) * sin.unsqueeze(-2)
    return rotated.to(x.dtype)


class RotaryEmbedding(nn.Module):
    """RoPE tables, not saved in the state_dict (as upstream). Computed per call, with no cache:
    a cache would be a side effect inside exported loops, and export folds the tables to constants."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta

    def forward(self, positions: int, dtype: torch.dtype,
                device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return rotary_tables(self.head_dim, positions, self.theta, dtype, device)


class CastedLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float16:  # summed in float32 and rounded once, as `matmul`
            return F.linear(x.float(), self.weight.half().float(),
                            self.bias.half().float() if self.bias is not None else None).half()
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.weight.to(x.dtype), bias)


class CastedEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.embedding_weight = nn.Parameter(torch.zeros(num_embeddings, embedding_dim))

    def forward(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return F.embedding(ids, self.embedding_weight.to(dtype))


class PuzzleEmbedding(nn.Module):
    """Upstream's CastedSparseEmbedding at inference: a saved buffer `weights` [ids, ndim]."""

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.weights = nn.Buffer(torch.zeros(num_embeddings, embedding_dim), persistent=True)

    def forward(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return F.embedding(ids.to(torch.int64), self.weights).to(dtype)  # a Gather, as upstream's indexing


class Attention(nn.Module):
    """Non-causal multi-head attention over packed qkv [q heads | k heads | v heads], no mask."""

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.qkv_proj = CastedLinear(hidden_size, 3 * hidden_size, bias=False)
        self.o_proj = CastedLinear(hidden_size, hidden_size, bias=False)

    def forward(self, hidden_states: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        batch, seq, hidden = hidden_states.shape
        qkv = self.qkv_proj(hidden_states).view(batch, seq, 3 * self.num_heads, self.head_dim)
        query, key, value = qkv.split(self.num_heads, dim=2)
        if cos_sin is not None:
            query, key = apply_rotary(query, *cos_sin), apply_rotary(key, *cos_sin)
        query, key, value = (t.transpose(1, 2) for t in (query, key, value))
        scores = matmul(query, key.transpose(-2, -1)) * self.head_dim ** -0.5
        # Softmax at >= float32 as flash attention does for bfloat16 and float16; exact no-op in float32.
        weights = torch.softmax(scores, dim=-1, dtype=compute_dtype(scores.dtype)).to(value.dtype)
        attended = matmul(weights, value).transpose(1, 2).reshape(batch, seq, hidden)
        return self.o_proj(attended)


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_up_proj = CastedLinear(hidden_size, 2 * intermediate_size, bias=False)
        self.down_proj = CastedLinear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)
