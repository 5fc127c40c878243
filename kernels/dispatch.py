"""Choosing between a Triton kernel and its torch reference, and saying once why a fallback happened.

Nothing here imports triton at import time. The first call that could use a Triton kernel tries to import
it (and the kernel modules, which register the ops with torch.library) once per process and keeps the
result: an installed but broken triton is then a reason to fall back, said once, not an error in the
middle of a job.
"""

from __future__ import annotations

import importlib
import logging
import re
import warnings
from collections.abc import Callable
from types import ModuleType

import torch

IMPLS = ("auto", "triton", "torch")
# Floating dtypes the kernels read and write; all compute in float32 (as torch does for half inputs' opmath).
SUPPORTED_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
# Widest row one program holds in registers; wider rows would spill, so they are refused (use impl="torch").
# The kernels round each width up to a power of two, so this is also the widest width they take.
MAX_ROW_ELEMENTS = 16384

log = logging.getLogger(__name__)
_said: set[tuple[str, str]] = set()
# module name -> the imported module, or the text of the exception its import raised.
_loaded: dict[str, ModuleType | str] = {}


def triton_module(op: str) -> ModuleType:
    """``zsteer.kernels._triton_<op>``, imported once; RuntimeError with the reason if it cannot be."""
    found = _load(op)
    if isinstance(found, str):
        raise RuntimeError(f"zsteer.kernels.{op}: impl='triton' but {found}")
    return found


def triton_unavailable(op: str = "objective") -> str | None:
    """Why the Triton kernels cannot be used in this process (None when they can): tries the import once."""
    found = _load(op)
    return found if isinstance(found, str) else None


def triton_available() -> bool:
    """True when triton and zsteer's Triton kernels import (tried once per process, then cached)."""
    return triton_unavailable() is None


def triton_interpreted(op: str) -> bool:
    """True when ``op``'s Triton kernel runs in Triton's interpreter (TRITON_INTERPRET=1 before the import
    of triton), which torch.compile cannot trace."""
    common = importlib.import_module(f"{__package__}._triton_common")
    return common.is_interpreted(getattr(triton_module(op), f"_{op}_kernel"))


def _load(op: str) -> ModuleType | str:
    name = f"{__package__}._triton_{op}"
    if name not in _loaded:
        try:
            _loaded[name] = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            missing = exc.name == "triton"  # a missing submodule of triton is a broken install
            _loaded[name] = "triton is not installed" if missing else f"triton failed to import: {exc!r}"
        except Exception as exc:  # any failure of a broken install is a reason to fall back
            _loaded[name] = f"triton failed to import: {type(exc).__name__}: {exc}"
    return _loaded[name]


def say_once(op: str, reason: str, level: int = logging.WARNING) -> None:
    """Say once per process per (op, reason) that ``op`` uses its torch reference, and why.

    A degraded path (CUDA tensors without a usable kernel) is a warning, as StyleGAN2-ADA's ops do; the
    intended path on CPU is said at INFO level, for who asks.
    """
    # Keyed without the numbers (shapes, sizes) so that a caller whose batch size varies hears it once.
    key = (op, re.sub(r"\d+", "#", reason))
    if key in _said:
        return
    _said.add(key)
    message = f"zsteer.kernels.{op}: using the torch reference: {reason}"
    if level >= logging.WARNING:
        warnings.warn(message, stacklevel=3)
    else:
        log.log(level, message)


def _all_cuda(tensors) -> bool:
    return bool(tensors) and all(t.is_cuda for t in tensors)


def choose_impl(
    op: str, impl: str, *tensors: torch.Tensor, refusal: Callable[[], str | None] | None = None
) -> str:
    """Resolve ``impl`` ("auto" | "triton" | "torch") to "triton" or "torch" for these tensors.

    "auto" takes Triton on CUDA tensors when triton imports and ``refusal()`` (why the kernel would refuse
    these inputs, or None) has no objection; else the torch reference, saying once why (a warning on CUDA,
    an INFO log record on CPU, where the reference is the intended path). "triton" never falls back: its
    errors say what is wrong. On CPU tensors it runs only under Triton's interpreter (TRITON_INTERPRET=1).
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "torch":
        return "torch"
    if impl == "triton":
        triton_module(op)  # raises with the reason when triton cannot be imported
        return "triton"
    if not _all_cuda([t for t in tensors if t is not None]):
        say_once(op, "the Triton kernels run on CUDA tensors only", logging.INFO)
        return "torch"
    reason = triton_unavailable(op)
    if reason is None and refusal is not None:
        reason = refusal()
    if reason is not None:
        say_once(op, reason)
        return "torch"
    return "triton"


def float_refusal(name: str, t: torch.Tensor) -> str | None:
    """Why the kernels would refuse ``t`` as a floating input, or None."""
    if t.dtype not in SUPPORTED_FLOATS:
        return f"{name} is {t.dtype}; the Triton kernel reads {', '.join(map(str, SUPPORTED_FLOATS))}"
    return None


def width_refusal(**widths: int) -> str | None:
    """Why the kernels would refuse rows of these widths (one row per program, in registers), or None."""
    for name, width in widths.items():
        if width > MAX_ROW_ELEMENTS:
            return f"{name} has {width} columns, over the Triton kernel's {MAX_ROW_ELEMENTS}-element rows"
    return None
