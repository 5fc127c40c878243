"""Choosing between a Triton kernel and its torch reference, and saying once why a fallback happened."""

from __future__ import annotations

import importlib.util
import warnings

import torch

IMPLS = ("auto", "triton", "torch")
_warned: set[tuple[str, str]] = set()


def triton_available() -> bool:
    """True when the triton package can be imported (it is not imported here)."""
    return importlib.util.find_spec("triton") is not None


def _warn_once(op: str, reason: str) -> None:
    if (op, reason) not in _warned:
        _warned.add((op, reason))
        warnings.warn(f"zsteer.kernels.{op}: using the torch reference: {reason}", stacklevel=3)


def choose_impl(op: str, impl: str, *tensors: torch.Tensor) -> str:
    """Resolve ``impl`` ("auto" | "triton" | "torch") to "triton" or "torch" for these tensors.

    "auto" takes Triton on CUDA tensors when triton imports, else the torch reference (warning once why).
    "triton" on CPU tensors runs only under Triton's interpreter (TRITON_INTERPRET=1), which the tests use.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "torch":
        return "torch"
    if impl == "triton":
        if not triton_available():
            raise RuntimeError(f"zsteer.kernels.{op}: impl='triton' but triton is not installed")
        return "triton"
    if not all(t.is_cuda for t in tensors):
        # Quiet on CPU: the reference is the intended path there, not a degraded one.
        return "torch"
    if not triton_available():
        _warn_once(op, "triton is not installed")
        return "torch"
    return "triton"
