"""The MLX backend: the post-pass graph (pipeline `mlx`) emitted as a readable MLX module.

`lower_mlx(lowered, folder)` writes a self-contained folder:

    hrm_mlx.py              generated: one `nn.Module` per graph (Inference, Step, Chunk), one line per ONNX node
    weights.safetensors     every distinct constant once (the graphs share their weights)
    config.json             the model config and hrmc's metadata (policy, budget, outputs)
    README.md               how to load and run it with only `mlx` and `numpy` installed

Each ONNX op has one entry in `OPS`, the op-mapping table; a node whose op has no entry fails at
lower time with a line naming the op and the node. The fused `hrmc` functions map to MLX's fused
primitives: `mx.fast.rms_norm`, `mx.fast.scaled_dot_product_attention`, and rope from the
exported cos/sin tables (never `mx.fast.rope`, which recomputes them: docs/design.md §3).

Values derived from `Shape` (the batch size) are computed with numpy while `mx.compile` traces,
so the module runs compiled at any batch size.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Callable

import numpy as np
import onnx_ir as ir

from hrmc.hrm_ref import HRM, Batch, Carry
from hrmc.hrm_ref.act import initial_carry, resolve_budget
from hrmc import __version__
from hrmc.binding import file_sha256, json_sha256, make_record, parse_record, verify
from hrmc.errors import InputError
from hrmc.files import atomic_folder, check_output_folder
from hrmc.lowering.artifact import PARTS_KEY
from hrmc.targets import LowerOptions, Target
from hrmc.targets.executor import DEFAULT_CHUNK, Arrays, Executor, carry_arrays
from hrmc.targets._nodes import LowerError, NodeReader, op_key, require_static
from hrmc.targets.host_loop import carry_feed, run_chunks, split_step, until_steps_run

MODULE, WEIGHTS, CONFIG, README_FILE = "hrm_mlx.py", "weights.safetensors", "config.json", "README.md"
FILES = {"module": MODULE, "weights": WEIGHTS, "readme": README_FILE}  # parts by role; config.json holds the record
PARTS = "parts"  # config.json's key for the record (hrmc.binding)
DTYPES = {ir.DataType.FLOAT: "float32", ir.DataType.FLOAT16: "float16", ir.DataType.BFLOAT16: "bfloat16",
          ir.DataType.INT64: "int64", ir.DataType.INT32: "int32", ir.DataType.INT8: "int8",
          ir.DataType.UINT8: "uint8", ir.DataType.UINT32: "uint32", ir.DataType.UINT16: "uint16",
          ir.DataType.INT16: "int16", ir.DataType.BOOL: "bool_"}
CLASSES = {"static": ("Inference", "The whole inference: `budget` masked ACT steps."),
           "step": ("Step", "One ACT step, with the carry in and out (chunk-budget 1)."),
           "chunk": ("Chunk", "A chunk of ACT steps, with the carry in and out (for a host loop).")}


@dataclass
class WeightStore:
    """Constants by content: the same tensor in two graphs is stored once."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    by_digest: dict[str, str] = field(default_factory=dict)

    def key(self, name: str, array: np.ndarray) -> str:
        digest = hashlib.sha256(array.tobytes() + str((array.dtype, array.shape)).encode()).hexdigest()
        if digest not in self.by_digest:
            key = name if name not in self.arrays else f"{name}.{len(self.arrays)}"
            self.arrays[key], self.by_digest[digest] = array, key
        return self.by_digest[digest]


