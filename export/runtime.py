"""onnxruntime as an optional dependency: lazy import, session creation, provider choice and checks.

onnxruntime (extra ``cpu``) and onnxruntime-gpu (extra ``gpu``) cannot share one environment, so nothing
imports onnxruntime at module level: the error for a missing package names the extra to install.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zsteer.core.errors import ExportError, first_line

_INSTALL_HINT = "pip install 'zsteer[cpu]' (or 'zsteer[gpu]' for CUDA; not both)"


def import_onnxruntime():
    """The onnxruntime module, or an ExportError that says which extra to install."""
    try:
        import onnxruntime
    except ImportError:
        raise ExportError(f"onnxruntime is not installed: {_INSTALL_HINT}") from None
    return onnxruntime


def import_onnx():
    """The onnx module, or an ExportError that says which extra to install."""
    try:
        import onnx
    except ImportError:
        raise ExportError(f"onnx is not installed: {_INSTALL_HINT}") from None
    return onnx


def import_onnxscript():
    """The onnxscript module (the dynamo exporter needs it), or an ExportError naming the extra."""
    try:
        import onnxscript
    except ImportError:
        raise ExportError(
            f"onnxscript is not installed (the dynamo exporter needs it): {_INSTALL_HINT}"
        ) from None
    return onnxscript


@dataclass(frozen=True)
class Placement:
    """Where sessions run and where bound tensors live: ("cpu", 0) or ("cuda", device_id)."""

    device_type: str = "cpu"
    device_id: int = 0

    @classmethod
    def parse(cls, device: str) -> Placement:
        """From a torch-style device string: "cpu", "cuda", "cuda:1"."""
        kind, _, index = device.partition(":")
        if kind not in ("cpu", "cuda") or (index and not index.isdigit()):
            raise ExportError(f"onnxruntime backend: unknown device {device!r} (use cpu, cuda or cuda:N)")
        return cls(kind, int(index or 0))

    @property
    def providers(self) -> list:
        if self.device_type == "cuda":
            return [("CUDAExecutionProvider", {"device_id": self.device_id}), "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]


def session_options(threads: int | None = None):
    """Sequential execution, all graph optimisations, ``threads`` intra-op threads (None: ORT's default)."""
    ort = import_onnxruntime()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    if threads:
        opts.intra_op_num_threads = int(threads)
    opts.log_severity_level = 3  # errors only: the provider check below says what matters, once
    return opts


def make_session(
    model: bytes | str | Path, placement: Placement, threads: int | None = None, source: str | None = None
):
    """An InferenceSession on ``placement``; a CUDA request that onnxruntime cannot honour is an error.

    onnxruntime-gpu lists CUDAExecutionProvider as available whether or not a GPU and the CUDA libraries
    are there, and silently falls back to the CPU when it cannot load them; so the providers the session
    actually got are checked after it is made.

    A model onnxruntime cannot load (a truncated or corrupt file) is an ExportError naming ``source``
    (the file it was read from; a Path ``model`` names itself), not onnxruntime's multi-line error.
    """
    ort = import_onnxruntime()
    if placement.device_type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ExportError(
            f"device {placement.device_type}:{placement.device_id} asked for, but this onnxruntime has no "
            f"CUDA provider (installed: {', '.join(ort.get_available_providers())}); install 'zsteer[gpu]' "
            "instead of 'zsteer[cpu]', or run on the cpu"
        )
    data = str(model) if isinstance(model, Path) else model
    if source is None and not isinstance(model, bytes):
        source = str(model)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ORT warns about the fallback; the check below is the message
            session = ort.InferenceSession(data, session_options(threads), providers=placement.providers)
    except (ort.capi.onnxruntime_pybind11_state.InvalidProtobuf, ort.capi.onnxruntime_pybind11_state.Fail,
            ort.capi.onnxruntime_pybind11_state.InvalidGraph, ort.capi.onnxruntime_pybind11_state.NoSuchFile,
            ) as exc:  # fmt: skip
        if source is None:
            raise  # graphs made in memory: a failure to load them is zsteer's bug, keep its traceback
        what = "not a valid ONNX file (truncated?)"
        if not isinstance(exc, ort.capi.onnxruntime_pybind11_state.InvalidProtobuf):
            what = f"onnxruntime cannot load it ({first_line(exc)})"
        raise ExportError(f"{source}: {what}") from None
    if placement.device_type == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
        raise ExportError(
            f"onnxruntime could not use CUDA device {placement.device_id} (the session got "
            f"{', '.join(session.get_providers())}): check the GPU, the driver and the CUDA/cuDNN libraries "
            "onnxruntime-gpu needs, or run on the cpu"
        )
    return session


def make_sessions(
    models: dict[str, bytes | str | Path], placement: Placement, threads: int | None = None,
    cpu_fallback: bool = False, sources: dict[str, str | None] | None = None,
) -> tuple[dict, Placement]:  # fmt: skip
    """Sessions for several models on one placement; with ``cpu_fallback`` a CUDA failure warns and uses CPU.

    ``sources``: name -> the file a model's bytes were read from, for load errors that name it.
    """
    sources = sources or {}

    def made(on: Placement) -> dict:
        return {name: make_session(m, on, threads, sources.get(name)) for name, m in models.items()}

    try:
        return made(placement), placement
    except ExportError as exc:
        if placement.device_type != "cuda" or not cpu_fallback:
            raise
        warnings.warn(f"{exc}; falling back to onnxruntime on the CPU", stacklevel=2)
        cpu = Placement("cpu", 0)
        return made(cpu), cpu


# Rows per run of a RowChunks split: the course step at batch 128 on 2 cores ran 1.18x faster in chunks
# of 8-32 rows than whole, and in chunks of 8 about 2% faster than of 32 (docs/NOTES.md, ONNX); fewer rows
# than MIN_CHUNK_ROWS are never split off (a row's bits were checked the same in runs of 4 to 128 rows).
CHUNK_ROWS = 8
MIN_CHUNK_ROWS = 4


@dataclass(frozen=True)
class RowChunks:
    """Runs a batch through single-threaded sessions in chunks of rows, ``workers`` chunks at a time.

    Why: onnxruntime's CPU kernels scale poorly over threads inside one run (the course step on 2 threads
    ran 1.7x its 1-thread speed) and a whole batch's tensors overflow the caches, while concurrent
    runs of a session are allowed and release the GIL. Rows are independent in every zsteer graph and a
    1-thread run gives each row the bits it gets in any other chunking, so results do not change.
    """

    # Concurrent runs: the cores this engine may use (each session runs on one intra-op thread).
    workers: int
    # Rows per run (at most; a batch is cut into at least ``workers`` chunks of near-equal size).
    chunk_rows: int = CHUNK_ROWS

    def bounds(self, rows: int) -> list[tuple[int, int]]:
        """(start, stop) of each chunk of a batch of ``rows`` rows."""
        count = max(self.workers, math.ceil(rows / self.chunk_rows))
        count = max(1, min(count, rows // MIN_CHUNK_ROWS))
        edges = [rows * i // count for i in range(count + 1)]
        return list(zip(edges[:-1], edges[1:], strict=True))

    def run(
        self, fn: Callable[[dict[str, np.ndarray]], list[np.ndarray]], feeds: dict[str, np.ndarray], rows: int
    ) -> list[np.ndarray]:
        """``fn`` (feeds -> per-row outputs) over the chunks, outputs joined along the rows; every feed has
        ``rows`` rows and is cut, except 0-d ones (scalars), which go to every chunk whole."""
        bounds = self.bounds(rows)
        if len(bounds) == 1:
            return fn(feeds)
        wrong = [k for k, v in feeds.items() if v.ndim and v.shape[0] != rows]
        if wrong:
            raise ValueError(f"feed {wrong[0]!r} has {feeds[wrong[0]].shape[0]} rows, the batch {rows}")
        chunks = [{k: v[a:b] if v.ndim else v for k, v in feeds.items()} for a, b in bounds]
        # A pool per call: one made at start-up would be left without threads in a forked worker.
        with ThreadPoolExecutor(min(self.workers, len(chunks)), thread_name_prefix="zsteer-ort") as pool:
            outs = list(pool.map(fn, chunks))
        return [np.concatenate(parts) for parts in zip(*outs, strict=True)]
