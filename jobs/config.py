"""The settings of one edit job, as frozen dataclasses the CLI parses into and the library runs from.

What belongs to a job's identity (recorded in job.json and compared on resume) is marked in each
field's comment; the rest only changes how fast the job runs, not what it writes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from zsteer.pipeline.config import EngineConfig
from zsteer.pipeline.loading import ModelSource

from .ascent_method import AscentMethod
from .backends import BackendConfig
from .method import EditMethod

IMAGE_FORMATS = ("png", "none")


@dataclass(frozen=True)
class EditSpec:
    """What to change and what to keep. Identity: a resume with other targets is refused."""

    # "Name" or "Name=weight" strings; the job default for rows without a per-row targets override.
    targets: tuple[str, ...] = ()
    # Attributes to hold in place; None = every attribute that is not a target of the row.
    preserve: tuple[str, ...] | None = None


@dataclass(frozen=True)
class OutputConfig:
    """Where results go and how they are cut into files."""

    # The job folder: job.json, parts/, rejects/, commits/, summary.json. A path, or a URI of a pyarrow.fs
    # file system (s3://bucket/prefix, file:///abs/path), opened by jobs/storage.py.
    out: Path | str
    # "png" (an `image` column of PNG bytes) or "none". Identity: shards of one job share one schema.
    images: str = "png"
    # Upper bound on rows per output file; a unit (at most unit_rows rows) is written as one or more.
    rows_per_shard: int = 4096
    # PNG encoder processes; 0 = encode in the writer thread. Processes, because Pillow holds the GIL
    # for most of a small PNG, so threads do not encode in parallel.
    workers: int = field(default_factory=lambda: max(1, min(4, (os.cpu_count() or 2) - 1)))

    def __post_init__(self):
        if self.images not in IMAGE_FORMATS:
            raise ValueError(f"images must be one of {IMAGE_FORMATS}, got {self.images!r}")
        if self.rows_per_shard < 1:
            raise ValueError(f"rows_per_shard must be >= 1, got {self.rows_per_shard}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")


@dataclass(frozen=True)
class JobConfig:
    """Everything `zsteer edit` needs; `run_job(JobConfig(...))` is the job without the CLI."""

    # Parquet files, directories (every *.parquet below) or globs; resolved and sorted once, so a
    # resume sees the same units in the same order. Identity (with each file's size and row count).
    manifests: tuple[str, ...]
    # Output folder and shard layout.
    output: OutputConfig
    # Models; their fingerprints and specs are identity, their paths are not (files may move).
    models: ModelSource = ModelSource()
    # Targets and preserved attributes. Identity.
    edit: EditSpec = EditSpec()
    # How rows are edited: a registered method (jobs/method.py) with its settings. Identity.
    method: EditMethod = AscentMethod()
    # Batch size, device, compile, kernels: speed only (the engine's rows do not depend on them).
    engine: EngineConfig = EngineConfig()
    # The runtime that executes the method's editor (torch, onnxruntime): speed only.
    backend: BackendConfig = BackendConfig()
    # Who runs the units: a name in executor.EXECUTORS ("local": threads on this machine, "ray": actors
    # on a Ray cluster). Speed only, never identity: a job started by one executor may be resumed by another.
    executor: str = "local"
    # Keyword options of the executor's class, as (name, value) pairs (ray: address, num_workers,
    # gpus_per_worker, cpus_per_worker). Speed only; recorded in job.json's runtime.
    executor_options: tuple[tuple[str, object], ...] = ()
    # Rows per read from a row group: bounds memory whatever the manifest's row-group size.
    read_rows: int = 4096
    # Rows per unit of work and of resume: row groups are cut into units of at most this many rows,
    # so a huge row group still commits (and a stop loses) bounded work. Identity: a resume must cut
    # the row groups the same way.
    unit_rows: int = 4096
    # Seconds between progress lines when stderr is not a terminal (CI logs).
    progress_seconds: float = 15.0
    # Install SIGINT/SIGTERM handlers (finish the batch, commit, exit resumable); main thread only.
    handle_signals: bool = True

    def __post_init__(self):
        for name in ("read_rows", "unit_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
