"""Load HRM weights: upstream `step_N` checkpoints (with `all_config.yaml` beside) or safetensors.

Upstream saves the state_dict of its ACT loss head, usually `torch.compile`d, so keys look like
`_orig_mod.model.inner.H_level.…` or `model.inner.…`; we accept those and bare `inner.…`.
Every mismatch between the file and the model ends in one `CheckpointError` naming the keys.

Upstream stores only the architecture in the yaml (`arch_section`); the vocabulary size, the number of puzzle
identifiers and (for learned positions or TRM's mlp_t) the sequence length come from the dataset, so we infer
them from the weights' shapes (`config_from_weights`). The yaml's `arch.name` picks the family.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
from contextlib import contextmanager
from dataclasses import dataclass
import warnings
from pathlib import Path
from typing import Any, Mapping

import safetensors
import safetensors.torch
import torch
import yaml

from hrmc.hrm_ref.config import ARCH_NAMES, TRM_DEFAULTS, HRMConfig, check_values, puzzle_positions, swiglu_width
from hrmc.hrm_ref.model import HRM
from hrmc.errors import CheckpointError, ConfigError
from hrmc.names import ARCH

KEY_PREFIXES = ("_orig_mod.model.", "model.", "")
UPSTREAM_CONFIG_NAME = "all_config.yaml"
DATASET_METADATA = "dataset.json"  # upstream's PuzzleDatasetMetadata, in each split of a dataset
DATASET_SPLITS = ("train", "test")


def strip_key_prefix(state: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Map upstream key layouts onto ours (`inner.…`)."""
    if not state:
        raise CheckpointError(f"{source}: holds no weights (an empty state_dict)")
    for prefix in KEY_PREFIXES:
        if state and all(key.startswith(prefix + "inner.") for key in state):
            return {key[len(prefix):]: value for key, value in state.items()}
    stray = next((k for k in state if not any(k.startswith(p + "inner.") for p in KEY_PREFIXES)), None)
    if stray is None:  # every key fits some prefix, but not all the same one
        raise CheckpointError(f"{source}: keys mix the prefixes {', '.join(repr(p + 'inner.') for p in KEY_PREFIXES)}")
    raise CheckpointError(
        f"{source}: key {stray!r} does not start with _orig_mod.model.inner., model.inner. or inner.: "
        f"not an HRM checkpoint")


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors of a checkpoint file and, for safetensors, its metadata."""
    if path.suffix == ".safetensors":
        try:
            with safetensors.safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            return safetensors.torch.load_file(str(path)), metadata
        except (safetensors.SafetensorError, OSError) as err:
            raise CheckpointError(f"cannot read safetensors checkpoint {path}: {err}") from None
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing: one line is ours
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"cannot read checkpoint {path}: not a weights-only torch file (a pickle of other "
                              "objects, which hrmc never runs)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {first_line}") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} is not a state_dict (a mapping of names to tensors)")
    return dict(state), {}


def _read_arch(path: Path, config_path: Path | None,
               metadata: Mapping[str, str]) -> tuple[dict[str, Any], str, DatasetMetadata | None]:
    """The arch section: from --config, else `all_config.yaml` beside the file, else safetensors metadata; and
    the metadata of the dataset the yaml's `data_path` names, where it is found."""
    candidate = config_path or path.parent / UPSTREAM_CONFIG_NAME
    if config_path is not None or candidate.exists():
        if not candidate.is_file():
            raise CheckpointError(f"config not found: {candidate}")
        try:
            parsed = yaml.safe_load(candidate.read_text())
        except yaml.YAMLError as err:
            raise CheckpointError(f"cannot parse config {candidate}: {str(err).splitlines()[0]}") from None
        arch = arch_section(parsed, str(candidate))
        return arch, str(candidate), dataset_metadata(parsed.get("data_path"), path, candidate)
    if ARCH in metadata:
        try:
            arch = json.loads(metadata[ARCH])
        except ValueError:
            raise CheckpointError(f"{path}: metadata {ARCH} is not JSON") from None
        return arch_section(arch, f"{path} metadata"), f"{path} metadata", None
    raise CheckpointError(f"no {UPSTREAM_CONFIG_NAME} beside {path}: pass the architecture with --config")


@dataclass(frozen=True)
class DatasetMetadata:
    """What upstream's `dataset.json` (PuzzleDatasetMetadata) says of the task a checkpoint was trained on."""

    path: Path
    seq_len: int
    vocab_size: int
    num_puzzle_identifiers: int


def dataset_metadata(data_path: object, checkpoint: Path, config: Path) -> DatasetMetadata | None:
    """The metadata of the dataset `data_path` (all_config.yaml's, relative to where upstream's training ran):
    `DATA/train/dataset.json` (or test/), looked for from the current folder and from each folder above the
    checkpoint, as upstream's checkpoints/<project>/<run>/step_N lie beside its data/. None where it is not."""
    if not isinstance(data_path, str) or not data_path:
        return None
    bases = [Path()] if Path(data_path).is_absolute() else [Path.cwd(), *checkpoint.resolve().parents]
    for base in bases:
        for split in DATASET_SPLITS:
            found = base / data_path / split / DATASET_METADATA
            if found.is_file():
                return _read_dataset(found, config)
    return None


