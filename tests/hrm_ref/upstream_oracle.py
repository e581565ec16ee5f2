"""A second, functional implementation of upstream HRM ACT v1 eval semantics, for tests only.

It reads a raw state_dict (`inner.…` keys) and an upstream `arch:` dict and follows upstream's
operation order, including its ACT wrapper: the carry starts "halted", halted rows are reset to
H_init/L_init and their data swapped in, and in eval every row halts at `halt_max_steps`.
It shares no code with hrm_ref, so a wrong key, cycle order or reset rule there shows up here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.to(torch.float32)
    return (x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rope(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = t.shape[-1] // 2
    rotated = torch.cat((-t[..., half:], t[..., :half]), dim=-1)
    return t * cos.unsqueeze(-2) + rotated * sin.unsqueeze(-2)


class UpstreamOracle:
    def __init__(self, weights: dict[str, torch.Tensor], arch: dict, halt_max_steps: int | None = None) -> None:
        self.w = weights
        self.arch = arch
        self.hidden = arch["hidden_size"]
        self.heads = arch["num_heads"]
        self.ndim = arch.get("puzzle_emb_ndim", 0)
        self.puzzle_len = -(self.ndim // -self.hidden)
        self.max_steps = halt_max_steps or arch["halt_max_steps"]

    def _block(self, prefix: str, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = h.shape
        head_dim = self.hidden // self.heads
        qkv = F.linear(h, self.w[prefix + "self_attn.qkv_proj.weight"]).view(batch, seq, 3 * self.heads, head_dim)
        q, k, v = qkv[:, :, :self.heads], qkv[:, :, self.heads:2 * self.heads], qkv[:, :, 2 * self.heads:]
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        attn = F.softmax(torch.matmul(q, k.transpose(-2, -1)) * head_dim ** -0.5, dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(batch, seq, self.hidden)
        h = _rms(h + F.linear(out, self.w[prefix + "self_attn.o_proj.weight"]), self.arch.get("rms_norm_eps", 1e-5))
        gate, up = F.linear(h, self.w[prefix + "mlp.gate_up_proj.weight"]).chunk(2, dim=-1)
        mlp = F.linear(F.silu(gate) * up, self.w[prefix + "mlp.down_proj.weight"])
        return _rms(h + mlp, self.arch.get("rms_norm_eps", 1e-5))

    def _level(self, name: str, layers: int, h: torch.Tensor, injection: torch.Tensor, cos, sin) -> torch.Tensor:
        h = h + injection
        for i in range(layers):
            h = self._block(f"inner.{name}.layers.{i}.", h, cos, sin)
        return h

    def _embed(self, inputs: torch.Tensor, puzzle_ids: torch.Tensor) -> torch.Tensor:
        emb = F.embedding(inputs.to(torch.int32), self.w["inner.embed_tokens.embedding_weight"])
        if self.ndim > 0:
            puzzle = self.w["inner.puzzle_emb.weights"][puzzle_ids]
            puzzle = F.pad(puzzle, (0, self.puzzle_len * self.hidden - self.ndim))
            emb = torch.cat((puzzle.view(-1, self.puzzle_len, self.hidden), emb), dim=-2)
        if self.arch.get("pos_encodings", "rope") == "learned":
            emb = 0.707106781 * (emb + self.w["inner.embed_pos.embedding_weight"])
        return math.sqrt(self.hidden) * emb

    def inner(self, z_H, z_L, inputs, puzzle_ids):
        x = self._embed(inputs, puzzle_ids)
        head_dim = self.hidden // self.heads
        inv_freq = 1.0 / (self.arch.get("rope_theta", 10000.0) ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        freqs = torch.outer(torch.arange(x.shape[1], dtype=torch.float32), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        if self.arch.get("pos_encodings", "rope") != "rope":
            cos, sin = torch.ones_like(cos), torch.zeros_like(sin)
        H, L = self.arch["H_cycles"], self.arch["L_cycles"]
        for h_step in range(H):
            for l_step in range(L):
                if not (h_step == H - 1 and l_step == L - 1):
                    z_L = self._level("L_level", self.arch["L_layers"], z_L, z_H + x, cos, sin)
            if h_step != H - 1:
                z_H = self._level("H_level", self.arch["H_layers"], z_H, z_L, cos, sin)
        z_L = self._level("L_level", self.arch["L_layers"], z_L, z_H + x, cos, sin)
        z_H = self._level("H_level", self.arch["H_layers"], z_H, z_L, cos, sin)
        q = F.linear(z_H[:, 0], self.w["inner.q_head.weight"], self.w["inner.q_head.bias"]).to(torch.float32)
        return z_H, z_L, F.linear(z_H, self.w["inner.lm_head.weight"])[:, self.puzzle_len:], q[..., 0], q[..., 1]

    @torch.no_grad()
    def evaluate(self, inputs: torch.Tensor, puzzle_ids: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Upstream's eval loop (`while not all_finish`), outputs stacked per step."""
        if puzzle_ids is None:  # a model without puzzle embedding ignores them
            puzzle_ids = torch.zeros(inputs.shape[0], dtype=torch.int32)
        batch = {"inputs": inputs, "puzzle_identifiers": puzzle_ids}
        size, positions = inputs.shape[0], inputs.shape[1] + self.puzzle_len
        z_H = torch.empty(size, positions, self.hidden)
        z_L = torch.empty(size, positions, self.hidden)
        steps = torch.zeros(size, dtype=torch.int32)
        halted = torch.ones(size, dtype=torch.bool)
        data = {k: torch.empty_like(v) for k, v in batch.items()}
        history: dict[str, list] = {"logits": [], "q_halt_logits": [], "q_continue_logits": [], "z_H": [], "z_L": []}
        while True:
            z_H = torch.where(halted.view(-1, 1, 1), self.w["inner.H_init"], z_H)
            z_L = torch.where(halted.view(-1, 1, 1), self.w["inner.L_init"], z_L)
            steps = torch.where(halted, 0, steps)
            data = {k: torch.where(halted.view((-1,) + (1,) * (batch[k].ndim - 1)), batch[k], v) for k, v in data.items()}
            z_H, z_L, logits, q_halt, q_continue = self.inner(z_H, z_L, data["inputs"], data["puzzle_identifiers"])
            for name, value in zip(history, (logits, q_halt, q_continue, z_H, z_L)):
                history[name].append(value)
            steps = steps + 1
            halted = steps >= self.max_steps
            if halted.all():
                return {name: torch.stack(values) for name, values in history.items()}
