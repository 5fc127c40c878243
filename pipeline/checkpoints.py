"""Loading and saving model weights. Checkpoints are data, not code.

Imported models (``.pt2`` torch.export programs + sidecar) are handed to pipeline/imported.py. Two
formats of course weights:
- the course's own ``.pth`` files (``{"gen": state_dict}`` / ``{"classifier": state_dict}``, or a bare
  state_dict), read with ``torch.load(weights_only=True)`` so a pickle that would run code is refused;
- the project's format: ``NAME.safetensors`` with ``NAME.json`` beside it holding the spec (and, for a
  classifier, the attribute names).
"""

from __future__ import annotations

import json
import pickle
import warnings
from dataclasses import fields, replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from zsteer.core.errors import CheckpointError, first_line

from .attributes import CELEBA40, read_json
from .imported import PROGRAM_SUFFIX, load_imported_classifier, load_imported_generator
from .inference import check_against, infer_classifier, infer_generator, unwrap
from .loaded import LoadedModel, file_fingerprint
from .models import ClassifierSpec, GeneratorSpec, build_classifier, build_generator

COURSE_KEYS = {"generator": "gen", "classifier": "classifier"}
# How to turn a pickled module (torch.save(model)) into a file zsteer reads.
RESAVE = (
    "if it is your own model, load it where its class is importable and re-save its weights: "
    "torch.save(model.state_dict(), 'weights.pth')"
)
# The command-line flag of each spec field, for messages about contradicting values.
FLAGS = {
    "generator": {"kind": "--gen-kind", "z_dim": "--z-dim", "hidden_dim": "--gen-hidden-dim",
                  "im_chan": "--gen-im-chan", "n_classes": "--gen-n-classes"},
    "classifier": {"hidden_dim": "--cls-hidden-dim", "im_chan": "--cls-im-chan", "n_classes": "--cls-n-classes",
                   "image_size": "--cls-image-size"},
}  # fmt: skip


# What a model file must be, for messages about one that is not.
EXPECTED_FORMATS = (
    "expected weights saved by torch.save (a zip archive, or a legacy pickle of tensors) or "
    "NAME.safetensors with NAME.json beside it"
)


def _what_it_is(path: Path) -> str:
    """A few words on what a file that is not a checkpoint looks like: empty, text, or some bytes."""
    with open(path, "rb") as fh:
        head = fh.read(64)
    if not head:
        return "it is empty"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"it starts with bytes {head[:8].hex(' ')}"
    if all(c.isprintable() or c in "\r\n\t" for c in text):
        first = text.strip().splitlines()[0][:40] if text.strip() else ""
        return f"it looks like text ({first!r}...)"
    return f"it starts with bytes {head[:8].hex(' ')}"


def _has_checkpoint_header(path: Path) -> bool:
    """torch.save writes a zip archive ("PK"), or in its legacy format a pickle of protocol 2 or more
    (0x80): anything else (text, say, which the unpickler reads as opcodes) is not a checkpoint."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    return magic == b"PK" or magic[:1] == b"\x80"


def _not_a_checkpoint(path: Path, exc: BaseException | None = None) -> CheckpointError:
    """A file torch.load cannot read: what it looks like and what was expected; the loader's own words
    only when the file has a checkpoint's header (a damaged checkpoint), where they say what broke."""
    if exc is not None and _has_checkpoint_header(path):
        return CheckpointError(
            f"{path}: a damaged PyTorch checkpoint ({first_line(exc)}); {EXPECTED_FORMATS}"
        )
    return CheckpointError(f"{path}: not a PyTorch checkpoint: {_what_it_is(path)}; {EXPECTED_FORMATS}")


