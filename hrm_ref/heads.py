"""Output heads besides upstream's lm_head and q_head, plus the hex decoding and metrics.

- hex head: z_H, mean over the token positions → hidden → SiLU → L_hex×16 logits (L_hex = 40 for
  SHA-1, 64 for SHA-256). Prefix/suffix mode keeps only the first and last 8 symbols.
- free-energy head: sigmoid(linear(z_H)) per token.
- stablemax: s(x) = 1/(1−x) for x < 0, x + 1 otherwise, normalised over the vocabulary.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hrmc.hrm_ref.layers import CastedLinear

HEX_DIGITS = "0123456789abcdef"
PREFIX_SUFFIX = 8


class HexHead(nn.Module):
    def __init__(self, hidden_size: int, symbols: int, prefix_suffix: bool) -> None:
        super().__init__()
        self.symbols = symbols
        self.prefix_suffix = prefix_suffix
        self.hidden_proj = CastedLinear(hidden_size, hidden_size, bias=True)
        self.out_proj = CastedLinear(hidden_size, symbols * 16, bias=True)

    def forward(self, z_H: torch.Tensor) -> torch.Tensor:
        """z_H [B, L, H] (token positions) → hex logits [B, symbols, 16]."""
        pooled = z_H.mean(dim=1)
        logits = self.out_proj(F.silu(self.hidden_proj(pooled))).view(-1, self.symbols, 16)
        if self.prefix_suffix:
            logits = torch.cat((logits[:, :PREFIX_SUFFIX], logits[:, -PREFIX_SUFFIX:]), dim=1)
        return logits


class FreeEnergyHead(nn.Module):
    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.proj = CastedLinear(hidden_size, 1, bias=True)

    def forward(self, z_H: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.proj(z_H))[..., 0]


def stablemax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    scores = torch.where(logits < 0, 1 / (1 - logits), logits + 1)
    return scores / scores.sum(dim=dim, keepdim=True)


def normalise(logits: torch.Tensor, kind: str, dtype: torch.dtype) -> torch.Tensor:
    """Probabilities over the last axis, computed in `dtype` (float32 or wider)."""
    logits = logits.to(dtype)
    return torch.softmax(logits, dim=-1) if kind == "softmax" else stablemax(logits)


def decode_hex(hex_logits: np.ndarray | torch.Tensor) -> list[str]:
    """[B, symbols, 16] logits → one hex string per sample (argmax per symbol)."""
    digits = np.asarray(hex_logits).argmax(-1)
    return ["".join(HEX_DIGITS[d] for d in row) for row in digits]


def hex_accuracy(predicted: list[str], expected: list[str]) -> float:
    """Fraction of hex symbols that match."""
    pairs = [(p, e) for pred, exp in zip(predicted, expected, strict=True) for p, e in zip(pred, exp, strict=True)]
    return sum(p == e for p, e in pairs) / len(pairs)


def byte_error_rate(predicted: list[str], expected: list[str]) -> float:
    """Fraction of digest bytes (hex symbol pairs) with at least one wrong symbol."""
    wrong = total = 0
    for pred, exp in zip(predicted, expected, strict=True):
        for i in range(0, len(exp), 2):
            total += 1
            wrong += pred[i:i + 2] != exp[i:i + 2]
    return wrong / total
