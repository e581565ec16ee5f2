"""A second, functional implementation of upstream HRM ACT v1 eval semantics, for tests only.

It reads a raw state_dict (`inner.…` keys) and an upstream `arch:` dict and follows upstream's
operation order, including its ACT wrapper: the carry starts "halted", halted rows are reset to
H_init/L_init and their data swapped in, and in eval every row halts at `halt_max_steps`.
It shares no code with hrm_ref, so a wrong key, cycle order or reset rule there shows up here.
`UpstreamTRMOracle` does the same for TinyRecursiveModels' `models/recursive_reasoning/trm.py`.
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
        self.eps = arch.get("rms_norm_eps", 1e-5)

    def _swiglu(self, prefix: str, x: torch.Tensor) -> torch.Tensor:
        gate, up = F.linear(x, self.w[prefix + "gate_up_proj.weight"]).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, self.w[prefix + "down_proj.weight"])

    def _mix(self, prefix: str, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """The block's first half: attention over the positions, residual, norm."""
        batch, seq, _ = h.shape
        head_dim = self.hidden // self.heads
        qkv = F.linear(h, self.w[prefix + "self_attn.qkv_proj.weight"]).view(batch, seq, 3 * self.heads, head_dim)
        q, k, v = qkv[:, :, :self.heads], qkv[:, :, self.heads:2 * self.heads], qkv[:, :, 2 * self.heads:]
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        attn = F.softmax(torch.matmul(q, k.transpose(-2, -1)) * head_dim ** -0.5, dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(batch, seq, self.hidden)
        return _rms(h + F.linear(out, self.w[prefix + "self_attn.o_proj.weight"]), self.eps)

    def _block(self, prefix: str, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = self._mix(prefix, h, cos, sin)
        return _rms(h + self._swiglu(prefix + "mlp.", h), self.eps)

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

    def _rope_tables(self, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin; without RoPE the identity rotation (cos 1, sin 0)."""
        head_dim = self.hidden // self.heads
        inv_freq = 1.0 / (self.arch.get("rope_theta", 10000.0) ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        freqs = torch.outer(torch.arange(positions, dtype=torch.float32), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        if self.arch.get("pos_encodings", "rope") != "rope":
            return torch.ones_like(emb), torch.zeros_like(emb)
        return emb.cos(), emb.sin()

    def _outputs(self, z_H, z_L):
        q = F.linear(z_H[:, 0], self.w["inner.q_head.weight"], self.w["inner.q_head.bias"]).to(torch.float32)
        return z_H, z_L, F.linear(z_H, self.w["inner.lm_head.weight"])[:, self.puzzle_len:], q[..., 0], q[..., 1]

    def halts(self, q_halt: torch.Tensor, q_continue: torch.Tensor) -> torch.Tensor:
        """The q head's halting signal (upstream applies it only in training)."""
        return q_halt > q_continue

    def inner(self, z_H, z_L, inputs, puzzle_ids):
        x = self._embed(inputs, puzzle_ids)
        cos, sin = self._rope_tables(x.shape[1])
        H, L = self.arch["H_cycles"], self.arch["L_cycles"]
        for h_step in range(H):
            for l_step in range(L):
                if not (h_step == H - 1 and l_step == L - 1):
                    z_L = self._level("L_level", self.arch["L_layers"], z_L, z_H + x, cos, sin)
            if h_step != H - 1:
                z_H = self._level("H_level", self.arch["H_layers"], z_H, z_L, cos, sin)
        z_L = self._level("L_level", self.arch["L_layers"], z_L, z_H + x, cos, sin)
        z_H = self._level("H_level", self.arch["H_layers"], z_H, z_L, cos, sin)
        return self._outputs(z_H, z_L)

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


class UpstreamTRMOracle(UpstreamOracle):
    """TRM: one network (`L_level`) for both updates, H_cycles − 1 no-grad cycles then one with grad,
    `puzzle_emb_len` positions (16 unless the arch says; 0 means HRM's ceil(ndim / hidden)), mlp_t
    mixing over the positions while transposed, and the halting signal q_halt > 0 with no_ACT_continue."""

    def __init__(self, weights: dict[str, torch.Tensor], arch: dict, halt_max_steps: int | None = None) -> None:
        super().__init__(weights, arch, halt_max_steps)
        self.puzzle_len = arch.get("puzzle_emb_len", 16) or self.puzzle_len

    def _mix(self, prefix: str, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        if not self.arch.get("mlp_t", False):
            return super()._mix(prefix, h, cos, sin)
        h = h.transpose(1, 2)
        return _rms(h + self._swiglu(prefix + "mlp_t.", h), self.eps).transpose(1, 2)

    def halts(self, q_halt: torch.Tensor, q_continue: torch.Tensor) -> torch.Tensor:
        return q_halt > 0 if self.arch.get("no_ACT_continue", True) else q_halt > q_continue

    def inner(self, z_H, z_L, inputs, puzzle_ids):
        x = self._embed(inputs, puzzle_ids)
        cos, sin = self._rope_tables(x.shape[1])
        layers = self.arch["L_layers"]
        for _ in range(self.arch["H_cycles"] - 1):  # upstream's no-grad cycles
            for _ in range(self.arch["L_cycles"]):
                z_L = self._level("L_level", layers, z_L, z_H + x, cos, sin)
            z_H = self._level("L_level", layers, z_H, z_L, cos, sin)
        for _ in range(self.arch["L_cycles"]):  # the cycle with grad
            z_L = self._level("L_level", layers, z_L, z_H + x, cos, sin)
        z_H = self._level("L_level", layers, z_H, z_L, cos, sin)
        return self._outputs(z_H, z_L)


# The oracle of each upstream `arch.name`, as upstream's pretrain.py picks the model class by it.
ORACLES = {"hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1": UpstreamOracle,
           "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1": UpstreamTRMOracle}