def _read_state_dict(path: Path, role: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, config from the JSON sidecar or {}) from either format."""
    if not path.is_file():
        raise CheckpointError(f"{path}: {role} checkpoint not found")
    if path.suffix == ".safetensors":
        sidecar = path.with_suffix(".json")
        config = {}
        if sidecar.is_file():
            config = read_json(sidecar, CheckpointError)
            if not isinstance(config, dict):
                raise CheckpointError(
                    f"{sidecar}: expected a JSON object of model settings, found {type(config).__name__}"
                )
        try:
            return unwrap(load_file(str(path)), COURSE_KEYS[role]), config
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    if not _has_checkpoint_header(path):
        raise _not_a_checkpoint(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # protocol notes about foreign pickles; the refusal says enough
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses any global it does not know: that is how code execution is prevented.
        if "weights only" in str(exc).lower() or "unsupported global" in str(exc).lower():
            raise CheckpointError(
                f"{path}: refused: the file holds pickled objects other than tensors, which could run code "
                f"on load (only weights are accepted); {RESAVE}"
            ) from None
        raise _not_a_checkpoint(path, exc) from None
    except Exception as exc:  # garbage bytes can fail anywhere inside the unpickler
        raise _not_a_checkpoint(path, exc) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    key = COURSE_KEYS[role]
    obj = unwrap(obj, key)
    if obj and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{path}: missing key {key!r} (the course saves the {role} as {{{key!r}: state_dict}}); "
            f"found keys {sorted(map(str, obj))[:6]}"
        )
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: {key!r} does not hold a state_dict of tensors")
    return obj, {}


def _check_field(name: str, value, default, where: str) -> None:
    """A spec value has its default's type: a string, or an int >= 1 (>= 0 where 0 is the default)."""
    if isinstance(default, str):
        if not isinstance(value, str):
            raise CheckpointError(
                f"{where}: field {name!r} must be a string, got {json.dumps(value, default=str)}"
            )
        return
    low = min(1, default)  # generator n_classes defaults to 0, meaning unconditional
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = "a positive integer" if low else "an integer >= 0"
        raise CheckpointError(f"{where}: field {name!r} must be {kind}, got {json.dumps(value, default=str)}")


def _spec_from(config: dict, default, overrides: dict, path: Path, inferred: dict | None = None):
    """The spec: defaults, then what the tensors imply, then the sidecar's values, then the overrides."""
    defaults = {f.name: getattr(default, f.name) for f in fields(default)}
    values = dict(inferred or {})
    values.update({k: v for k, v in config.items() if k in defaults})
    for name, value in values.items():
        _check_field(name, value, defaults[name], str(path.with_suffix(".json")))
    for name, value in overrides.items():
        if value is None:
            continue
        if name not in defaults:
            raise CheckpointError(f"{path}: unknown model setting {name!r}; known: {', '.join(defaults)}")
        _check_field(name, value, defaults[name], f"{path}: override")
        values[name] = value
    return replace(default, **values)