class Emitter(NodeReader):
    """Turns one graph into the body of a `__call__`: names, constants, and one line per node."""

    def __init__(self, weights: WeightStore, source: str) -> None:
        super().__init__(source)
        self.weights = weights
        self.names: dict[ir.Value, str] = {}
        self.host: set[ir.Value] = set()  # values computed with numpy at trace time (shapes)
        self.ns = "mx"

    def name(self, value: ir.Value) -> str:
        if value not in self.names:
            identifier = re.sub(r"\W", "_", value.name or "v")
            identifier = f"v_{identifier}" if not identifier[0].isalpha() else identifier
            taken = set(self.names.values())
            while identifier in taken or identifier in ("w", "mx", "np", "nn", "self", "rope"):
                identifier += "_"
            self.names[value] = identifier
        return self.names[value]

    def arg(self, value: ir.Value) -> str:
        """How the node being emitted refers to `value` (numpy for host nodes, MLX otherwise)."""
        array = self.const(value)
        if array is not None:
            if self.ns == "np":
                return f"np.array({array.tolist()!r}, dtype=np.{array.dtype})"
            return f'w["{self.weights.key(value.name, array)}"]'
        if value in self.host and self.ns == "mx":
            return f"mx.array({self.name(value)})"
        return self.name(value)

    def shape(self, value: ir.Value, what: str) -> str:
        """A shape argument as a Python tuple expression: a constant, or a host (shape-derived) value."""
        if value in self.host:
            return f"tuple(int(d) for d in {self.name(value)})"
        return repr(tuple(self.ints(value, what)))

    def dtype(self, code) -> str:
        if ir.DataType(code) not in DTYPES:
            raise self.fail(f"data type {ir.DataType(code).name} has no MLX equivalent")
        return f"{self.ns}.{DTYPES[ir.DataType(code)]}"

    def emit(self, node: ir.Node) -> str:
        self.node, key = node, op_key(node)
        if key not in OPS:
            raise self.fail(f"no MLX mapping for op {key!r}")
        inputs = [v for v in node.inputs if v is not None]
        host = node.op_type == "Shape" or (inputs and key in HOST_OPS and all(
            v in self.host or self.const(v) is not None for v in inputs))
        self.ns = "np" if host else "mx"
        expression = OPS[key](self, node)
        if host:
            self.host.update(node.outputs)
        self.ns = "mx"
        return f"{', '.join(self.name(o) for o in node.outputs)} = {expression}"


def _binary(function: str) -> Callable[[Emitter, ir.Node], str]:
    return lambda e, n: f"{e.ns}.{function}({e.arg(n.inputs[0])}, {e.arg(n.inputs[1])})"


def _unary(function: str) -> Callable[[Emitter, ir.Node], str]:
    return lambda e, n: f"{e.ns}.{function}({e.arg(n.inputs[0])})"


def _reduce(function: str) -> Callable[[Emitter, ir.Node], str]:
    def emit(e: Emitter, n: ir.Node) -> str:
        axes = None if e.optional(n, 1) is None else e.ints(n.inputs[1], "axes")
        if axes is None and e.attr("noop_with_empty_axes", 0):
            return e.arg(n.inputs[0])
        return f"{e.ns}.{function}({e.arg(n.inputs[0])}, axis={axes and tuple(axes)!r}, keepdims={bool(e.attr('keepdims', 1))})"
    return emit


def _slice(e: Emitter, n: ir.Node) -> str:
    slices = e.slice_arguments(n)
    rank = n.inputs[0].shape.rank() if n.inputs[0].shape is not None else None
    if rank is not None:  # count every axis from the front
        slices = [(start, end, axis % rank, step) for start, end, axis, step in slices]
    axes = [axis for _, _, axis, _ in slices]
    if any(a >= 0 for a in axes) and any(a < 0 for a in axes):
        raise e.fail("mixed positive and negative axes on an input of unknown rank")
    negative = all(a < 0 for a in axes)
    width = -min(axes) if negative else max(axes) + 1
    index = [":"] * width
    for start, end, axis, step in slices:
        index[axis] = f"{start}:{'' if end is None else end}" + (f":{step}" if step != 1 else "")
    return f"{e.arg(n.inputs[0])}[{'..., ' if negative else ''}{', '.join(index)}]"


