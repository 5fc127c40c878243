"""``run_bench``: each cell of the matrix measured on zsteer's own editors and job, into one report.

Engine mode times ``editor.edit_batch`` on one batch of seeded latents held in memory, the editor built
by the method registry on the backend registry exactly as a job builds it. Job mode times ``run_job``
over a manifest written by ``write_sample`` in a temporary folder, a fresh output folder per iteration
(made untimed), so its figure is what ops see end to end: reading, validation, editing, PNG encoding,
Parquet writing and commits.

Per cell the report holds throughput, per-batch latency percentiles, the first call apart from the rest
(compilation, onnxruntime session creation), the editor's construction time (export, sessions), time
per stage, peak RSS (and peak CUDA memory), FLOPs per latent and achieved GFLOP/s against the measured
matmul peak of the same device and thread count.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, fields, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from zsteer.core.errors import ZsteerError
from zsteer.pipeline.ascent_loop import AscentLoop
from zsteer.pipeline.checkpoints import LoadedModel
from zsteer.pipeline.config import AscentConfig, EngineConfig
from zsteer.pipeline.editor import EditBatch, as_tensor
from zsteer.pipeline.loading import load_models
from zsteer.pipeline.network import EditNet

from ..ascent_method import AscentMethod
from ..backends import BACKENDS, BackendConfig
from ..config import EditSpec, JobConfig, OutputConfig
from ..encode import encode_pngs
from ..folder import write_parquet_atomic
from ..manifest import ModelShape
from ..memory import peak_rss_mb
from ..method import EditMethod, method_class, row_inputs
from ..runner import run_job
from ..sample import SampleConfig, write_sample
from ..targets import JobTargets, resolve_job_targets
from .config import COMPILED, BenchCell, BenchConfig
from .environment import environment
from .roofline import ascent_flops_per_latent, counted_flops_per_latent, matmul_peak, peak_dtypes
from .stages import StageTimer, instrument
from .timing import CudaClock, Measurement, Meter, clock_for

FORMAT = "zsteer-bench/1"
# Per-row fields of an EditBatch and the dtype the ascent loop gives each on the device.
_BATCH_DTYPES = {
    "z": torch.float32, "weights": torch.float32, "preserve": torch.float32, "labels": torch.int64,
    "max_steps": torch.int32, "stop_prob": torch.float32,
}  # fmt: skip
# The job's stage names (summary.json) -> the bench's.
_JOB_STAGES = {"read": "read", "compute": "compute", "encode": "png_encode", "write": "parquet_write"}

Progress = Callable[[str], None]


def make_method(name: str, steps: int) -> EditMethod:
    """The method registered as ``name`` with its defaults (as `zsteer edit` builds it), ``steps`` applied
    where the method has steps."""
    cls = method_class(name)
    if cls is AscentMethod:
        return AscentMethod(AscentConfig(steps=steps))
    method = cls()
    if any(f.name == "steps" for f in fields(method)):
        return replace(method, steps=steps)
    return method


def runtime_configs(cell: BenchCell, config: BenchConfig) -> tuple[EngineConfig, BackendConfig]:
    """The engine and backend settings of a cell: "torch" is eager, "torch-compiled" forces compile on."""
    name = "torch" if cell.backend == COMPILED else cell.backend
    if name not in BACKENDS:
        raise ZsteerError(
            f"--backend {cell.backend}: unknown backend; known: {', '.join([*BACKENDS, COMPILED])}"
        )
    engine = EngineConfig(
        batch_size=cell.batch_size, device=cell.device, compile="on" if cell.backend == COMPILED else "off",
        impl=config.impl, precision=cell.precision,
    )  # fmt: skip
    return engine, BackendConfig(name, config.onnx_dir if name == "onnxruntime" else None, cell.threads)


def seeded_batch(
    n: int, generator: LoadedModel, classifier: LoadedModel, targets: JobTargets, seed: int,
    method: EditMethod | None = None,
) -> EditBatch:  # fmt: skip
    """``n`` rows of z ~ N(0, I) (and labels) from ``seed`` with the job-wide targets, numpy, as a job reads
    them from a `zsteer sample` manifest; a method's own per-row inputs (``row_inputs``) come from those
    rows as the job would read them. A method that rejects such rows is a one-line error."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, generator.spec.z_dim)).astype(np.float32)  # [n, z_dim]
    weights = np.tile(targets.weights, (n, 1)).astype(np.float32)  # [n, A]
    mask = targets.preserve_mask if targets.preserve_mask is not None else (targets.weights == 0)
    preserve = np.tile(mask, (n, 1)).astype(np.float32)  # [n, A]
    labels = rng.integers(0, generator.spec.n_classes, n) if generator.spec.n_classes else None  # [n]
    extra = None
    if method is not None:
        columns = {
            "id": pa.array(np.arange(n)),
            "z": pa.FixedSizeListArray.from_arrays(pa.array(z.reshape(-1)), z.shape[1]),
        }
        if labels is not None:
            columns["label"] = pa.array(labels)
        shape = ModelShape(generator.spec.z_dim, generator.spec.n_classes, classifier.attributes)
        extra, reasons = row_inputs(method, pa.RecordBatch.from_pydict(columns), shape)
        if reasons:
            raise ZsteerError(
                f"--method {method.name}: rejects the rows of a plain `zsteer sample` manifest "
                f"({next(iter(reasons.values()))}); it needs columns of its own to be benchmarked"
            )
    return EditBatch(z, weights, preserve, labels, extra=extra or None)