def _read_dataset(path: Path, config: Path) -> DatasetMetadata:
    try:
        values = json.loads(path.read_text())
        return DatasetMetadata(path, *(_positive(values[key], key) for key in ("seq_len", "vocab_size",
                                                                              "num_puzzle_identifiers")))
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        what = f"key {err.args[0]!r}" if isinstance(err, KeyError) else "its metadata"
        raise CheckpointError(f"{path} (the dataset {config.name} names): unreadable {what}") from None


def _positive(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(key)
    return value


def _check_dataset(config: HRMConfig, dataset: DatasetMetadata, source: str) -> HRMConfig:
    """The checkpoint must be the model of its dataset (vocabulary, puzzle identifiers), which fixes the
    sequence length as upstream reads it."""
    for key in ("vocab_size", "num_puzzle_identifiers"):
        if getattr(config, key) != getattr(dataset, key):
            raise CheckpointError(f"{source}: its weights have {key} {getattr(config, key)}, but {dataset.path} says "
                                  f"{getattr(dataset, key)} (the data_path of another task?)")
    if config.seq_len not in (None, dataset.seq_len):
        raise CheckpointError(f"{source}: its weights fix seq_len {config.seq_len}, but {dataset.path} says "
                              f"{dataset.seq_len}")
    return config.replace(seq_len=dataset.seq_len)


def _check_keys(model: HRM, weights: Mapping[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()

    def listing(keys: list[str]) -> str:
        return ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")

    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing:
        raise CheckpointError(f"{source}: missing keys {listing(missing)}")
    if unexpected:
        raise CheckpointError(f"{source}: unexpected keys {listing(unexpected)} (does the config match?)")
    misfits = [f"{k} {tuple(weights[k].shape)} (model {tuple(v.shape)})"
               for k, v in expected.items() if weights[k].shape != v.shape]
    if misfits:
        raise CheckpointError(f"{source}: shape mismatch {listing(misfits)}")


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)  # what HRM weights are stored in


def _check_values(weights: Mapping[str, torch.Tensor], source: str) -> None:
    """Every weight a real float and finite: an int, complex or NaN tensor would be cast or run silently."""
    for key, tensor in sorted(weights.items()):
        if tensor.dtype not in FLOAT_DTYPES:
            raise CheckpointError(f"{source}: tensor {key} is {str(tensor.dtype).removeprefix('torch.')}, not a float "
                                  "type (float32, float16, bfloat16 or float64)")
        if not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(f"{source}: tensor {key} has {bad} non-finite value(s) (NaN or inf)")


def load_checkpoint(path: str | Path, config_path: str | Path | None = None,
                    forward_dtype: str = "float32") -> HRM:
    """An eval-mode HRM with the weights of `path`, running in `forward_dtype`."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory: give the step_N or .safetensors file")
    raw, metadata = _read_weights(path)
    weights = strip_key_prefix(raw, str(path))
    _check_values(weights, str(path))
    arch, config_source, dataset = _read_arch(path, Path(config_path) if config_path else None, metadata)
    config = config_from_weights(arch, weights, f"{path} with {config_source}").replace(forward_dtype=forward_dtype)
    if dataset is not None:
        config = _check_dataset(config, dataset, f"{path} with {config_source}")
    model = HRM(config)
    _check_keys(model, weights, str(path))
    model.load_state_dict(weights, strict=True)
    return model.eval()


def save_checkpoint(model: HRM, path: str | Path) -> None:
    """Write `model` as one safetensors file that carries its arch config in the metadata."""
    arch = {k: v for k, v in model.config.to_arch_dict().items() if v is not None}
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(tensors, str(path), metadata={ARCH: json.dumps(arch)})


# Keys of upstream's `arch:` section that we read (`name` picks the family); the rest (loss,
# exploration) is training-only.
_ARCH_KEYS = {f.name for f in dataclasses.fields(HRMConfig)} - {"vocab_size", "num_puzzle_identifiers"}
_INTERPOLATION = re.compile(r"^\$\{\.(\w+)\}$")


def arch_section(yaml_dict: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The architecture keys of an upstream yaml: `all_config.yaml` (under `arch:`) or an arch yaml.

    Resolves hydra's sibling references such as `puzzle_emb_ndim: ${.hidden_size}`.
    """
    if not isinstance(yaml_dict, Mapping):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    arch = yaml_dict.get("arch", yaml_dict)
    if not isinstance(arch, Mapping):
        raise ConfigError(f"{source}: 'arch' is not a mapping")
    resolved = {}
    for key, value in arch.items():
        if isinstance(value, str) and (match := _INTERPOLATION.match(value)):
            if match.group(1) not in arch:
                raise ConfigError(f"{source}: arch.{key} refers to missing key {match.group(1)!r}")
            value = arch[match.group(1)]
        resolved[key] = value
    if "hidden_size" not in resolved:
        raise ConfigError(f"{source}: no arch.hidden_size: not an HRM config")
    if "name" in resolved:  # upstream's yaml; ours (safetensors metadata) states `family` instead
        name = resolved["name"]
        family = ARCH_NAMES.get(name) if isinstance(name, str) else None
        if family is None:
            raise ConfigError(f"{source}: arch.name {name!r} is not a model hrmc runs: {', '.join(ARCH_NAMES)}")
        if resolved.get("family", family) != family:
            raise ConfigError(f"{source}: arch.family {resolved['family']!r} contradicts arch.name {name!r}")
        resolved["family"] = family
        if family == "trm":
            resolved = TRM_DEFAULTS | resolved
    return {k: v for k, v in resolved.items() if k in _ARCH_KEYS}


@contextmanager
def _named(source: str):
    """A ConfigError from within names the file it came from."""
    try:
        yield
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def config_from_weights(arch: Mapping[str, Any], weights: Mapping[str, torch.Tensor], source: str) -> HRMConfig:
    """Complete an `arch:` section with the sizes only the weights know (keys without prefix)."""
    def shape(key: str) -> tuple[int, int]:
        """Every tensor the sizes are read from is a matrix."""
        if key not in weights:
            raise CheckpointError(f"{source}: missing key {key}, needed to infer the model size")
        if weights[key].ndim != 2:
            raise CheckpointError(f"{source}: tensor {key} has shape {tuple(weights[key].shape)}, not a matrix")
        return tuple(weights[key].shape)

    arch = dict(arch)
    with _named(source):
        check_values(arch)
    extra: dict[str, Any] = {}
    if arch.get("input_mode") == "latent":  # the denoiser has no vocabulary
        width_key = "inner.latent.in_proj.weight"
        hidden, vocab_size = shape(width_key)[0], 0
    elif arch.get("input_mode") == "hidden":  # the controller: the LLM's width and vocabulary
        width_key = "inner.front.proj.weight"
        hidden, d_model = shape(width_key)
        if arch.pop("d_model", d_model) != d_model:
            raise ConfigError(f"{source}: arch.d_model does not match {width_key}, which reads {d_model} wide states")
        vocab_key = "inner.vocab_bias.proj.weight"
        vocab_size = shape(vocab_key)[0] if vocab_key in weights else 0
        extra["d_model"] = d_model
    else:
        width_key = "inner.embed_tokens.embedding_weight"
        vocab_size, hidden = shape(width_key)
    if arch.get("hidden_size", hidden) != hidden:
        raise ConfigError(
            f"{source}: arch.hidden_size is {arch['hidden_size']} but {width_key} has width {hidden}")
    extra["vocab_size"] = vocab_size
    mlp_key = "inner.L_level.layers.0.mlp.gate_up_proj.weight"  # checked before a model that wide is built
    expansion = arch.get("expansion", HRMConfig.expansion)
    if mlp_key in weights and 2 * swiglu_width(expansion, hidden) != shape(mlp_key)[0]:
        raise ConfigError(f"{source}: arch.expansion {expansion:g} does not give the SwiGLU width of {mlp_key}, "
                          f"{shape(mlp_key)[0] // 2}")
    if arch.get("puzzle_emb_ndim", 0) > 0:
        n_ids, ndim = shape("inner.puzzle_emb.weights")
        if ndim != arch["puzzle_emb_ndim"]:
            raise ConfigError(
                f"{source}: arch.puzzle_emb_ndim is {arch['puzzle_emb_ndim']} but inner.puzzle_emb.weights "
                f"has width {ndim}")
        extra["num_puzzle_identifiers"] = n_ids
    # Learned positions and mlp_t's sequence SwiGLU span every position: puzzle embedding plus seq_len.
    if arch.get("pos_encodings", "rope") == "learned":
        positions_key, what = "inner.embed_pos.embedding_weight", "learned positions"
    elif arch.get("mlp_t"):
        positions_key, what = "inner.L_level.layers.0.mlp_t.down_proj.weight", "positions mlp_t mixes"
    else:
        positions_key = None
    if positions_key:
        positions = shape(positions_key)[0]
        explicit_len = arch.get("puzzle_emb_len", 0) if arch.get("family") == "trm" else 0  # HRM has none
        seq_len = positions - puzzle_positions(arch.get("puzzle_emb_ndim", 0), hidden, explicit_len)
        if arch.pop("seq_len", seq_len) != seq_len:
            raise ConfigError(f"{source}: arch.seq_len does not match the {positions} {what}")
        extra["seq_len"] = seq_len
    try:
        with _named(source):
            return HRMConfig(**arch, **extra)
    except TypeError as err:  # a value of the wrong type in the yaml
        raise ConfigError(f"{source}: {err}") from None
