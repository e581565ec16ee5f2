"""The HRM ACT v1 architecture config: the dataclass, its values checked, and the numbers derived from it.

The family is HRM, or TRM (docs/design.md §2, "The family: TRM"), which is a configuration of the same model.
Reading it from upstream's `all_config.yaml` and inferring what the yaml leaves out from the weights is the
checkpoint loader's job (checkpoint.py: `arch_section`, `config_from_weights`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from hrmc.errors import ConfigError

# float16 and bfloat16 keep the same float32 islands (hrm_ref.layers.compute_dtype): float16 is the model as
# PyTorch runs it in float16, the yardstick of every float16 artifact (docs/design.md §4)
FORWARD_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
                  "float16": torch.float16}
POS_ENCODINGS = ("rope", "learned", "none")  # none: TRM only (its mlp_t recipe)
FAMILIES = ("hrm", "trm")
# Upstream's `arch.name` of each family's ACT model (sapientinc/HRM, SamsungSAILMontreal/TinyRecursiveModels).
ARCH_NAMES = {"hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1": "hrm",
              "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1": "trm"}
# Upstream TRM's own defaults for the keys its yaml may leave out (HRMConfig's defaults are HRM's).
TRM_DEFAULTS = {"puzzle_emb_len": 16, "no_ACT_continue": True}
# tokens: upstream's token ids; bytes: byte/split-nibble front end; latent: the DDIM denoiser's x_t;
# hidden: a frozen LLM's last hidden states (the controller).
INPUT_MODES = ("tokens", "bytes", "latent", "hidden")
INJECTORS = ("grb", "cab")  # gated residual bias, cross-attention bridge
HEX_SYMBOLS = {"sha1": 40, "sha256": 64}  # hex digits of each digest
OUTPUT_NORMS = ("softmax", "stablemax")
# Fixed N×T reasoning depths (H cycles × L cycles per forward) for models without ACT.
REASONING_DEPTHS = {"fast": (1, 1), "normal": (2, 2), "deep": (3, 2), "extreme": (6, 4)}
MAX_ACCUMULATORS = 16  # one per nibble difference (hi - lo) mod 16
MAX_BUDGET = 1024  # ACT steps: a static graph unrolls every one of them (upstream's sudoku runs 16)
# Norms and RoPE compute in float32 whatever the forward dtype: these keys must be normal float32 numbers
# (1e300 would be inf, 1e-45 flushed to 0 on some hardware), not merely finite in Python.
FLOAT32_KEYS = ("rms_norm_eps", "rope_theta")
FLOAT32_NORMAL = (torch.finfo(torch.float32).tiny, torch.finfo(torch.float32).max)


def _find_multiple(a: int, b: int) -> int:
    return -(a // -b) * b


def swiglu_width(expansion: float, features: int) -> int:
    """Inner width of a SwiGLU over `features`: round(expansion · features · 2/3) up to a multiple of 256."""
    return _find_multiple(round(expansion * features * 2 / 3), 256)


def puzzle_positions(puzzle_emb_ndim: int, hidden_size: int, puzzle_emb_len: int = 0) -> int:
    """Positions of the puzzle embedding: TRM's explicit puzzle_emb_len, else (0) ceil(ndim / hidden)."""
    return puzzle_emb_len or -(puzzle_emb_ndim // -hidden_size)


@dataclass(frozen=True)
class HRMConfig:
    """Everything that fixes the shapes and the arithmetic of one HRM."""

    vocab_size: int
    hidden_size: int = 512
    num_heads: int = 8
    H_cycles: int = 2
    L_cycles: int = 2
    H_layers: int = 4
    L_layers: int = 4
    expansion: float = 4.0
    puzzle_emb_ndim: int = 0
    num_puzzle_identifiers: int = 1
    pos_encodings: str = "rope"
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    halt_max_steps: int = 16
    forward_dtype: str = "float32"
    # Needed only for learned positions (its table has seq_len + puzzle_emb_len rows), for mlp_t and
    # for generating a random batch; otherwise the sequence length comes from the inputs.
    seq_len: int | None = None
    # The family (docs/design.md §2): TRM runs one network, L_level, for both updates (H_layers ignored).
    family: str = "hrm"
    # Positions the puzzle embedding takes: 0 means ceil(puzzle_emb_ndim / hidden_size), which HRM
    # always uses; TRM may state more (upstream's 16). Holds the resolved number once built.
    puzzle_emb_len: int = 0
    no_ACT_continue: bool = False  # TRM: q-halt stops on q_halt > 0, not q_halt > q_continue
    mlp_t: bool = False  # TRM: a SwiGLU across the positions replaces attention (fixes seq_len)
    # Variants (hrmc's design documents); the defaults are upstream's model, bit for bit.
    input_mode: str = "tokens"
    nibble_index: str = "high"  # bytes: the 4-bit stream that indexes the FiLM
    dead_energy_accumulators: int = 0  # bytes: saturating counters of rare nibble-pair events
    film_dim: int = 32  # bytes: width of the FiLM conditioning vector
    hex_head: str | None = None  # sha1 | sha256: a hex-digest classifier read from z_H
    hex_prefix_suffix: bool = False  # the hex head outputs only the first and last 8 symbols
    free_energy_head: bool = False  # sigmoid(linear(z_H)) per token
    act: bool = True  # False: fixed N×T mode, one forward and no q head
    output_norm: str | None = None  # softmax | stablemax: adds normalised "probs"
    # Controller (input_mode "hidden"): the HRM reads a frozen LLM's hidden states [B, T, d_model]
    # and writes them back conditioned; vocab_size > 0 adds the vocab-bias head. One ACT step is
    # one segment: inner_T L-steps and one H-step, so H_cycles = 1, L_cycles = inner_T and the
    # default budget halt_max_steps = eval_segments are derived from these.
    d_model: int = 0
    injector: str = "grb"
    mem_tokens: int = 4  # cab: memory tokens the token states attend to
    gate_init: float = 0.0  # every gate's initial pre-sigmoid value
    segments: int = 1  # segments in training
    eval_segments: int = 1  # segments at inference; more than `segments` scales depth
    inner_T: int = 1

    def __post_init__(self) -> None:
        check_values({spec.name: getattr(self, spec.name) for spec in dataclasses.fields(self)})
        if self.input_mode == "hidden":
            self._check_controller()
            for name, value in (("H_cycles", 1), ("L_cycles", self.inner_T), ("halt_max_steps", self.eval_segments)):
                object.__setattr__(self, name, value)
        positive = ("hidden_size", "num_heads", "H_cycles", "L_cycles", "L_layers", "halt_max_steps",
                    "num_puzzle_identifiers") + (("H_layers",) if self.family == "hrm" else ())  # TRM has no H_level
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"config {name} must be at least 1, got {getattr(self, name)}")
        if self.halt_max_steps > MAX_BUDGET:  # a controller's budget is its eval_segments
            key = "eval_segments" if self.input_mode == "hidden" else "halt_max_steps"
            raise ConfigError(f"config {key} {self.halt_max_steps} is beyond what hrmc supports: at most {MAX_BUDGET} "
                              "ACT steps")
        if self.vocab_size < 1 and self.input_mode not in ("latent", "hidden"):
            raise ConfigError(f"config vocab_size must be at least 1, got {self.vocab_size}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"config hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if (self.hidden_size // self.num_heads) % 2:
            raise ConfigError(f"config head dim {self.hidden_size // self.num_heads} must be even for RoPE")
        if self.puzzle_emb_ndim < 0:
            raise ConfigError(f"config puzzle_emb_ndim must be >= 0, got {self.puzzle_emb_ndim}")
        if self.pos_encodings not in POS_ENCODINGS:
            raise ConfigError(f"config pos_encodings {self.pos_encodings!r} is not one of {', '.join(POS_ENCODINGS)}")
        if self.forward_dtype not in FORWARD_DTYPES:
            raise ConfigError(
                f"config forward_dtype {self.forward_dtype!r} is not one of {', '.join(FORWARD_DTYPES)}")
        if self.pos_encodings == "learned" and self.seq_len is None:
            raise ConfigError("config with learned positions needs seq_len")
        self._check_family()
        self._check_variants()

    def _one_of(self, name: str, allowed) -> None:
        if getattr(self, name) not in allowed:
            raise ConfigError(f"config {name} {getattr(self, name)!r} is not one of {', '.join(map(str, allowed))}")

    def _check_family(self) -> None:
        """TRM's options need family trm; puzzle_emb_len is resolved to the positions it stands for."""
        self._one_of("family", FAMILIES)
        if self.family == "hrm":
            for option, used in (("pos_encodings 'none'", self.pos_encodings == "none"), ("mlp_t", self.mlp_t),
                                 ("no_ACT_continue", self.no_ACT_continue)):
                if used:
                    raise ConfigError(f"config {option} is a TRM option: it needs family 'trm'")
            # HRM has no such key: its puzzle embedding always takes ceil(ndim / hidden) positions.
            object.__setattr__(self, "puzzle_emb_len", puzzle_positions(self.puzzle_emb_ndim, self.hidden_size))
            return
        if self.puzzle_emb_len < 0:
            raise ConfigError(f"config puzzle_emb_len must be >= 0, got {self.puzzle_emb_len}")
        if self.puzzle_emb_len and not self.puzzle_emb_ndim:  # upstream's carry would not fit its input
            raise ConfigError(f"config puzzle_emb_len {self.puzzle_emb_len} needs a puzzle embedding (puzzle_emb_ndim > 0)")
        if 0 < self.puzzle_emb_len * self.hidden_size < self.puzzle_emb_ndim:
            raise ConfigError(f"config puzzle_emb_len {self.puzzle_emb_len} is too short for puzzle_emb_ndim "
                              f"{self.puzzle_emb_ndim}: it holds {self.puzzle_emb_len * self.hidden_size} values")
        object.__setattr__(self, "puzzle_emb_len",
                           puzzle_positions(self.puzzle_emb_ndim, self.hidden_size, self.puzzle_emb_len))
        if self.mlp_t and self.input_mode not in ("tokens", "bytes"):
            raise ConfigError(f"config mlp_t needs token inputs (input_mode tokens or bytes), got {self.input_mode!r}")
        if self.mlp_t and self.seq_len is None:
            raise ConfigError("config with mlp_t needs seq_len (its sequence SwiGLU is as wide as the positions)")

    def _check_variants(self) -> None:
        one_of = self._one_of
        one_of("input_mode", INPUT_MODES)
        one_of("nibble_index", ("high", "low"))
        one_of("hex_head", (None, *HEX_SYMBOLS))
        one_of("output_norm", (None, *OUTPUT_NORMS))
        if not 0 <= self.dead_energy_accumulators <= MAX_ACCUMULATORS:
            raise ConfigError(f"config dead_energy_accumulators must be in [0, {MAX_ACCUMULATORS}], "
                              f"got {self.dead_energy_accumulators}")
        if self.input_mode == "bytes" and self.vocab_size != 256:
            raise ConfigError(f"config input_mode 'bytes' needs vocab_size 256, got {self.vocab_size}")
        if self.input_mode == "latent" and (self.puzzle_emb_ndim or self.output_norm or self.act):
            raise ConfigError("config input_mode 'latent' (denoiser) takes no puzzle embedding, output_norm or ACT")

    def _check_controller(self) -> None:
        if self.injector not in INJECTORS:
            raise ConfigError(f"config injector {self.injector!r} is not one of {', '.join(INJECTORS)}")
        for name in ("d_model", "mem_tokens", "segments", "eval_segments", "inner_T"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config {name} must be at least 1 for a controller, got {getattr(self, name)}")
        if self.puzzle_emb_ndim or self.output_norm or self.hex_head or self.free_energy_head:
            raise ConfigError("config input_mode 'hidden' (controller) takes no puzzle embedding, output_norm, "
                              "hex or free-energy head")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def swiglu_width(self, features: int) -> int:
        return swiglu_width(self.expansion, features)

    @property
    def intermediate_size(self) -> int:
        """The channel SwiGLU's inner width."""
        return self.swiglu_width(self.hidden_size)

    @property
    def torch_dtype(self) -> torch.dtype:
        return FORWARD_DTYPES[self.forward_dtype]

    def with_depth(self, depth: str) -> "HRMConfig":
        """The same model reasoning N×T cycles per forward (`fast`, `normal`, `deep`, `extreme`)."""
        if depth not in REASONING_DEPTHS:
            raise ConfigError(f"unknown reasoning depth {depth!r}: choose one of {', '.join(REASONING_DEPTHS)}")
        H_cycles, L_cycles = REASONING_DEPTHS[depth]
        return self.replace(H_cycles=H_cycles, L_cycles=L_cycles)

    def replace(self, **changes: Any) -> "HRMConfig":
        return dataclasses.replace(self, **changes)

    def to_arch_dict(self) -> dict[str, Any]:
        """The `arch:` section upstream would write for this model (plus the inferred sizes)."""
        return dataclasses.asdict(self)


_FIELD_TYPES = {spec.name: spec.type for spec in dataclasses.fields(HRMConfig)}


def _is_number(value: Any) -> bool:
    """A real number a float holds: not a bool, not NaN, not an integer too large for a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return not math.isnan(value)
    except OverflowError:
        return False


def _shown(value: Any) -> str:
    return f"the string {value!r}" if isinstance(value, str) else repr(value)


def check_values(values: Mapping[str, Any]) -> None:
    """Each config key in `values` of its field's type, and the real-valued ones in range. Run on a yaml's
    section before any value is compared with the weights, so `hidden_size: '64'` or `mlp_t: 'yes'` is named
    as what it is. A bool is not an integer, nor an integer 64.0."""
    for name, value in values.items():
        declared = _FIELD_TYPES.get(name)
        if declared is None or (value is None and "None" in declared):
            continue
        kind = declared.split(" | ")[0]
        if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"config {name} must be an integer, got {_shown(value)}")
        if kind == "float" and not _is_number(value):
            raise ConfigError(f"config {name} must be a number, got {_shown(value)}")  # gate_init may be -inf
        if kind == "bool" and not isinstance(value, bool):
            raise ConfigError(f"config {name} must be true or false, got {_shown(value)}")
    if not 0 < values.get("expansion", 1) < math.inf:
        raise ConfigError(f"config expansion must be positive and finite, got {values['expansion']}")
    low, high = FLOAT32_NORMAL
    for name in FLOAT32_KEYS:
        if name in values and not low <= values[name] <= high:
            raise ConfigError(f"config {name} must be a positive normal float32, in [{low:.3g}, {high:.3g}], got "
                              f"{values[name]:g}: the model computes with it in float32")
    if values.get("seq_len") is not None and values["seq_len"] < 1:
        raise ConfigError(f"config seq_len must be at least 1, got {values['seq_len']}")
