"""The runtime seam: which runtime executes a method's editor, looked up by name in a registry.

A backend factory takes (generator, classifier, ascent settings, engine config, backend config) and
returns an ``Editor`` (pipeline/editor.py). Every backend gives each row the same result within fp32
rounding, so the backend is a runtime choice, not part of a job's identity: a job started on one may be
resumed on another. A factory is named as "module:attribute" so that a backend's imports (onnxruntime)
are paid only when it is used. Adding one: docs/ARCHITECTURE.md, "Adding a runtime backend".
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from zsteer.core.errors import ZsteerError

# name -> "module:attribute" of a factory(generator, classifier, ascent, engine, backend) -> Editor.
BACKENDS: dict[str, str | Callable] = {
    "torch": "zsteer.pipeline.engine:torch_backend",
    "onnxruntime": "zsteer.export.backend:onnxruntime_backend",
}


@dataclass(frozen=True)
class BackendConfig:
    """The runtime that executes the edit, and its own options (speed only, never identity)."""

    # A name in BACKENDS: "torch" (eager or compiled, Triton kernels on CUDA) or "onnxruntime" (no
    # PyTorch model in the hot loop).
    name: str = "torch"
    # A folder written by `zsteer export` to run from; None = export the graphs in memory at start-up.
    onnx_dir: Path | None = None
    # onnxruntime's threads; None = onnxruntime's choice. On the CPU, 2 or more run that many 1-thread
    # session runs at once over chunks of a batch's rows (export/runtime.RowChunks: faster, same bits),
    # for the course-layout graphs and for imported models' row-by-row forward alike.
    threads: int | None = None
    # On a machine where the CUDA provider is listed but unusable, run on the CPU instead of failing.
    cpu_fallback: bool = False

    def __post_init__(self):
        if self.name not in BACKENDS:
            raise ValueError(f"backend must be one of {tuple(BACKENDS)}, got {self.name!r}")


def register_backend(name: str, factory: str | Callable) -> None:
    """Add (or replace) a backend: a factory, or its "module:attribute"."""
    BACKENDS[name] = factory


def backend_factory(name: str) -> Callable:
    """The factory registered as ``name``, imported on first use."""
    try:
        factory = BACKENDS[name]
    except KeyError:
        raise ZsteerError(f"--backend {name}: unknown backend; known: {', '.join(BACKENDS)}") from None
    if isinstance(factory, str):
        module, attr = factory.split(":")
        factory = BACKENDS[name] = getattr(importlib.import_module(module), attr)
    return factory
