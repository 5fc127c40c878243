"""Imported models: a ``torch.export`` program (``NAME.pt2``) and its sidecar (``NAME.json``), loaded as data.

The program carries the graph and the weights; the sidecar says what the graph cannot:

- generator: ``z_dim``, ``n_classes`` and how the class enters (``class_input``: "none", "onehot" = one
  input [z, one_hot(label)], "embedding" = two inputs z [N, z_dim] and labels [N] int64), the
  ``output_range`` of its images ([-1, 1] or [0, 1]) and their ``image_shape`` [C, H, W];
- classifier: its ``input_shape`` [C, H, W], the ``input_range`` it expects and the ``attributes``, one
  name per logit.

Once loaded, an imported model looks like a course model to the rest of zsteer (``LoadedModel``): the
generator module maps ``[z, one_hot(label)]`` to images in [-1, 1], the classifier module maps images in
[-1, 1] of its own size to logits. Everything that could be wrong with the pair is found here, at load,
before any row is read: the inputs' rank and width, the outputs' shape, the attribute count, and whether
a gradient reaches the input (an argmax or a rounding on the way gives none).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from zsteer.core.errors import CheckpointError, first_line

from .attributes import read_json
from .loaded import LoadedModel, file_fingerprint
from .program_file import load_program, program_module

# Suffix of an imported model's program; its sidecar is the same name with .json.
PROGRAM_SUFFIX = ".pt2"
FORMAT = "zsteer-model"
FORMAT_VERSION = 1
CLASS_INPUTS = ("none", "onehot", "embedding")
RANGES = ((-1.0, 1.0), (0.0, 1.0))
# Operators whose gradient is zero (or undefined) almost everywhere: named when no gradient gets through.
NON_DIFFERENTIABLE = (
    "argmax", "argmin", "round", "floor", "ceil", "trunc", "sign", "frac", "eq", "ne", "gt", "lt",
    "ge", "le", "bitwise_and", "bitwise_or", "logical_and", "logical_or", "logical_not", "_to_copy",
)  # fmt: skip
# Rows of the probe batch the load-time checks run (>= 2: see ascent_loop.MIN_ROWS).
PROBE_ROWS = 2


def spec_dict(spec) -> dict:
    """A spec as JSON-able data (tuples as lists), for the sidecar and job.json."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(spec).items()}


@dataclass(frozen=True)
class ImportedGeneratorSpec:
    """An imported generator's sidecar: what the graph cannot say. Recorded in job.json."""

    # Fixed name, so job.json tells imported models from course ones.
    kind: str = "imported_generator"
    # Length of the latent z the user edits.
    z_dim: int = 64
    # Classes of a conditional generator (0 = unconditional).
    n_classes: int = 0
    # How the class enters the graph: "none", "onehot" ([z, one_hot] as one input) or "embedding"
    # (a second input, labels [N] int64).
    class_input: str = "none"
    # The range of the images the graph draws: (-1, 1) or (0, 1); zsteer works in [-1, 1].
    output_range: tuple[float, float] = (-1.0, 1.0)
    # [C, H, W] of one image.
    image_shape: tuple[int, int, int] = (3, 64, 64)

    @property
    def im_chan(self) -> int:
        return self.image_shape[0]

    def to_dict(self) -> dict:
        return spec_dict(self)


@dataclass(frozen=True)
class ImportedClassifierSpec:
    """An imported classifier's sidecar (its attribute names are on the LoadedModel). In job.json."""

    kind: str = "imported_classifier"
    # [C, H, W] of the images the graph reads; zsteer resizes the generator's images to it (bilinear).
    input_shape: tuple[int, int, int] = (3, 64, 64)
    # The pixel range the graph expects: (-1, 1) or (0, 1).
    input_range: tuple[float, float] = (-1.0, 1.0)
    # Logits, one per attribute name.
    n_classes: int = 40

    @property
    def im_chan(self) -> int:
        return self.input_shape[0]

    def to_dict(self) -> dict:
        return spec_dict(self)


class _FixedMode(nn.Module):
    """A wrapper whose graph's train/eval behaviour was fixed at export (torch refuses eval() on it)."""

    def train(self, mode: bool = True):
        self.training = mode
        return self


