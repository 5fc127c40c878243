"""`zsteer import`: a user's ``nn.Module`` traced with ``torch.export`` into ``NAME.pt2`` + ``NAME.json``.

This is the one step of zsteer that runs the user's code (their module's constructor and forward), and it
runs where the user runs it, with their classes importable. What it writes is data: the graph as JSON,
the weights as raw tensors (pipeline/program_file.py says what loading it may and may not do).

The program has a dynamic batch axis ("N"); before anything is written it is compared with the eager
module on batches of other sizes, and the written files are loaded back through the same checks a job
runs (pipeline/imported.py), so a file ``zsteer import`` accepts is a file a job accepts.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from zsteer.core.errors import CheckpointError, ZsteerError, first_line

from .imported import (
    CLASS_INPUTS,
    ImportedClassifierSpec,
    ImportedGeneratorSpec,
    load_imported_classifier,
    load_imported_generator,
    parse_range,
    sidecar_path,
    write_sidecar,
)
from .loaded import LoadedModel

# Rows of the batch the program is traced with (torch.export specialises a sample size of 0 or 1) and of
# the batches it is compared on afterwards.
TRACE_ROWS = 3
CHECK_ROWS = (2, 5)


@dataclass(frozen=True)
class GeneratorCard:
    """What the user says about a generator (the sidecar's fields but the image shape, which is measured)."""

    # Length of z.
    z_dim: int
    # Classes (0 = unconditional).
    n_classes: int = 0
    # "none", "onehot" (forward(z_in) with z_in = [z, one_hot]) or "embedding" (forward(z, labels)).
    class_input: str = "none"
    # The images' pixel range: (-1, 1) or (0, 1).
    output_range: tuple[float, float] = (-1.0, 1.0)


@dataclass(frozen=True)
class ClassifierCard:
    """What the user says about a classifier."""

    # [C, H, W] of the images it reads.
    input_shape: tuple[int, int, int]
    # One name per logit.
    attributes: tuple[str, ...]
    # The pixel range it expects: (-1, 1) or (0, 1).
    input_range: tuple[float, float] = (-1.0, 1.0)


@dataclass(frozen=True)
class ImportConfig:
    """`zsteer import`'s settings: which code builds the module, its weights, and what to say about it."""

    # "package.module:callable": a class or factory returning the nn.Module (called with no arguments).
    factory: str
    # GeneratorCard or ClassifierCard: the sidecar's fields.
    card: GeneratorCard | ClassifierCard
    # The .pt2 file to write (its sidecar goes beside it, same name, .json).
    out: Path
    # A state_dict (.pth/.pt read with weights_only=True, or .safetensors); None = the factory's weights.
    weights: Path | None = None
    # Folders put in front of sys.path so that the factory's module is importable.
    paths: tuple[Path, ...] = ()
    # Largest difference allowed between the program and the eager module (relative to the output's scale).
    tolerance: float = 1e-4


def resolve_factory(ref: str, paths: tuple[Path, ...] = ()) -> Callable[[], nn.Module]:
    """The callable named by "package.module:attribute" (the user's code: imported here, on request)."""
    module_name, _, attribute = ref.partition(":")
    if not module_name or not attribute:
        raise ZsteerError(f"--module {ref}: expected package.module:ClassOrFactory")
    for folder in reversed(paths):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    try:
        target = importlib.import_module(module_name)
    except ImportError as exc:
        raise ZsteerError(f"--module {ref}: cannot import {module_name} ({exc})") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ZsteerError(f"--module {ref}: {module_name} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ZsteerError(f"--module {ref}: {attribute} is not callable")
    return target


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict from .safetensors or a torch.save'd dict of tensors (weights_only: data, not code)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = first_line(exc, limit=200)
        raise CheckpointError(
            f"{path}: not a state_dict zsteer can read without unpickling code ({first})"
        ) from None
    if isinstance(state, dict) and len(state) == 1 and isinstance(next(iter(state.values())), dict):
        state = next(iter(state.values()))  # {"gen": state_dict} and the like
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state_dict (a dict of tensors)")
    return state


def _user_call(where: str, what: str, fn: Callable, *args):
    """``fn(*args)``: the user's code (their factory, their forward); whatever it raises becomes one line
    naming ``where`` (--module package.module:attribute) and the exception, not a traceback into it."""
    try:
        return fn(*args)
    except ZsteerError:
        raise
    except Exception as exc:
        raise ZsteerError(
            f"{where}: {what} raised {type(exc).__name__}: {first_line(exc, limit=200)}"
        ) from None


def build_module(config: ImportConfig) -> nn.Module:
    """The user's module, with ``config.weights`` loaded (strictly), in eval mode."""
    where = f"--module {config.factory}"
    module = _user_call(where, "building the module", resolve_factory(config.factory, config.paths))
    if not isinstance(module, nn.Module):
        raise ZsteerError(f"--module {config.factory}: returned {type(module).__name__}, not an nn.Module")
    if config.weights is not None:
        try:
            module.load_state_dict(read_weights(config.weights))
        except RuntimeError as exc:
            first = first_line(exc, limit=200)
            raise CheckpointError(f"{config.weights}: does not fit {config.factory} ({first})") from None
    return module.eval()


def _sample_inputs(
    card, rows: int, seed: int, labels: torch.Tensor | None = None
) -> tuple[torch.Tensor, ...]:
    """A sample batch of ``rows`` rows for the module's forward; a generator's classes are ``labels``
    [rows] (default: 0, 1, 2, ... cycling through the classes)."""
    gen = torch.Generator().manual_seed(seed)
    if isinstance(card, ClassifierCard):
        return (torch.rand(rows, *card.input_shape, generator=gen) * 2 - 1,)  # [rows, C, H, W] in [-1, 1]
    z = torch.randn(rows, card.z_dim, generator=gen)  # [rows, z_dim]
    if labels is None:
        labels = torch.arange(rows) % max(card.n_classes, 1)  # [rows]
    if card.class_input == "embedding":
        return (z, labels)
    if card.class_input == "onehot":
        return (torch.cat([z, torch.nn.functional.one_hot(labels, card.n_classes).float()], dim=1),)
    return (z,)


def _edge_class_inputs(card: GeneratorCard, seed: int) -> tuple[torch.Tensor, ...]:
    """A batch of two rows of classes 0 and n_classes - 1: the sample batches' labels cycle through the
    first few classes only, so a module with fewer classes than --n-classes would pass them and fail on
    the first job row of a top class."""
    return _sample_inputs(card, 2, seed, labels=torch.tensor([0, card.n_classes - 1]))


def _check_class_range(module: nn.Module, card, where: str) -> None:
    """Refuse, naming --n-classes, a conditional generator whose forward fails on class 0 or on the top
    class (an nn.Embedding with fewer entries, a linear layer of another width)."""
    if not isinstance(card, GeneratorCard) or not card.n_classes:
        return
    try:
        _run_eager(module, _edge_class_inputs(card, seed=1), where)
    except ZsteerError as exc:
        raise ZsteerError(
            f"--n-classes {card.n_classes}: the module cannot draw classes 0 and {card.n_classes - 1} (the "
            f"top class, n_classes - 1): {exc}; give the number of classes the module has"
        ) from None


@contextlib.contextmanager
def _quiet_torch_export() -> Iterator[None]:
    """Silence what a failing torch.export writes to stderr besides its exception (fake_tensor's logged
    tracebacks, symbolic_shapes' warnings, the partial graph printed to sys.stderr): the exception's first
    line is what the user gets. Every logger under "torch" that exists is raised above CRITICAL for the
    attempt and set back after it."""
    loggers = [logging.getLogger("torch")] + [
        logger
        for name, logger in logging.root.manager.loggerDict.items()
        if name.startswith("torch.") and isinstance(logger, logging.Logger)
    ]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _run_eager(module: nn.Module, inputs: tuple[torch.Tensor, ...], where: str):
    """The eager module's output for ``inputs``; an exception or a NaN / Inf in the output is one line
    (torch.export would report the first as a tracing failure, the second as a mismatch with eager)."""
    rows = len(inputs[0])
    with torch.no_grad():
        out = _user_call(where, f"forward on a sample batch of {rows} rows", module, *inputs)
    if isinstance(out, torch.Tensor) and out.is_floating_point() and not bool(torch.isfinite(out).all()):
        bad = int((~torch.isfinite(out)).sum())
        raise ZsteerError(
            f"{where}: forward gives {bad} NaN or Inf value(s) of {out.numel()} on a sample batch of {rows} "
            "rows; a model zsteer imports must give finite outputs"
        )
    return out


def export_module(
    module: nn.Module, card: GeneratorCard | ClassifierCard, tolerance: float = 1e-4, source: str = ""
) -> torch.export.ExportedProgram:
    """``module`` traced by torch.export with a dynamic batch axis, eval mode, checked against eager.

    ``source`` ("package.module:attribute") names the module in errors; default: its class name."""
    _check_card(card)
    module = module.eval()
    where = f"--module {source}" if source else type(module).__name__
    args = _sample_inputs(card, TRACE_ROWS, seed=0)
    _run_eager(module, args, where)  # the user's own errors first, as theirs
    _check_class_range(module, card, where)
    batch = torch.export.Dim("N", min=1)
    try:
        with _quiet_torch_export():
            program = torch.export.export(module, args, dynamic_shapes=tuple({0: batch} for _ in args))
    except Exception as exc:  # torch.export raises many types; the user needs the first line
        first = first_line(exc, limit=200)
        raise ZsteerError(f"torch.export could not trace {type(module).__name__}: {first}") from None
    exported = program.module()
    checks = [_sample_inputs(card, rows, seed=rows) for rows in CHECK_ROWS]
    if isinstance(card, GeneratorCard) and card.n_classes:
        checks.append(_edge_class_inputs(card, seed=1))
    for inputs in checks:
        rows = len(inputs[0])
        want = _run_eager(module, inputs, where)
        with torch.no_grad():
            got = exported(*inputs)
        if not isinstance(want, torch.Tensor) or want.shape != got.shape:
            raise ZsteerError(f"the exported program gives {tuple(got.shape)} for {rows} rows, the module "
                              f"{getattr(want, 'shape', type(want).__name__)}")  # fmt: skip
        scale = max(float(want.abs().max()), 1.0)
        diff = float((want - got).abs().max())
        if not diff <= tolerance * scale:
            raise ZsteerError(
                f"the exported program differs from the eager module by {diff:.3g} on {rows} rows "
                "(data-dependent control flow or randomness in forward?)"
            )
    return program


def _check_card(card) -> None:
    if isinstance(card, GeneratorCard):
        if card.class_input not in CLASS_INPUTS:
            raise ZsteerError(
                f"--class-input must be one of {', '.join(CLASS_INPUTS)}, got {card.class_input!r}"
            )
        if (card.class_input == "none") != (card.n_classes == 0):
            raise ZsteerError("--n-classes and --class-input go together: a conditional generator needs both")
        parse_range(list(card.output_range), "--output-range")
    else:
        parse_range(list(card.input_range), "--input-range")
        if len(set(card.attributes)) != len(card.attributes) or not card.attributes:
            raise ZsteerError("--attributes: give one distinct name per logit")


def write_imported(
    module: nn.Module,
    card: GeneratorCard | ClassifierCard,
    out: str | Path,
    source: str = "",
    tolerance: float = 1e-4,
) -> LoadedModel:
    """Export ``module``, write ``out`` (.pt2) and its sidecar, and load them back through the job's checks.

    The library function behind `zsteer import`; tests and notebooks call it with a module in memory.
    """
    out = Path(out)
    if out.suffix != ".pt2":
        raise ZsteerError(f"--out {out}: an imported model is a .pt2 file")
    program = export_module(module, card, tolerance, source)
    if isinstance(card, GeneratorCard):
        with torch.no_grad():
            images = program.module()(*_sample_inputs(card, 2, seed=2))
        if images.dim() != 4:
            raise ZsteerError(f"the generator returns {list(images.shape)}, expected images [N, C, H, W]")
        spec = ImportedGeneratorSpec(
            z_dim=card.z_dim, n_classes=card.n_classes, class_input=card.class_input,
            output_range=tuple(card.output_range), image_shape=tuple(int(d) for d in images.shape[1:]),
        )  # fmt: skip
        attributes = ()
    else:
        spec = ImportedClassifierSpec(
            input_shape=tuple(card.input_shape), input_range=tuple(card.input_range),
            n_classes=len(card.attributes),
        )  # fmt: skip
        attributes = tuple(card.attributes)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.pt2")  # torch.export.save wants the .pt2 suffix
    torch.export.save(program, str(tmp))
    tmp.replace(out)
    write_sidecar(out, spec, attributes, source)
    try:
        if isinstance(card, GeneratorCard):
            return load_imported_generator(out)
        return load_imported_classifier(out)
    except CheckpointError:
        out.unlink(missing_ok=True)
        sidecar_path(out).unlink(missing_ok=True)
        raise


def import_model(config: ImportConfig) -> LoadedModel:
    """`zsteer import`: build the user's module, export it, write and check ``config.out``."""
    module = build_module(config)
    return write_imported(module, config.card, config.out, config.factory, config.tolerance)