def _reset_peak_rss() -> None:
    """Restart this process's VmHWM (Linux: clear_refs 5), so each cell reports its own peak."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


@contextlib.contextmanager
def _threads(n: int | None):
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _quiet():
    """No INFO lines from the engine or the job while a cell runs (its kernels and settings are in the
    report), and no progress bar of a job's own (it draws one only on a terminal); errors still raise."""
    logger = logging.getLogger("zsteer")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


class _Bench:
    """The state shared by the cells of one run: models, targets, FLOP counts, peaks per device."""

    def __init__(self, config: BenchConfig, progress: Progress | None):
        self.config = config
        self.progress = progress or (lambda message: None)
        self.generator, self.classifier = load_models(config.models)
        names = self.classifier.attributes
        self.targets = resolve_job_targets(config.targets or (names[0],), None, names, per_row=False)
        self.peaks: dict[str, dict] = {}
        self._flops: dict[tuple, float | None] = {}

    # ---- roofline -----------------------------------------------------------------------------------

    def peak(self, cell: BenchCell) -> dict:
        key = f"{cell.device}/{torch.get_num_threads()} threads"
        if key not in self.peaks and self.config.peak_seconds > 0:
            self.progress(f"matmul peak on {key}")
            clock = clock_for(cell.device)
            device = torch.device(cell.device)
            self.peaks[key] = {
                str(dt).removeprefix("torch."): matmul_peak(cell.device, dt, self.config.peak_seconds, clock)
                for dt in peak_dtypes(device)
            }
        return self.peaks.get(key, {})

    def flops(self, cell: BenchCell, method: EditMethod, editor) -> float | None:
        key = (cell.method, method.default_steps, cell.images)
        if key not in self._flops:
            if isinstance(editor, AscentLoop) and isinstance(method, AscentMethod):
                self._flops[key] = self._ascent_flops(editor, method.default_steps)
            else:
                rows = 4
                batch = seeded_batch(
                    rows, self.generator, self.classifier, self.targets, self.config.seed, method
                )
                counted = counted_flops_per_latent(
                    lambda: editor.edit_batch(batch, cell.images == "png"), rows
                )
                self._flops[key] = counted or None
        return self._flops[key]

    def _ascent_flops(self, editor, steps: int) -> float | None:
        """The net the editor runs (the torch engine's), else the EditNet of the models (onnxruntime runs
        the same graph); None for a net the counter cannot take."""
        try:
            net = getattr(editor, "net", None)
            if net is None or isinstance(net, EditNet):
                # The models' arithmetic, not the editor's way of running it (phases, bf16): every cell
                # of the course models is held against the same FLOPs.
                net = EditNet(self.generator, self.classifier)
            return ascent_flops_per_latent(net, steps)
        except (TypeError, ValueError, AttributeError, RuntimeError):
            return None

    def open(self, cell: BenchCell) -> _CellRun:
        """The cell with its editor built (and its matmul peak measured), ready to start."""
        return _CellRun(self, cell)