class ImportedGenerator(_FixedMode):
    """z_in [N, z_dim + n_classes] (z, then one_hot(label) as ``network.latent_input`` builds it) ->
    images [N, C, H, W] in [-1, 1], by the exported graph."""

    def __init__(self, program: nn.Module, spec: ImportedGeneratorSpec):
        super().__init__()
        self.program = program
        self.z_dim, self.n_classes, self.class_input = spec.z_dim, spec.n_classes, spec.class_input
        self.low, self.high = spec.output_range

    def forward(self, z_in: torch.Tensor) -> torch.Tensor:
        if self.class_input != "embedding":
            return self._to_unit_range(self.program(z_in))
        onehot = z_in[:, self.z_dim :].detach()  # [N, n_classes]
        if not bool(((onehot == 0) | (onehot == 1)).all()):
            raise ValueError(
                "this generator takes its class as an embedding index, so classes cannot be blended "
                "(that needs a generator whose class enters as a one-hot vector)"
            )
        return self.draw(z_in[:, : self.z_dim], onehot.argmax(dim=1))

    def draw(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Images [N, C, H, W] in [-1, 1] of z [N, z_dim] and labels [N] int64 (None: unconditional)."""
        if self.class_input == "embedding":
            images = self.program(z, labels)
        elif self.class_input == "onehot":
            onehot = (labels.unsqueeze(1) == torch.arange(self.n_classes, device=z.device)).to(z.dtype)
            images = self.program(torch.cat([z, onehot], dim=1))
        else:
            images = self.program(z)
        return self._to_unit_range(images)

    def _to_unit_range(self, images: torch.Tensor) -> torch.Tensor:
        if (self.low, self.high) == (-1.0, 1.0):
            return images
        return (images - self.low) * (2.0 / (self.high - self.low)) - 1.0


class ImportedClassifier(_FixedMode):
    """Images [N, C, H, W] in [-1, 1] (of the graph's own size) -> logits [N, A], by the exported graph."""

    def __init__(self, program: nn.Module, spec: ImportedClassifierSpec):
        super().__init__()
        self.program = program
        self.low, self.high = spec.input_range

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if (self.low, self.high) != (-1.0, 1.0):
            images = (images + 1.0) * ((self.high - self.low) / 2.0) + self.low
        return self.program(images)


def sidecar_path(path: Path) -> Path:
    return path.with_suffix(".json")


def write_sidecar(path: Path, spec, attributes: tuple[str, ...] = (), source: str = "") -> Path:
    """``NAME.json`` beside ``NAME.pt2``: the spec, the attribute names, where it was imported from."""
    doc = {"format": FORMAT, "version": FORMAT_VERSION, **spec.to_dict()}
    if attributes:
        doc["attributes"] = list(attributes)
    if source:
        doc["source"] = source
    out = sidecar_path(path)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out)
    return out


def _read_sidecar(path: Path, role: str) -> dict:
    side = sidecar_path(path)
    if not side.is_file():
        raise CheckpointError(
            f"{path}: its sidecar {side.name} is missing (zsteer import writes both; it says what the graph "
            f"cannot: {'z_dim, classes, output range' if role == 'generator' else 'input size, range, attributes'})"
        )
    doc = read_json(side, CheckpointError)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f'{side}: not a zsteer model sidecar (expected "format": "{FORMAT}")')
    if doc.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{side}: sidecar version {doc.get('version')!r}; this zsteer reads {FORMAT_VERSION}"
        )
    kind = doc.get("kind")
    if kind != f"imported_{role}":
        raise CheckpointError(f"{side}: describes a {kind!r}, but it was given as the {role}")
    return doc


def _int(side: Path, doc: dict, name: str, low: int) -> int:
    value = doc.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise CheckpointError(f"{side}: field {name!r} must be an integer >= {low}, got {json.dumps(value)}")
    return value


def _shape(side: Path, doc: dict, name: str) -> tuple[int, int, int]:
    value = doc.get(name)
    if not (isinstance(value, list) and len(value) == 3 and all(type(v) is int and v >= 1 for v in value)):
        raise CheckpointError(
            f"{side}: field {name!r} must be [C, H, W] (positive integers), got {json.dumps(value)}"
        )
    return tuple(value)


def parse_range(value, where: str) -> tuple[float, float]:
    """[-1, 1] or [0, 1] (a list of two numbers, or "lo,hi")."""
    if isinstance(value, str):
        try:
            value = [float(v) for v in value.split(",")]
        except ValueError:
            value = None
    if isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int | float) for v in value):
        pair = (float(value[0]), float(value[1]))
        if pair in RANGES:
            return pair
    raise CheckpointError(f"{where}: the range must be [-1, 1] or [0, 1], got {json.dumps(value)}")