def _reshape(e: Emitter, n: ir.Node) -> str:
    x, target = e.arg(n.inputs[0]), n.inputs[1]
    if target in e.host:
        return f"{e.ns}.reshape({x}, {e.shape(target, 'the shape')})"
    dims = e.ints(target, "the shape")
    if not e.attr("allowzero", 0):  # 0 copies the input's dimension
        return f"{e.ns}.reshape({x}, ({''.join(f'{x}.shape[{i}], ' if d == 0 else f'{d}, ' for i, d in enumerate(dims))}))"
    return f"{e.ns}.reshape({x}, {tuple(dims)!r})"


def _split(e: Emitter, n: ir.Node) -> str:
    axis = e.attr("axis", 0)
    if e.optional(n, 1) is not None:
        sizes = e.ints(n.inputs[1], "split sizes")
        return f"{e.ns}.split({e.arg(n.inputs[0])}, {list(np.cumsum(sizes)[:-1].tolist())!r}, axis={axis})"
    return f"{e.ns}.split({e.arg(n.inputs[0])}, {len(n.outputs)}, axis={axis})"


def _gemm(e: Emitter, n: ir.Node) -> str:
    a, b = e.arg(n.inputs[0]), e.arg(n.inputs[1])
    a, b = (f"{a}.T" if e.attr("transA", 0) else a), (f"{b}.T" if e.attr("transB", 0) else b)
    product = f"{e.ns}.matmul({a}, {b})"
    alpha, beta = e.attr("alpha", 1.0), e.attr("beta", 1.0)
    product = product if alpha == 1.0 else f"{product} * {alpha!r}"
    if e.optional(n, 2) is None:
        return product
    bias = e.arg(n.inputs[2])
    return f"{product} + {bias}" if beta == 1.0 else f"{product} + {beta!r} * {bias}"