class _CellRun:
    """One cell in progress: its editor, the function its windows time, and how its report is finished.

    ``start`` (first call and warm-up), ``window`` (one measurement window) and ``finish`` (stages,
    memory, roofline) run inside the cell's own thread count; ``run_bench`` calls them one cell after the
    other, or window by window across cells (interleaved).
    """

    def __init__(self, bench: _Bench, cell: BenchCell):
        self.bench, self.cell, self.config = bench, cell, bench.config
        self.method = make_method(cell.method, cell.steps)
        self.engine, self.backend = runtime_configs(cell, self.config)
        self.clock = clock_for(cell.device)
        self.cuda = isinstance(self.clock, CudaClock)
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.summaries: list[dict] = []  # job mode: each run's summary.json
        with self.scope():
            self.peaks = bench.peak(cell)
            _reset_peak_rss()
            if self.cuda:
                torch.cuda.reset_peak_memory_stats(cell.device)
            if cell.mode == "engine":
                start = time.perf_counter()
                self.editor = self._make_editor()
                self.setup = time.perf_counter() - start
                self.meter = self._engine_meter()
            else:  # every job run builds its own editor: one built here would only add to the peak RSS
                self.editor = None
                self.meter = self._job_meter()

    def _make_editor(self):
        return self.method.make_editor(self.bench.generator, self.bench.classifier, self.engine, self.backend)

    @contextlib.contextmanager
    def scope(self):
        with _threads(self.cell.threads), _quiet():
            yield

    def start(self) -> None:
        with self.scope():
            self.meter.start()

    def window(self) -> None:
        with self.scope():
            rate = self.meter.window()
        self.bench.progress(f"{_label(self.cell)}: window {len(self.meter.windows)}: {rate:.1f} latents/s")

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def finish(self) -> dict:
        cell = self.cell
        with self.scope():
            m = self.meter.result()
            if cell.mode == "engine":
                result = _summary(m, cell, images=cell.images == "png", stage_ms=self._stages())
                result["setup_seconds"] = round(self.setup, 3)
            else:
                result = self._job_result(m)
                result["setup_seconds"] = None  # a job builds its editor inside each run
            result["peak_rss_mb"] = max(peak_rss_mb(), result.pop("encoder_peak_rss_mb", 0.0))
            result["peak_cuda_mb"] = (
                round(torch.cuda.max_memory_allocated(cell.device) / 2**20, 1) if self.cuda else None
            )
            result["threads"] = torch.get_num_threads()
            # Job mode: an editor as the job's, built only now (the peaks are read) for the fields below.
            editor = self.editor if self.editor is not None else self._make_editor()
            result["iobinding"] = getattr(editor, "iobinding", None)
            result["compiled"] = getattr(editor, "compiled", None)
            result["kernels"] = dict(getattr(editor, "kernel_impls", {}) or {}) or None
            result["steps_applied"] = self.method.default_steps
            flops = self.bench.flops(cell, self.method, editor)
        return _with_roofline(result, flops, self.peaks)

    # ---- engine mode --------------------------------------------------------------------------------

    def _engine_meter(self) -> Meter:
        b, cell = self.bench, self.cell
        self.batch = seeded_batch(
            cell.batch_size, b.generator, b.classifier, b.targets, self.config.seed, self.method
        )
        render = cell.images == "png"
        return Meter(lambda: self.editor.edit_batch(self.batch, render), cell.batch_size, self.config.control,
                     self.clock)  # fmt: skip

    def _stages(self) -> dict:
        """ms per batch of each stage, over ``stage_iterations`` instrumented edits (apart from the windows)."""
        n, cell, editor, batch, method = (
            self.config.stage_iterations,
            self.cell,
            self.editor,
            self.batch,
            self.method,
        )
        if n == 0:
            return {}
        timer = StageTimer(sync=self.clock.sync if self.cuda else None)
        device = getattr(editor, "device", torch.device(cell.device))
        z_dim, n_attr = self.bench.generator.spec.z_dim, len(self.bench.classifier.attributes)
        schema = pa.schema(method.output_fields(z_dim, n_attr) + [pa.field("image", pa.binary())])
        with tempfile.TemporaryDirectory(prefix="zsteer-bench-") as tmp, instrument(editor, timer):
            for i in range(n):
                with timer.stage("host_to_device"):
                    on_device = EditBatch(
                        **{k: as_tensor(getattr(batch, k), device, dt) for k, dt in _BATCH_DTYPES.items()},
                        extra=batch.extra,
                    )
                result = editor.edit_batch(on_device, cell.images == "png")
                pngs: list[bytes | None] = [None] * cell.batch_size
                if cell.images == "png":
                    with timer.stage("png_encode"):
                        pngs = encode_pngs(np.ascontiguousarray(result.images.numpy()))[0]
                with timer.stage("parquet_write"):
                    columns = method.output_columns(result, slice(None)) + [pa.array(pngs, pa.binary())]
                    write_parquet_atomic(
                        pa.Table.from_arrays(columns, schema=schema), Path(tmp) / f"p{i}.parquet"
                    )
        return {name: round(s / n * 1e3, 3) for name, s in timer.seconds.items()}

    # ---- job mode -----------------------------------------------------------------------------------

    @property
    def job_rows(self) -> int:
        return self.config.job_rows or self.config.job_batches * self.cell.batch_size

    def _job_meter(self) -> Meter:
        cell, bench, spec = self.cell, self.bench, self.bench.generator.spec
        self._tmp = tempfile.TemporaryDirectory(prefix="zsteer-bench-job-")
        root = Path(self._tmp.name)
        manifest = write_sample(
            SampleConfig(n=self.job_rows, seed=self.config.seed, out=root / "manifest.parquet", z_dim=spec.z_dim,
                         labels=spec.n_classes or None)
        )  # fmt: skip
        runs = itertools.count()
        out: list[Path] = [root / "run"]

        def prepare() -> None:  # untimed: the previous run's folder goes, a fresh one is named
            shutil.rmtree(out[0], ignore_errors=True)
            out[0] = root / f"run{next(runs)}"

        def job() -> None:
            config = JobConfig(
                manifests=(str(manifest),),
                output=OutputConfig(out=out[0], images=cell.images, workers=self.config.workers),
                models=self.config.models,
                edit=EditSpec(targets=tuple(f"{n}={w}" for n, w in bench.targets.targets)),
                method=self.method, engine=self.engine, backend=self.backend, progress_seconds=math.inf,
                handle_signals=False,
            )  # fmt: skip
            with contextlib.redirect_stderr(io.StringIO()):  # a job draws a bar on a terminal
                self.summaries.append(run_job(config).summary)

        return Meter(job, self.job_rows, self.config.control, self.clock, prepare)

    def _job_result(self, m: Measurement) -> dict:
        rows, cell = self.job_rows, self.cell
        measured = self.summaries[-m.iterations :]
        if not all(s["edited"] for s in measured):
            raise ZsteerError(
                f"--method {cell.method}: the job edited no row of a plain `zsteer sample` manifest "
                "(every row rejected); the method needs columns of its own to be benchmarked"
            )
        per_run = math.ceil(rows / cell.batch_size)
        batches = len(measured) * per_run
        seconds = {
            _JOB_STAGES[k]: sum(s["runs"][-1]["stage_seconds"].get(k, 0.0) for s in measured)
            for k in _JOB_STAGES
        }
        stages = {k: round(v / batches * 1e3, 3) for k, v in seconds.items()}
        result = _summary(
            m, cell, images=cell.images == "png", stage_ms=stages, batches_per_iteration=per_run
        )
        result["job_rows"] = rows
        result["encoder_peak_rss_mb"] = max(s["runs"][-1].get("encoder_peak_rss_mb", 0.0) for s in measured)
        return result