def generator_spec_from(doc: dict, side: Path) -> ImportedGeneratorSpec:
    class_input = doc.get("class_input", "none")
    if class_input not in CLASS_INPUTS:
        raise CheckpointError(
            f"{side}: field 'class_input' must be one of {', '.join(CLASS_INPUTS)}, got {class_input!r}"
        )
    n_classes = _int(side, doc, "n_classes", 0) if "n_classes" in doc else 0
    if (class_input == "none") != (n_classes == 0):
        raise CheckpointError(
            f"{side}: n_classes {n_classes} with class_input {class_input!r} (a conditional generator says how "
            "its class enters: onehot or embedding; an unconditional one has n_classes 0 and class_input none)"
        )
    return ImportedGeneratorSpec(
        z_dim=_int(side, doc, "z_dim", 1), n_classes=n_classes, class_input=class_input,
        output_range=parse_range(doc.get("output_range", [-1, 1]), f"{side}: field 'output_range'"),
        image_shape=_shape(side, doc, "image_shape"),
    )  # fmt: skip


def classifier_spec_from(doc: dict, side: Path) -> tuple[ImportedClassifierSpec, tuple[str, ...]]:
    names = doc.get("attributes")
    if not (isinstance(names, list) and names and all(isinstance(n, str) and n for n in names)):
        raise CheckpointError(f"{side}: field 'attributes' must be a non-empty list of names, one per logit")
    if len(set(names)) != len(names):
        raise CheckpointError(f"{side}: field 'attributes' names an attribute twice")
    spec = ImportedClassifierSpec(
        input_shape=_shape(side, doc, "input_shape"),
        input_range=parse_range(doc.get("input_range", [-1, 1]), f"{side}: field 'input_range'"),
        n_classes=len(names),
    )
    return spec, tuple(names)


def _check_overrides(path: Path, spec, overrides: dict) -> None:
    """Values given with the file (flags, or a job's recorded spec) must agree with the sidecar."""
    known = {f.name for f in fields(spec)}
    for name, value in overrides.items():
        if value is None:
            continue
        if name not in known:
            raise CheckpointError(
                f"{path}: {name!r} does not apply to an imported model (its sidecar says it all)"
            )
        mine = getattr(spec, name)
        given = tuple(value) if isinstance(value, list) else value
        if given != mine:
            raise CheckpointError(
                f"{path}: {name} {json.dumps(value)} was given, but its sidecar says {json.dumps(mine)}"
            )


def _placeholders(program) -> list:
    """FakeTensor metadata of the program's user inputs, in order."""
    users = set(program.graph_signature.user_inputs)
    return [n.meta.get("val") for n in program.graph.nodes if n.op == "placeholder" and n.name in users]


def _dims(value) -> str:
    return "[" + ", ".join("N" if not isinstance(d, int) else str(d) for d in value.shape) + "]"


def _check_inputs(path: Path, program, expected: list[tuple[int, int | None, bool]]) -> None:
    """Each input's rank, width of axis 1 (None = any) and whether it is integer, one line per problem."""
    inputs = _placeholders(program)
    if len(inputs) != len(expected):
        raise CheckpointError(f"{path}: the graph takes {len(inputs)} input(s), expected {len(expected)}")
    for i, (value, (rank, width, integer)) in enumerate(zip(inputs, expected, strict=True)):
        if value is None or not hasattr(value, "shape"):
            raise CheckpointError(f"{path}: input {i} of the graph is not a tensor")
        if value.dim() != rank:
            raise CheckpointError(
                f"{path}: input {i} of the graph has rank {value.dim()} {_dims(value)}, expected rank {rank}"
            )
        if width is not None and isinstance(value.shape[1], int) and value.shape[1] != width:
            raise CheckpointError(f"{path}: input {i} of the graph is {_dims(value)}, expected width {width}")
        if integer != (not value.dtype.is_floating_point):
            raise CheckpointError(
                f"{path}: input {i} of the graph is {value.dtype}, expected {'int64' if integer else 'float32'}"
            )


def _suspects(module: nn.Module) -> str:
    graph = getattr(module, "graph", None)
    names = []
    for node in graph.nodes if graph is not None else ():
        if node.op == "call_function" and hasattr(node.target, "name"):
            op = node.target.name().split("::")[-1].split(".")[0]
            if op in NON_DIFFERENTIABLE and op not in names:
                names.append(op)
    return f" (the graph calls {', '.join('aten.' + n for n in names)})" if names else ""