def _pad(e: Emitter, n: ir.Node) -> str:
    if e.attr("mode", "constant") != "constant" or e.optional(n, 3) is not None:
        raise e.fail("only constant padding of every axis is mapped")
    pads = e.ints(n.inputs[1], "pads")
    widths = list(zip(pads[: len(pads) // 2], pads[len(pads) // 2:]))
    fill = e.const(n.inputs[2]).item() if e.optional(n, 2) is not None else 0
    return f"{e.ns}.pad({e.arg(n.inputs[0])}, {widths!r}, constant_values={fill!r})"


def _mod(e: Emitter, n: ir.Node) -> str:
    if e.attr("fmod", 0):
        raise e.fail("fmod=1 (C fmod) has no MLX equivalent")
    return _binary("remainder")(e, n)  # ONNX Mod with fmod=0 takes the divisor's sign, as Python's % does


def _cumsum(e: Emitter, n: ir.Node) -> str:
    axis = e.ints(n.inputs[1], "axis")[0]
    return (f"mx.cumsum({e.arg(n.inputs[0])}, axis={axis}, reverse={bool(e.attr('reverse', 0))}, "
            f"inclusive={not e.attr('exclusive', 0)})")


def _constant(e: Emitter, n: ir.Node) -> str:
    value = e.attr("value")
    if value is None:
        raise e.fail("only the `value` form of Constant is mapped")
    array = value.numpy()
    return f'w["{e.weights.key(n.outputs[0].name or "constant", array)}"]'


def _constant_of_shape(e: Emitter, n: ir.Node) -> str:
    value = e.attr("value")
    array = value.numpy() if value is not None else np.zeros(1, np.float32)
    return f"mx.full({e.shape(n.inputs[0], 'the shape')}, {array.item()!r}, dtype=mx.{DTYPES[ir.DataType.from_numpy(array.dtype)]})"


def _shape(e: Emitter, n: ir.Node) -> str:
    start, end = e.attr("start", 0), e.attr("end")
    return f"np.array({e.name(n.inputs[0])}.shape[{start}:{'' if end is None else end}], dtype=np.int64)"


def _expand(e: Emitter, n: ir.Node) -> str:
    x = e.arg(n.inputs[0])
    return f"{e.ns}.broadcast_to({x}, np.broadcast_shapes({x}.shape, {e.shape(n.inputs[1], 'the shape')}))"


def _rope(e: Emitter, n: ir.Node) -> str:
    return f"rope({e.arg(n.inputs[0])}, {e.arg(n.inputs[1])}, {e.arg(n.inputs[2])})"


def _attention(e: Emitter, n: ir.Node) -> str:
    scale = e.const(n.inputs[3])
    if scale is None or scale.size != 1:
        raise e.fail("the attention scale must be a constant scalar")
    q, k, v = (f"{e.arg(value)}.transpose(0, 2, 1, 3)" for value in n.inputs[:3])
    return f"mx.fast.scaled_dot_product_attention({q}, {k}, {v}, scale={float(scale)!r}).transpose(0, 2, 1, 3)"


def _rms_norm(e: Emitter, n: ir.Node) -> str:
    epsilon = e.const(n.inputs[1])
    if epsilon is None or epsilon.size != 1:
        raise e.fail("the epsilon must be a constant scalar")
    return f"mx.fast.rms_norm({e.arg(n.inputs[0])}, None, {float(epsilon)!r})"


# The op-mapping table: every op the `mlx` pipeline emits for hrmc's models.
OPS: dict[str, Callable[[Emitter, ir.Node], str]] = {
    "Add": _binary("add"), "Sub": _binary("subtract"), "Mul": _binary("multiply"), "Div": _binary("divide"),
    "Pow": _binary("power"), "Max": _binary("maximum"), "Min": _binary("minimum"),
    "MatMul": _binary("matmul"), "Equal": _binary("equal"), "Greater": _binary("greater"),
    "GreaterOrEqual": _binary("greater_equal"), "Less": _binary("less"), "LessOrEqual": _binary("less_equal"),
    "And": _binary("logical_and"), "Or": _binary("logical_or"), "Mod": _mod,
    "BitwiseAnd": _binary("bitwise_and"), "BitwiseOr": _binary("bitwise_or"),
    "BitShift": lambda e, n: _binary("left_shift" if e.attr("direction") == "LEFT" else "right_shift")(e, n),
    "CumSum": _cumsum,
    "Not": _unary("logical_not"), "Neg": _unary("negative"), "Sqrt": _unary("sqrt"), "Exp": _unary("exp"),
    "Log": _unary("log"), "Abs": _unary("abs"), "Sin": _unary("sin"), "Cos": _unary("cos"), "Tanh": _unary("tanh"),
    "Floor": _unary("floor"), "Reciprocal": _unary("reciprocal"), "Sigmoid": _unary("sigmoid"),
    "Identity": lambda e, n: e.arg(n.inputs[0]),
    "Cast": lambda e, n: f"{e.arg(n.inputs[0])}.astype({e.dtype(e.attr('to'))})",
    "Where": lambda e, n: f"{e.ns}.where({', '.join(e.arg(v) for v in n.inputs)})",
    "Concat": lambda e, n: f"{e.ns}.concatenate([{', '.join(e.arg(v) for v in n.inputs)}], axis={e.attr('axis')})",
    "Gather": lambda e, n: f"{e.ns}.take({e.arg(n.inputs[0])}, {e.arg(n.inputs[1])}, axis={e.attr('axis', 0)})",
    "Unsqueeze": lambda e, n: f"{e.ns}.expand_dims({e.arg(n.inputs[0])}, {tuple(e.ints(n.inputs[1], 'axes'))!r})",
    "Squeeze": lambda e, n: f"{e.ns}.squeeze({e.arg(n.inputs[0])}, {tuple(e.ints(n.inputs[1], 'axes'))!r})",
    "Transpose": lambda e, n: f"{e.ns}.transpose({e.arg(n.inputs[0])}, {tuple(e.attr('perm'))!r})",
    "Softmax": lambda e, n: f"mx.softmax({e.arg(n.inputs[0])}, axis={e.attr('axis', -1)})",
    "ReduceMin": _reduce("min"), "ReduceMax": _reduce("max"), "ReduceSum": _reduce("sum"),
    "ReduceMean": _reduce("mean"),
    "Slice": _slice, "Reshape": _reshape, "Split": _split, "Gemm": _gemm, "Pad": _pad, "Constant": _constant,
    "ConstantOfShape": _constant_of_shape, "Shape": _shape, "Expand": _expand,
    "hrmc.RMSNorm": _rms_norm, "hrmc.Rope": _rope, "hrmc.Attention": _attention,
    "hrmc.SwiGLU": lambda e, n: f"nn.silu({e.arg(n.inputs[0])}) * {e.arg(n.inputs[1])}",
}
# Ops that may run on the host (numpy) when they only compute shapes.
HOST_OPS = {"Concat", "Gather", "Slice", "Unsqueeze", "Squeeze", "Cast", "Add", "Sub", "Mul", "Reshape", "Identity"}

HEADER = '''"""{title}

Generated by hrmc {version} from {source} (pass pipeline `mlx`); regenerate rather than edit.
Needs only `mlx` and `numpy`: `load()` returns the modules below, ready for `mx.compile`.
"""

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

HERE = Path(__file__).parent


def rope(x, cos, sin):
    """rotate_half RoPE from the exported tables, in float32 like the reference."""
    x32 = x.astype(mx.float32)
    front, back = mx.split(x32, 2, axis=-1)
    return (x32 * cos + mx.concatenate([-back, front], axis=-1) * sin).astype(x.dtype)
'''

FOOTER = '''

def load(folder=HERE):
    """The config and one compiled callable per graph: {{name: fn(**inputs) -> dict of outputs}}."""
    folder = Path(folder)
    weights = mx.load(str(folder / "weights.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    modules = {{{modules}}}
    return config, {{name: mx.compile(module.__call__) for name, module in modules.items()}}
'''


def emit_class(kind: str, model: ir.Model, weights: WeightStore, source: str) -> str:
    name, doc = CLASSES[kind]
    graph = model.graph
    require_static(graph, source, "MLX")
    emitter = Emitter(weights, source)
    arguments = ", ".join(emitter.name(v) for v in graph.inputs)
    lines = [emitter.emit(node) for node in graph]
    outputs = ", ".join(f'"{v.name}": {emitter.arg(v)}' for v in graph.outputs)
    body = "\n".join(f"        {line}" for line in lines)
    return (f"\n\nclass {name}(nn.Module):\n    \"\"\"{doc}\"\"\"\n\n"
            f"    inputs = {tuple(v.name for v in graph.inputs)!r}\n"
            f"    outputs = {tuple(v.name for v in graph.outputs)!r}\n\n"
            f"    def __init__(self, weights):\n        super().__init__()\n"
            f"        self._weights = weights  # underscore: MLX does not treat it as trainable parameters\n\n"
            f"    def __call__(self, {arguments}):\n        w = self._weights\n{body}\n"
            f"        return {{{outputs}}}\n")


README = """# {title}

Generated by `hrmc lower --target mlx` (hrmc {version}). Needs only `mlx` and `numpy`:

```python
import sys, numpy as np, mlx.core as mx
sys.path.insert(0, "{folder}")
import hrm_mlx
config, graphs = hrm_mlx.load()          # {{"inference": …, "step": …{chunk}}}, each compiled
batch = {{{batch}}}
outputs = graphs["inference"](**batch)   # {outputs}
```

`inference` runs the whole inference ({budget} masked ACT steps, policy {policy}); `step` runs one
ACT step with the carry (`z_H`, `z_L`, `steps`, `halted`) in and out. `config.json` holds the model
config and the graph metadata. Weights: `weights.safetensors`, each tensor once.
"""


@dataclass(frozen=True)
class MlxPackage:
    folder: Path
    weight_bytes: int
    graphs: tuple[str, ...]


def lower_mlx(graphs: dict[str, Path], folder: str | Path, source: str, force: bool = False) -> MlxPackage:
    """Emit the folder from lowered graphs {"static": …, "step": …, "chunk": …}; atomic (temp folder, rename).
    An existing folder is replaced only if hrmc wrote it (or `force`)."""
    import mlx.core as mx

    weights = WeightStore()
    models = {kind: ir.load(str(path)) for kind, path in graphs.items()}
    static = models["static"]
    meta = {key.removeprefix("hrmc."): value for key, value in static.metadata_props.items() if key != PARTS_KEY}
    title = f"HRM ({meta.get('source', 'model')}) for MLX"
    code = HEADER.format(title=title, version=__version__, source=source)
    code += "".join(emit_class(kind, model, weights, f"{source} ({kind} graph)") for kind, model in models.items())
    modules = ", ".join(f'"{CLASSES[k][0].lower()}": {CLASSES[k][0]}(weights)' for k in models)
    code += FOOTER.format(modules=modules)
    config = {"hrmc_version": __version__, "source": source, "graphs": {k: CLASSES[k][0].lower() for k in models},
              "chunk": models["chunk"].metadata_props.get("hrmc.chunk") if "chunk" in models else None,
              **{key: _json(value) for key, value in meta.items()}}
    with atomic_folder(folder, marker=MODULE, force=force) as temporary:
        (temporary / MODULE).write_text(code)
        compile(code, MODULE, "exec")  # a generator bug shows here, not in the user's process
        mx.save_safetensors(str(temporary / WEIGHTS), {k: mx.array(v) for k, v in weights.arrays.items()})
        (temporary / README_FILE).write_text(README.format(
            title=title, version=__version__, folder=Path(folder).resolve(), batch=_example_batch(static.graph),
            chunk=', "chunk": …' if "chunk" in models else "",
            outputs=", ".join(v.name for v in static.graph.outputs), budget=meta.get("budget"), policy=meta.get("policy")))
        parts = {role: (temporary / name, file_sha256(temporary / name)) for role, name in FILES.items()}
        config[PARTS] = make_record(parts | {"config": (temporary / CONFIG, json_sha256(config))})
        (temporary / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
    return MlxPackage(Path(folder), sum(a.nbytes for a in weights.arrays.values()), tuple(models))


def _example_batch(graph: ir.Graph) -> str:
    """The README's example inputs: zeros of every graph input's shape and type, at batch 1."""
    return ", ".join(f'"{value.name}": mx.zeros({tuple(d if isinstance(d, int) else 1 for d in value.shape)!r}, '
                     f"mx.{DTYPES.get(value.dtype, 'float32')})" for value in graph.inputs)


def _json(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def read_config(folder: str | Path) -> dict:
    """config.json of an emitted folder, every part checked against the record it holds (hrmc.binding)."""
    folder = Path(folder)
    path = folder / CONFIG
    if not (folder / MODULE).is_file() or not path.is_file():
        raise InputError(f"{folder} is not an hrmc MLX folder (no {MODULE} or {CONFIG})")
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise InputError(f"{path}: not JSON (truncated or edited by hand?)") from None
    if not isinstance(config, dict):
        raise InputError(f"{path}: not an hrmc MLX config")
    record = parse_record(config.get(PARTS), path)
    if record is not None:  # folders written before hrmc recorded parts have none
        del config[PARTS]
        found = {role: file_sha256(folder / name) for role, name in FILES.items() if (folder / name).is_file()}
        verify(record, found | {"config": json_sha256(config)}, folder, path)
    return config


def load_package(folder: str | Path) -> tuple[dict, dict[str, Callable[..., dict]]]:
    """Import an emitted folder's module under a unique name and return its `load()`."""
    folder = Path(folder)
    read_config(folder)
    name = f"hrm_mlx_{hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(name, folder / MODULE)
    module: ModuleType = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module.load(folder)


class MlxExecutor(Executor):
    """The emitted folder (shipped, or emitted afresh), loaded and compiled, on MLX's default device.
    `chunked` drives the chunk module (or the step module) from the host loop."""

    def __init__(self, onnx_model: str | Path | None = None, chunked: bool = False, chunk: int | None = None,
                 artifact: str | Path | None = None) -> None:
        self.onnx_model = Path(onnx_model) if onnx_model else None
        self.artifact = Path(artifact) if artifact else None
        self.chunked, self.chunk, self.graph_calls = chunked, chunk, 0
        self.name = "mlx-chunked" if chunked else "mlx"

    def prepare(self, model: HRM, policy: str, budget: int | None, batch: Batch) -> None:
        from hrmc.targets.onnx import check_source, lowered_source

        self.policy, self.budget = policy, resolve_budget(model, policy, budget)
        folder = self.artifact
        if folder is None:
            self._folder = tempfile.TemporaryDirectory(prefix="hrmc-mlx-")
            work = Path(self._folder.name)
            chunk = (self.chunk or DEFAULT_CHUNK) if self.chunked else None
            structured, graphs = lowered_source(self.onnx_model, work, model, policy, self.budget, batch, "fused", chunk)
            folder = lower_mlx(graphs, work / "mlx", structured.name).folder
        self.config, self.graphs = load_package(folder)
        check_source(self.config, folder, model, policy, self.budget, model.inner.sequence_length(batch))
        steps = int(self.config["chunk"]) if self.config.get("chunk") else 1
        if self.artifact is not None and self.chunked and self.chunk not in (None, steps):
            raise InputError(f"--chunk {self.chunk}: {folder} was lowered with {steps}-step chunks")
        self.chunk = steps if self.chunked else None
        self.start = carry_arrays(initial_carry(model, batch))

    def call(self, graph: str, feed: dict[str, np.ndarray]) -> Arrays:
        import mlx.core as mx

        outputs = self.graphs[graph](**{name: mx.array(value) for name, value in feed.items()})
        return {name: np.array(value) for name, value in outputs.items()}

    def step(self, carry: Carry, batch: Batch) -> Arrays:
        return split_step(self.call("step", carry_feed(carry, batch)), chunked=True)

    def run(self, batch: Batch) -> Arrays:
        if self.chunk is not None:
            graph = "chunk" if "chunk" in self.graphs else "step"
            trajectory, self.graph_calls = run_chunks(lambda feed: self.call(graph, feed), self.start, batch,
                                                      self.chunk)
            return trajectory
        values = self.call("inference", {name: value.numpy() for name, value in batch.items()})
        return until_steps_run(values)

    def whole_graph(self) -> str:
        return f"the {'chunk' if self.chunk else 'inference'} module" + (" in a host loop" if self.chunk else "")

    def describe(self) -> str:
        import mlx.core as mx

        how = f"{self.chunk}-step chunks, host loop" if self.chunk else "whole inference"
        shipped = f"shipped artifact {self.artifact.name}, " if self.artifact else ""
        return (f"{self.name} ({shipped}pipeline mlx, emitted module, mx.compile, {how}; mlx {mx.__version__}, "
                f"{mx.default_device()})")


def executor(name: str, onnx_model: str | Path | None, chunk: int | None, artifact: str | Path | None) -> MlxExecutor:
    return MlxExecutor(onnx_model, name == "mlx-chunked", chunk, artifact)


def lower(target: Target, graphs: dict[str, Path], out: str | Path, options: LowerOptions) -> list[Path]:
    return [lower_mlx(graphs, out, options.source, options.force).folder]


def check_out(target: Target, out: str | Path, chunk: int | None, force: bool) -> None:
    """The folder `lower` will write: new, or one hrmc wrote (unless `force`)."""
    check_output_folder(out, target.suffix, MODULE, force)


__all__ = ["OPS", "LowerError", "MlxExecutor", "MlxPackage", "check_out", "executor", "load_package", "lower",
           "lower_mlx", "read_config"]
