"""The settings of a benchmark run, as frozen dataclasses: what to measure (cells) and for how long.

``zsteer bench`` parses its flags into a ``BenchConfig``; ``run_bench(BenchConfig(...))`` is the benchmark
without the CLI. The run-control names follow the tools ops teams know: trtexec's time-based warm-up,
minimum duration and minimum iterations; perf_analyzer's measurement windows repeated until the last
three agree within a tolerance.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, fields
from pathlib import Path

from zsteer.pipeline.config import PRECISIONS
from zsteer.pipeline.loading import ModelSource

MODES = ("engine", "job")
IMAGE_FORMATS = ("png", "none")
# Bench backends: the job's backend registry (jobs/backends.py) plus "torch-compiled", which is the torch
# backend with torch.compile forced on (plain "torch" is eager here, whatever the device's default).
COMPILED = "torch-compiled"


@dataclass(frozen=True)
class RunControl:
    """How long each cell runs, and when its throughput counts as settled."""

    # Seconds of untimed iterations after the first call (allocator, oneDNN primitive cache, ORT arenas,
    # CUDA autotuning), as trtexec's --warmUp.
    warmup_seconds: float = 2.0
    # A measurement window lasts at least this long (trtexec --duration)...
    min_seconds: float = 3.0
    # ...and at least this many iterations (trtexec --iterations), whichever comes later.
    min_iterations: int = 5
    # The last ``agree`` windows' throughputs must each be within this fraction of their mean
    # (perf_analyzer's stability rule), else more windows run.
    tolerance: float = 0.10
    # How many trailing windows must agree; they are also the windows the results come from.
    agree: int = 3
    # Windows after which a cell that never settled is reported unstable (and its last windows used).
    max_windows: int = 8

    def __post_init__(self):
        if not (0 <= self.warmup_seconds < math.inf and 0 <= self.min_seconds < math.inf):
            raise ValueError(
                f"warmup_seconds and min_seconds must be finite and >= 0, got {self.warmup_seconds} and "
                f"{self.min_seconds}"
            )
        if self.min_iterations < 1 or self.agree < 1:
            raise ValueError("min_iterations and agree must be >= 1")
        if self.max_windows < self.agree:
            raise ValueError(f"max_windows ({self.max_windows}) must be >= agree ({self.agree})")
        if not 0 < self.tolerance < 1:
            raise ValueError(f"tolerance must be in (0, 1), got {self.tolerance}")


# --quick: about 30 s for the default cell on a 2-core CPU (first call, 0.5 s warm-up, 3+ short windows).
QUICK = RunControl(warmup_seconds=0.5, min_seconds=1.0, min_iterations=2, max_windows=4)


@dataclass(frozen=True)
class BenchCell:
    """One point of the matrix: everything that changes the speed being measured."""

    # "engine": the method's editor over batches held in memory; "job": the whole streaming job
    # (`run_job`) over a generated manifest, so reading, encoding and writing are in the figure.
    mode: str = "engine"
    # A name in the backend registry, or "torch-compiled" (torch with torch.compile on).
    backend: str = "torch"
    # A name in the method registry (jobs/method.py), built with its defaults as `zsteer edit` does.
    method: str = "ascent"
    # Rows per editor batch.
    batch_size: int = 128
    # Gradient steps of the method (ascent; a method without steps ignores it).
    steps: int = 10
    # "png": render every edited row (and in job mode encode and write it); "none": no images.
    images: str = "none"
    # torch device string.
    device: str = "cpu"
    # torch (and onnxruntime intra-op) threads; None = the library's default.
    threads: int | None = None
    # Arithmetic of the networks (EngineConfig.precision): "fp32", or the opt-in "bf16".
    precision: str = "fp32"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.images not in IMAGE_FORMATS:
            raise ValueError(f"images must be one of {IMAGE_FORMATS}, got {self.images!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.batch_size < 1 or self.steps < 0 or (self.threads is not None and self.threads < 1):
            raise ValueError("batch_size and threads must be >= 1, steps >= 0")

    def settings(self) -> dict:
        """The cell as a flat dict (the key a baseline is matched on)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def matrix(**axes: tuple) -> tuple[BenchCell, ...]:
    """Every combination of the given axes (field name -> values), in the order given."""
    names = list(axes)
    return tuple(
        BenchCell(**dict(zip(names, combo, strict=True))) for combo in itertools.product(*axes.values())
    )


@dataclass(frozen=True)
class BenchConfig:
    """A benchmark run: the cells, the models, the edit, and the run control."""

    # The matrix, measured one cell after the other in this order.
    cells: tuple[BenchCell, ...] = (BenchCell(),)
    # The models (default: the embedded demo models), as every other command loads them.
    models: ModelSource = ModelSource()
    # "Name" or "Name=weight" targets; () = the classifier's first attribute.
    targets: tuple[str, ...] = ()
    # Warm-up, window length, stability rule.
    control: RunControl = RunControl()
    # Seed of the latents (and labels) every cell edits: the same rows for every cell and every run.
    seed: int = 0
    # Rows of the job-mode manifest; None = ``job_batches`` batches of the cell's batch size.
    job_rows: int | None = None
    # Batches per job-mode run when job_rows is None: enough that the job's pipelining (one unit
    # reading and writing while another computes) is in the figure.
    job_batches: int = 8
    # PNG encoder processes of a job-mode run (the job's --workers).
    workers: int = 1
    # Kernel implementation (auto | triton | torch), as `zsteer edit --impl`.
    impl: str = "auto"
    # With --backend onnxruntime: graphs written by `zsteer export` instead of exporting at start-up.
    onnx_dir: Path | None = None
    # Minimum seconds per GEMM shape when measuring the matmul peak (0 = skip the roofline).
    peak_seconds: float = 0.5
    # Timed iterations of the per-stage pass (engine mode), run after the throughput windows.
    stage_iterations: int = 3
    # Cells take turns window by window instead of one after the other, so that load from elsewhere on a
    # shared machine falls on every cell alike and their ratios hold (peak RSS is then the run's).
    interleave: bool = False

    def __post_init__(self):
        if not self.cells:
            raise ValueError("a benchmark needs at least one cell")
        if self.job_rows is not None and self.job_rows < 1:
            raise ValueError(f"job_rows must be >= 1, got {self.job_rows}")
        if self.job_batches < 1:
            raise ValueError(f"job_batches must be >= 1, got {self.job_batches}")
        if self.workers < 0 or self.stage_iterations < 0 or not 0 <= self.peak_seconds < math.inf:
            raise ValueError("workers and stage_iterations must be >= 0, peak_seconds finite and >= 0")
