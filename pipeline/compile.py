"""The one place zsteer applies torch.compile.

On 2 CPU cores the compiled step was measured against eager (benchmarks/ascent.py) and eager won or tied
after a cold start of 7-45 s, so "auto" compiles only on CUDA. Shapes are kept fixed by the engine
(padded buckets), so each bucket compiles once.

The Triton kernels compose with it: with Triton chosen, the objective inside the step is the
``zsteer::objective`` operator (``torch.library.triton_op``, kernels/_triton_objective.py), which the
compiled step launches as the Triton kernel rather than inductor's fusion of the torch reference.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def should_compile(mode: str, device: torch.device) -> bool:
    """``mode`` is "auto" | "on" | "off"; auto means on for CUDA, off elsewhere."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"compile must be auto, on or off, got {mode!r}")
    return mode == "on" or (mode == "auto" and device.type == "cuda")


def compile_step(fn: Callable, enabled: bool) -> Callable:
    """``fn`` compiled with fixed shapes when ``enabled``, else ``fn`` itself."""
    return torch.compile(fn, dynamic=False) if enabled else fn