def _check_gradient(path: Path, role: str, fn, x: torch.Tensor, program: nn.Module, where: str) -> None:
    """d sum(out * r) / d x must be finite and not all zero: else nothing can be steered through it."""
    x = x.clone().requires_grad_(True)
    with torch.enable_grad():
        out = fn(x)
        probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        (grad,) = torch.autograd.grad((out * probe).sum(), x, allow_unused=True)
    if grad is None or not bool(grad.ne(0).any()):
        raise CheckpointError(
            f"{path}: no gradient reaches the {role}'s {where}: a non-differentiable operation sits on the "
            f"ascent path{_suspects(program)}"
        )
    if not bool(torch.isfinite(grad).all()):
        raise CheckpointError(f"{path}: the {role}'s gradient at its {where} is not finite on a probe batch")


def load_imported_generator(path: str | Path, **overrides) -> LoadedModel:
    """An imported generator (``NAME.pt2`` + ``NAME.json``), checked; ``overrides`` must agree with the sidecar."""
    path = Path(path)
    spec = generator_spec_from(_read_sidecar(path, "generator"), sidecar_path(path))
    _check_overrides(path, spec, overrides)
    program = load_program(path)
    width = spec.z_dim + (spec.n_classes if spec.class_input == "onehot" else 0)
    expected = [(2, width, False)] + ([(1, None, True)] if spec.class_input == "embedding" else [])
    _check_inputs(path, program, expected)
    raw = program_module(program)
    module = ImportedGenerator(raw, spec)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(PROBE_ROWS, spec.z_dim, generator=gen)  # [2, z_dim]
    onehot = torch.eye(max(spec.n_classes, 1))[torch.arange(PROBE_ROWS) % max(spec.n_classes, 1)]
    z_in = torch.cat([z, onehot[:, : spec.n_classes]], dim=1)  # [2, z_dim + n_classes]
    try:
        with torch.no_grad():
            images = module(z_in)
    except Exception as exc:  # the graph's own shape checks raise many types
        first = first_line(exc, limit=200)
        raise CheckpointError(f"{path}: the generator graph fails on a probe batch ({first})") from None
    if tuple(images.shape) != (PROBE_ROWS, *spec.image_shape):
        raise CheckpointError(
            f"{path}: the generator draws {list(images.shape[1:])} per row, its sidecar says image_shape "
            f"{list(spec.image_shape)} (outputs must be [N, C, H, W])"
        )
    if not bool(torch.isfinite(images).all()):
        raise CheckpointError(f"{path}: the generator draws non-finite pixels on a probe batch")
    _check_gradient(
        path, "generator", lambda x: module(torch.cat([x, z_in[:, spec.z_dim :]], 1)), z, raw, "z"
    )
    return LoadedModel(_freeze(module), spec, file_fingerprint(path), str(path))


def load_imported_classifier(
    path: str | Path, attributes: tuple[str, ...] | None = None, **overrides
) -> LoadedModel:
    """An imported classifier, checked; ``attributes`` (if given) must name as many logits as it has."""
    path = Path(path)
    spec, names = classifier_spec_from(_read_sidecar(path, "classifier"), sidecar_path(path))
    if attributes:
        if len(attributes) != len(names):
            raise CheckpointError(
                f"{path}: {len(attributes)} attribute names given for a classifier whose sidecar names {len(names)}"
            )
        names = tuple(attributes)
    _check_overrides(path, spec, overrides)
    program = load_program(path)
    _check_inputs(path, program, [(4, spec.input_shape[0], False)])
    raw = program_module(program)
    module = ImportedClassifier(raw, spec)
    images = torch.rand(PROBE_ROWS, *spec.input_shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    try:
        with torch.no_grad():
            logits = module(images)
    except Exception as exc:
        first = first_line(exc, limit=200)
        raise CheckpointError(
            f"{path}: the classifier graph fails on images of its input_shape {list(spec.input_shape)} ({first})"
        ) from None
    if logits.dim() != 2 or logits.shape[0] != PROBE_ROWS:
        raise CheckpointError(
            f"{path}: the classifier gives {list(logits.shape)} for {PROBE_ROWS} images, expected [N, A]"
        )
    if logits.shape[1] != len(names):
        raise CheckpointError(
            f"{path}: the classifier has {logits.shape[1]} logits but {len(names)} attribute names"
        )
    _check_gradient(path, "classifier", module, images, raw, "input images")
    return LoadedModel(_freeze(module), spec, file_fingerprint(path), str(path), names)


def _freeze(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def is_imported(model: LoadedModel) -> bool:
    return isinstance(model.spec, ImportedGeneratorSpec | ImportedClassifierSpec)
