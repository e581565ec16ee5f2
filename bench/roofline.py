"""The roofline half of `hrmc bench`: FLOPs per ACT step from the config, and this machine's matmul peak.

Only matrix products are counted (2·m·n·k each): projections, attention's two products and the
heads. Norms, rope and softmax are a few percent on top and are left out, so GFLOP/s figures are
slightly conservative.
"""

from __future__ import annotations

import time

import torch

from hrmc.hrm_ref import HRMConfig


def flops_per_step(config: HRMConfig, batch: int, positions: int) -> int:
    """Matmul FLOPs of one ACT step at `batch` samples of `positions` positions (puzzle embedding included).

    An H-step runs H_level's H_layers blocks; TRM's runs its one network again (L_layers blocks). A TRM
    block with `mlp_t` mixes positions by a SwiGLU across them instead of attention."""
    h, inter = config.hidden_size, config.intermediate_size
    tokens = batch * positions
    if config.mlp_t:
        width = config.swiglu_width(positions)
        mixing = 2 * batch * h * positions * 2 * width + 2 * batch * h * width * positions  # SwiGLU across positions
    else:
        mixing = (2 * tokens * h * 3 * h  # qkv projection
                  + 2 * 2 * batch * positions * positions * h  # q·kᵀ and p·v over all heads
                  + 2 * tokens * h * h)  # output projection
    per_layer = mixing + 2 * tokens * h * 2 * inter + 2 * tokens * inter * h  # + the channel SwiGLU
    h_layers = config.L_layers if config.family == "trm" else config.H_layers
    layers = config.H_cycles * (config.L_cycles * config.L_layers + h_layers)
    answer_tokens = batch * (positions - config.puzzle_emb_len)  # the lm head reads the tokens, not the puzzle's
    heads_flops = 2 * answer_tokens * h * max(config.vocab_size, 1) + 2 * batch * h * 2  # lm head, q head
    return layers * per_layer + heads_flops


def matmul_peak(size: int = 1024, seconds: float = 1.0, device: str = "cpu",
                dtype: torch.dtype = torch.float32) -> float:
    """This machine's matmul GFLOP/s on `device` in `dtype`, measured with torch (the best of repeated size³
    products; on CUDA each product is timed to the end of its kernel)."""
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.mm(a, b)  # warm up the BLAS threads or the kernel selection
    synchronize()
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        torch.mm(a, b)
        synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9
