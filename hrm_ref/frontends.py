"""Input front ends besides upstream's token embedding: bytes with split-nibble FiLM, and latents.

Byte front end: the byte's 8-bit embedding E is FiLM-modulated, γ·E + β with γ = 1 + Δγ, by
a conditioning vector. That vector is the embedding of a 4-bit index stream (by default the
high nibble) plus a projection of n "dead-energy" accumulators: saturating 8-bit counters of
rare nibble-pair events. Counter j counts the bytes so far whose nibble difference
(high − low) mod 16 equals j. The counters are computed here from the byte stream, so they
survive export.

Latent front end (the DDIM denoiser εθ(x_t, t, cond)): x_t is projected and FiLM-modulated by a
sinusoidal embedding of the timestep t; an optional cond [B, L, H] is projected and added.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hrmc.hrm_ref.layers import CastedEmbedding, CastedLinear

COUNTER_MAX = 255  # 8-bit counters saturate here and never wrap


# Nibbles by division and remainder, not >> and &: ONNX's BitShift takes only unsigned types (the
# exporter casts to uint32) and Core ML has neither; for bytes 0..255 the results are the same.
def high_nibble(byte_ids: torch.Tensor) -> torch.Tensor:
    return torch.div(byte_ids, 16, rounding_mode="floor")


def low_nibble(byte_ids: torch.Tensor) -> torch.Tensor:
    return torch.remainder(byte_ids, 16)


def dead_energy_counters(byte_ids: torch.Tensor, accumulators: int) -> torch.Tensor:
    """[B, L] bytes → [B, L, n] int32 counts of events (high − low) mod 16 == j up to each position."""
    difference = torch.remainder(high_nibble(byte_ids) - low_nibble(byte_ids), 16)
    accumulator = torch.arange(accumulators, dtype=byte_ids.dtype, device=byte_ids.device)
    events = (difference.unsqueeze(-1) == accumulator).to(torch.int32)
    return torch.cumsum(events, dim=1, dtype=torch.int32).clamp(max=COUNTER_MAX)


class ByteFiLM(nn.Module):
    def __init__(self, hidden_size: int, film_dim: int, accumulators: int, nibble_index: str) -> None:
        super().__init__()
        self.accumulators = accumulators
        self.nibble = high_nibble if nibble_index == "high" else low_nibble
        self.nibble_emb = CastedEmbedding(16, film_dim)
        if accumulators:
            self.counter_proj = CastedLinear(accumulators, film_dim, bias=False)
        self.film_proj = CastedLinear(film_dim, 2 * hidden_size, bias=True)

    def forward(self, embedding: torch.Tensor, byte_ids: torch.Tensor) -> torch.Tensor:
        nibbles = self.nibble(byte_ids)
        conditioning = self.nibble_emb(nibbles, embedding.dtype)
        if self.accumulators:
            counters = dead_energy_counters(byte_ids, self.accumulators).to(embedding.dtype) / COUNTER_MAX
            conditioning = conditioning + self.counter_proj(counters)
        delta_gamma, beta = self.film_proj(conditioning).chunk(2, dim=-1)
        return embedding * (1 + delta_gamma) + beta


def encode_bytes(texts: list[str | bytes], seq_len: int) -> np.ndarray:
    """UTF-8 bytes of each text, cut or zero-padded to `seq_len`: model inputs [B, seq_len] int32."""
    rows = np.zeros((len(texts), seq_len), dtype=np.int32)
    for row, text in zip(rows, texts):
        data = text.encode() if isinstance(text, str) else bytes(text)
        row[:min(len(data), seq_len)] = np.frombuffer(data[:seq_len], dtype=np.uint8)
    return rows


def timestep_embedding(t: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] of integer timesteps t [B] (cos half, then sin half)."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=dtype, device=t.device) / half)
    angles = t.to(dtype).unsqueeze(-1) * frequencies
    return torch.cat((angles.cos(), angles.sin()), dim=-1)


class LatentFrontEnd(nn.Module):
    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.in_proj = CastedLinear(hidden_size, hidden_size, bias=True)
        self.cond_proj = CastedLinear(hidden_size, hidden_size, bias=False)
        self.time_in = CastedLinear(hidden_size, hidden_size, bias=True)
        self.time_out = CastedLinear(hidden_size, 2 * hidden_size, bias=True)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        time = timestep_embedding(t, self.hidden_size, x_t.dtype)
        delta_gamma, beta = self.time_out(F.silu(self.time_in(time))).unsqueeze(1).chunk(2, dim=-1)
        injection = self.in_proj(x_t) * (1 + delta_gamma) + beta
        return injection if cond is None else injection + self.cond_proj(cond)