def _label(cell: BenchCell) -> str:
    threads = "" if cell.threads is None else f" t{cell.threads}"
    precision = "" if cell.precision == "fp32" else f" {cell.precision}"
    return (
        f"{cell.mode} {cell.backend} {cell.method} b{cell.batch_size} s{cell.steps} {cell.images} "
        f"{cell.device}{threads}{precision}"
    )


def _summary(
    m: Measurement, cell: BenchCell, images: bool, stage_ms: dict, batches_per_iteration: int = 1
) -> dict:
    """The measurement as report fields; latency is per batch (a job iteration's time over its batches)."""
    latency = {k: round(v / batches_per_iteration * 1e3, 3) for k, v in m.latency().items()}
    rate = m.throughput
    return {
        "latents_per_second": round(rate, 2),
        "images_per_second": round(rate, 2) if images else 0.0,
        "batch_latency_ms": latency,
        "stable": m.stable,
        "window_rates": [round(r, 2) for r in m.window_rates],
        "windows": len(m.windows),
        "iterations": m.iterations,
        "warmup_iterations": m.warmup_iterations,
        "first_call_seconds": round(m.first_call_seconds, 3),
        "stage_ms_per_batch": stage_ms,
    }


def _with_roofline(result: dict, flops: float | None, peaks: dict) -> dict:
    result["flops_per_latent"] = flops
    achieved = flops * result["latents_per_second"] / 1e9 if flops else None
    result["achieved_gflops"] = round(achieved, 1) if achieved is not None else None
    fp32 = peaks.get("float32", {}).get("gflops")
    result["peak_fp32_gflops"] = fp32
    result["roofline_fraction"] = round(achieved / fp32, 4) if achieved and fp32 else None
    return result