def _check_tensors(module: nn.Module, state: dict[str, torch.Tensor], path: Path, role: str) -> None:
    """The file's tensors are the module's: same names and shapes. ``module`` may live on the meta
    device: this runs before any memory is allocated for the model."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        raise CheckpointError(
            f"{path}: {role} parameter {missing[0]!r} is missing"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise CheckpointError(f"{path}: unexpected {role} parameter {unexpected[0]!r}")
    for name, tensor in expected.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{path}: {role} parameter {name!r} has shape {list(state[name].shape)}, "
                f"expected {list(tensor.shape)} (check z_dim / hidden_dim / n_classes / im_chan)"
            )


def _load_into(module: nn.Module, state: dict[str, torch.Tensor], path: Path, role: str) -> None:
    """Copy the file's tensors in (fp16-stored weights compute in the module's dtype, fp32), refusing
    any that is not finite: NaN or Inf weights give every row a non_finite result, silently."""
    expected = module.state_dict()
    values = {k: state[k].to(expected[k].dtype) for k in expected}
    for name, tensor in values.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(
                f"{path}: {role} parameter {name!r} holds {bad} NaN or Inf value(s) of {tensor.numel()} "
                "(as float32); the weights are damaged or were saved after training diverged"
            )
    module.load_state_dict(values)


def _freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _load(path: Path, role: str, default_spec, build, overrides: dict):
    """(frozen module, spec, sidecar config) of a ``role`` checkpoint."""
    state, config = _read_state_dict(path, role)
    inferred = {}
    if not any(name in config for name in FLAGS[role]):  # a bare checkpoint: read the spec off the tensors
        given = {k: v for k, v in overrides.items() if v is not None}
        try:
            inferred = infer_generator(state, given) if role == "generator" else infer_classifier(state)
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        check_against(inferred, given, FLAGS[role], path)
    spec = _spec_from(config, default_spec, overrides, path, inferred)
    try:
        with torch.device("meta"):  # shapes only: a spec that does not fit the file allocates nothing
            skeleton = build(spec)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except RuntimeError as exc:  # sizes past int64 ("Storage size calculation overflowed")
        raise CheckpointError(
            f"{path}: a {role} with these settings would be too large for memory ({first_line(exc)}); "
            f"check {' / '.join(FLAGS[role].values())}"
        ) from None
    _check_tensors(skeleton, state, path, role)
    try:
        module = build(spec)
    except (RuntimeError, MemoryError) as exc:  # the file's own sizes, and still more than there is
        size = sum(p.numel() * p.element_size() for p in skeleton.state_dict().values())
        raise CheckpointError(
            f"{path}: a {role} of this size ({size / 1e9:.1f} GB of weights) is too large for memory "
            f"({first_line(exc)})"
        ) from None
    _load_into(module, state, path, role)
    module = _freeze(module)
    _check_output(module, spec, path, role)
    return module, spec, config


@torch.no_grad()
def _check_output(module: nn.Module, spec, path: Path, role: str) -> None:
    """One forward of two seeded rows must give finite values: weights that are each finite can still
    make every row NaN (a BatchNorm running_var below 0, activations that overflow), which a job would
    only show as rows ending non_finite. A few milliseconds for the course models."""
    g = torch.Generator().manual_seed(0)
    if role == "generator":
        x = torch.randn(2, module.input_dim, generator=g)  # [2, z_dim + n_classes]
    else:
        x = torch.rand(2, spec.im_chan, spec.image_size, spec.image_size, generator=g) * 2 - 1  # [-1, 1]
    if not bool(torch.isfinite(module(x)).all()):
        raise CheckpointError(
            f"{path}: the {role} gives NaN or Inf for a test input although each weight is finite (a "
            "BatchNorm running_var below 0, or weights so large the activations overflow); the weights "
            "are damaged"
        )


def load_generator(path: str | Path, **overrides) -> LoadedModel:
    """Load a generator; ``overrides`` (z_dim, hidden_dim, im_chan, n_classes, kind) beat the file's config.

    A ``.pt2`` file is an imported model (pipeline/imported.py): its sidecar says it all, and overrides
    must agree with it."""
    path = Path(path)
    if path.suffix == PROGRAM_SUFFIX:
        return load_imported_generator(path, **overrides)
    module, spec, _ = _load(path, "generator", GeneratorSpec(), build_generator, overrides)
    return LoadedModel(module, spec, file_fingerprint(path), str(path))


def load_classifier(path: str | Path, attributes: tuple[str, ...] | None = None, **overrides) -> LoadedModel:
    """Load a classifier; attribute names come from ``attributes``, the JSON config, or ``celeba40``
    (a ``.pt2`` imported classifier: from its sidecar, or ``attributes`` of the same count)."""
    path = Path(path)
    if path.suffix == PROGRAM_SUFFIX:
        return load_imported_classifier(path, attributes, **overrides)
    module, spec, config = _load(path, "classifier", ClassifierSpec(), build_classifier, overrides)
    from_file = config.get("attributes")
    if (
        not attributes
        and from_file is not None
        and (not isinstance(from_file, list) or not all(isinstance(n, str) for n in from_file))
    ):
        raise CheckpointError(f"{path.with_suffix('.json')}: field 'attributes' must be a list of strings")
    names = tuple(attributes or from_file or ())
    if not names:
        if spec.n_classes != len(CELEBA40):
            raise CheckpointError(
                f"{path}: classifier has {spec.n_classes} outputs; give their names (--attributes FILE)"
            )
        names = CELEBA40
    if len(names) != spec.n_classes:
        raise CheckpointError(f"{path}: {len(names)} attribute names for {spec.n_classes} classifier outputs")
    return LoadedModel(module, spec, file_fingerprint(path), str(path), names)


def save_model(
    module: nn.Module, spec, path: str | Path, attributes: tuple[str, ...] = (), half: bool = False
):
    """Write ``path`` (.safetensors) and its JSON config beside it; fp16 storage when ``half``."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    config = spec.to_dict()
    if attributes:
        config["attributes"] = list(attributes)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    path.with_suffix(".json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