_ERRORS = (ZsteerError, ImportError, RuntimeError, ValueError, OSError)


def _error(exc: BaseException) -> dict:
    return {"error": " ".join(str(exc).split()) or type(exc).__name__}


def _run_cells(bench: _Bench, cells: tuple[BenchCell, ...]) -> list[tuple[BenchCell, dict]]:
    """Measure ``cells`` taking turns window by window (one cell: simply one after the other)."""
    runs: dict[BenchCell, _CellRun] = {}
    results: dict[BenchCell, dict] = {}
    try:
        for cell in cells:
            bench.progress(f"{_label(cell)}: starting")
            try:
                runs[cell] = bench.open(cell)
                runs[cell].start()
            except _ERRORS as exc:
                results[cell] = _error(exc)
                bench.progress(f"{_label(cell)}: done")
        while any(not run.meter.finished for cell, run in runs.items() if cell not in results):
            for cell, run in runs.items():
                if cell in results or run.meter.finished:
                    continue
                try:
                    run.window()
                except _ERRORS as exc:
                    results[cell] = _error(exc)
                    bench.progress(f"{_label(cell)}: done")
        for cell, run in runs.items():
            if cell not in results:
                try:
                    results[cell] = run.finish()
                except _ERRORS as exc:
                    results[cell] = _error(exc)
                bench.progress(f"{_label(cell)}: done")
    finally:
        for run in runs.values():
            run.close()
    return [(cell, results[cell]) for cell in cells]


def run_bench(config: BenchConfig, progress: Progress | None = None) -> dict:
    """Measure every cell of ``config``; the report (``report.py`` writes it as JSON, CSV, Markdown).

    A cell that cannot run (a backend not installed, a device missing) is reported with its error and the
    others still run.
    """
    bench = _Bench(config, progress)
    results = [_run_cells(bench, config.cells)] if config.interleave else [
        _run_cells(bench, (cell,)) for cell in config.cells
    ]  # fmt: skip
    cells = [{"cell": c.settings(), "result": r} for part in results for c, r in part]
    control = asdict(config.control)
    return {
        "format": FORMAT,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(sorted({c.device for c in config.cells})),
        "settings": {
            "control": control,
            "seed": config.seed,
            "targets": [f"{n}={w}" for n, w in bench.targets.targets],
            "generator": {"path": str(bench.generator.path), "fingerprint": bench.generator.fingerprint},
            "classifier": {"path": str(bench.classifier.path), "fingerprint": bench.classifier.fingerprint},
            "job_rows": config.job_rows,
            "job_batches": config.job_batches,
            "workers": config.workers,
            "impl": config.impl,
            "onnx_dir": None if config.onnx_dir is None else str(config.onnx_dir),
            "peak_seconds": config.peak_seconds,
            "stage_iterations": config.stage_iterations,
            "interleave": config.interleave,
        },
        "matmul_peak": bench.peaks,
        "cells": cells,
    }
