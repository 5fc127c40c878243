"""The edit job: read -> validate -> rebatch -> edit -> encode -> write, overlapped, resumable.

    reader thread     units (runs of rows of a row group) -> RowChunk   --read queue (bounded)-->
    main thread       rebatch to batch_size, AscentEngine.edit  --write queue (bounded)-->
    encoder processes PNG bytes per batch (futures, in order)
    writer thread     shards, rejects, commits (folder.py)

Bounded queues keep memory flat whatever the manifest size and let each stage overlap the others.
Compute stays on the main thread: signal handlers run there, between batches, which is exactly where
a stop is wanted.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from zsteer.pipeline.checkpoints import LoadedModel
from zsteer.pipeline.engine import AscentConfig, AscentEngine, EngineConfig, make_engine
from zsteer.core.errors import ZsteerError

from .batcher import Batcher, Segment, UnitEnd, gather
from .config import JobConfig
from .encode import Encoder
from .folder import Commit, JobFolder
from .identity import differences, job_identity
from .idset import IdSet, id_keys
from .lock import FolderLock
from .manifest import ID, ManifestPlan, ModelShape, plan_manifest
from .models import load_models
from .output import BatchResult, batch_table, output_schema
from .progress import Progress
from .reader import read_units
from .rows import RowDefaults, RowValidator, Unit, plan_units
from .signals import StopFlag
from .sources import resolve_manifests
from .summary import RunStats, write_summary
from .targets import JobTargets, resolve_job_targets
from .writer import ShardWriter

log = logging.getLogger("zsteer.jobs")
READ_QUEUE = 4  # chunks read ahead of the engine (read_rows rows each)
POLL_SECONDS = 0.2  # how often a thread waiting on a queue looks whether another one failed
WRITE_QUEUE = 8  # edited batches in flight between the engine and the writer (encoding included)
_END = object()  # end of a queue's stream: the writer commits what is finished and stops
_ABORT = object()  # the main thread failed: the writer stops without committing anything more
# (generator, classifier, ascent, engine config) -> an object with AscentEngine.edit's signature.
EngineFactory = Callable[[LoadedModel, LoadedModel, AscentConfig, EngineConfig], AscentEngine]


@dataclass
class JobResult:
    """How a run ended: "complete" (every unit committed) or "interrupted" (by ``signum``)."""

    out: Path
    status: str
    signum: int | None
    summary: dict

    @property
    def exit_code(self) -> int:
        """0 when complete; 128 + the signal (130 SIGINT, 143 SIGTERM) when stopped by one."""
        return 0 if self.signum is None else 128 + self.signum


@dataclass
class _Rejected:
    unit: Unit
    table: pa.Table


@dataclass
class _Edited:
    segments: list[Segment]
    result: BatchResult
    pngs: object  # something with result() -> (list[bytes], seconds), or None (images off)


@dataclass
class _Prepared:
    """A job checked against its inputs and models, nothing written yet."""

    folder: JobFolder
    plan: ManifestPlan
    generator: LoadedModel
    classifier: LoadedModel
    targets: JobTargets
    identity: dict
    runtime: dict


def _check_device(device: str) -> None:
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ZsteerError(f"--device {device}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ZsteerError(f"--device {device}: CUDA is not available in this torch build or machine")


def prepare_job(config: JobConfig) -> _Prepared:
    """Every check that needs no lock: folder kind, models, manifest schemas, targets, device."""
    folder = JobFolder(config.output.out)
    folder.check_fresh_or_job()
    _check_device(config.engine.device)
    generator, classifier = load_models(config.models)
    shape = ModelShape(generator.spec.z_dim, generator.spec.n_classes, classifier.attributes)
    plan = plan_manifest(resolve_manifests(config.manifests, exclude=folder.root), shape)
    targets = resolve_job_targets(
        config.edit.targets, config.edit.preserve, shape.attributes, plan.has_targets
    )
    identity = job_identity(
        plan, generator, classifier, list(targets.targets), list(targets.preserve) if targets.preserve else None,
        config.ascent, config.output.images, config.unit_rows,
    )  # fmt: skip
    runtime = {
        "engine": asdict(config.engine),
        "rows_per_shard": config.output.rows_per_shard,
        "flush_seconds": config.output.flush_seconds,
        "workers": config.output.workers,
        "read_rows": config.read_rows,
        "generator_path": generator.path,
        "classifier_path": classifier.path,
    }
    return _Prepared(folder, plan, generator, classifier, targets, identity, runtime)


def _rebuild_ids(folder: JobFolder, commits: list[Commit]) -> IdSet:
    """Ids accepted by committed units, read back from their shards (only the id column)."""
    ids = IdSet()
    for commit in commits:
        for name in commit.parts:
            column = pq.read_table(folder.parts / name, columns=[ID]).column(ID).combine_chunks()
            ids.add_new(id_keys(column))
    return ids


def run_job(config: JobConfig, engine_factory: EngineFactory = make_engine) -> JobResult:
    """Run (or resume) the job ``config`` describes; user errors raise ZsteerError before any work.

    ``engine_factory(generator, classifier, ascent, engine_config)`` builds what edits the batches:
    anything with AscentEngine's ``edit`` (another backend, e.g. onnxruntime, plugs in here).
    """
    prep = prepare_job(config)
    folder = prep.folder
    with FolderLock(folder.root):
        old = folder.read_job()
        if old is not None:
            diff = differences(old.get("identity", {}), prep.identity)
            if diff:
                shown = "; ".join(diff[:3]) + (f"; and {len(diff) - 3} more" if len(diff) > 3 else "")
                raise ZsteerError(
                    f"--out {folder.root}: this job was started with other settings ({shown}); "
                    "resume with the same settings, or choose another --out"
                )
        folder.make()
        folder.write_job({"identity": prep.identity, "runtime": prep.runtime})
        commits = folder.load_commits()
        removed = folder.remove_orphans(commits)
        units = plan_units(prep.plan, config.unit_rows)
        done = {key for c in commits for key in c.units}
        todo = [u for u in units if u.key not in done]
        previous = _previous_runs(folder)
        if commits:
            log.info(
                "resuming %s: %d of %d units done%s",
                folder.root, len(units) - len(todo), len(units),
                f", removed {removed} uncommitted file(s) of an interrupted run" if removed else "",
            )  # fmt: skip
        if not todo:  # a run killed right after its last commit leaves no summary: write it now
            log.info("nothing to do: every unit of %s is committed", folder.root)
            run = RunStats().as_dict("complete")
            summary = write_summary(folder, commits, prep.plan.num_rows, len(units), run, previous)
            return JobResult(folder.root, "complete", None, summary)
        return _Run(config, prep, commits, todo, len(units), previous).run(engine_factory)


def _previous_runs(folder: JobFolder) -> list[dict]:
    try:
        return json.loads(folder.summary_json.read_text())["runs"]
    except (OSError, ValueError, KeyError, TypeError):
        return []


class _Run:
    """One run of a job over its units still to do."""

    def __init__(self, config: JobConfig, prep: _Prepared, commits, todo, n_units, previous):
        self.config, self.prep = config, prep
        self.commits: list[Commit] = list(commits)
        self.todo, self.n_units, self.previous = todo, n_units, previous
        self.images = config.output.images == "png"
        self.stats = RunStats()
        self.read_q: queue.Queue = queue.Queue(READ_QUEUE)
        self.write_q: queue.Queue = queue.Queue(WRITE_QUEUE)
        self.halt = threading.Event()  # tells the reader to stop early
        self.errors: list[BaseException] = []  # raised by the reader or writer, re-raised by the main thread
        self.progress: Progress | None = None  # made when the run starts (it draws a bar)
        plan = prep.plan
        z_dim, attrs = prep.generator.spec.z_dim, prep.classifier.attributes
        self.schema = output_schema(plan.carried, z_dim, len(attrs), self.images)
        steps, p = config.ascent.steps, config.ascent.stop_at_prob
        defaults = RowDefaults(
            prep.targets.weights, prep.targets.preserve_mask, steps, math.nan if p is None else p
        )
        shape = ModelShape(z_dim, prep.generator.spec.n_classes, attrs)
        self.validator = RowValidator(plan, shape, defaults, _rebuild_ids(prep.folder, commits))

    # -- threads -------------------------------------------------------------------------------------

    def _put_read(self, item) -> bool:
        """The reader's blocking put, which gives up once the run halts (the main thread stopped reading).

        The write queue needs no such thing: the writer drains it whatever happens.
        """
        while True:
            try:
                self.read_q.put(item, timeout=POLL_SECONDS)
                return True
            except queue.Full:
                if self.halt.is_set():
                    return False

    def _read(self) -> None:
        try:
            pieces = read_units(self.prep.plan, self.todo, self.config.read_rows)
            while not self.halt.is_set():
                start = time.perf_counter()
                piece = next(pieces, None)
                if piece is None:
                    break
                if piece.fault is not None:
                    chunk = self.validator.unreadable(piece.unit, piece.offset, piece.n_rows, piece.fault)
                else:
                    chunk = self.validator.validate(piece.unit, piece.offset, piece.batch, piece.last)
                self.stats.add("read", time.perf_counter() - start)
                if not self._put_read(chunk):
                    break
        except BaseException as exc:  # handed to the main thread, which raises it
            self.errors.append(exc)
        finally:
            self._put_read(_END)

    def _write(self, shards: ShardWriter) -> None:
        msg = None
        try:
            while (msg := self.write_q.get()) is not _END and msg is not _ABORT:
                start = time.perf_counter()
                waited = 0.0
                if isinstance(msg, _Rejected):
                    shards.add_rejects(msg.unit, msg.table)
                elif isinstance(msg, UnitEnd):
                    shards.end_unit(msg.unit, msg.n_rows)
                else:
                    waited = self._write_batch(shards, msg)
                self.stats.add("write", time.perf_counter() - start - waited)
            if msg is _END:
                shards.close()
        except BaseException as exc:
            self.errors.append(exc)
            self.halt.set()
            while msg is not _END and msg is not _ABORT:  # keep draining: the main thread never blocks on us
                msg = self.write_q.get()

    def _write_batch(self, shards: ShardWriter, msg: _Edited) -> float:
        """Hand one edited batch to the shards; returns the seconds spent waiting for its PNGs."""
        pngs, waited = None, 0.0
        if msg.pngs is not None:
            start = time.perf_counter()
            pngs, seconds, peak_mb = msg.pngs.result()
            waited = time.perf_counter() - start
            self.stats.add("encode", seconds)
            if self.config.output.workers:
                self.stats.encoder_peak(peak_mb)
        carried = pa.concat_tables([s.chunk.carried.slice(s.start, s.stop - s.start) for s in msg.segments])
        table = batch_table(carried, msg.result, pngs, self.schema)
        offset = 0
        for s in msg.segments:
            shards.add_rows(s.chunk.unit, table.slice(offset, s.stop - s.start))
            offset += s.stop - s.start
            for end in s.ends:
                shards.end_unit(end.unit, end.n_rows)
        return waited

    # -- main thread ---------------------------------------------------------------------------------

    def _edit(self, engine, encoder: Encoder, segments: list[Segment]) -> None:
        n = sum(s.stop - s.start for s in segments)
        # A compiled engine gets full batches only (the job's last one padded): one shape, one compile.
        size = self.config.engine.batch_size if getattr(engine, "compiled", False) else n

        def rows(name: str):  # [size, ...] tensor of the batch, or None
            array = gather(segments, name, size)
            return None if array is None else torch.from_numpy(array)

        start = time.perf_counter()
        res = engine.edit(
            rows("z"), rows("weights"), rows("preserve"),  # [size, z_dim], [size, A], [size, A]
            labels=rows("labels"), max_steps=rows("max_steps"), stop_prob=rows("stop_prob"),  # [size] each
            render=self.images,
        )  # fmt: skip
        self.stats.add("compute", time.perf_counter() - start)
        result = BatchResult(
            res.z_edited[:n].numpy(), res.logits_before[:n].numpy(), res.logits_after[:n].numpy(),
            res.latent_shift[:n].numpy(), res.steps_taken[:n].numpy(), res.status[:n].numpy(),
        )  # fmt: skip
        pngs = encoder.submit(np.ascontiguousarray(res.images[:n].numpy())) if self.images else None
        self.write_q.put(_Edited(segments, result, pngs))
        self.stats.count(edited=n)
        self.progress.update(n)

    def _raise_errors(self) -> None:
        if self.errors:
            raise self.errors[0]

    def run(self, engine_factory: EngineFactory) -> JobResult:
        prep, config = self.prep, self.config
        try:
            engine = engine_factory(prep.generator, prep.classifier, config.ascent, config.engine)
        except (ValueError, TypeError) as exc:  # e.g. channels the classifier cannot read
            raise ZsteerError(f"{prep.classifier.path}: does not fit the generator: {exc}") from None
        shards = ShardWriter(
            prep.folder, config.output.rows_per_shard,
            config.output.flush_seconds, self.commits, on_commit=self.commits.append,
        )  # fmt: skip
        done_rows = sum(c.rows for c in self.commits)
        self.progress = Progress(prep.plan.num_rows, done_rows, config.progress_seconds)
        encoder = Encoder(config.output.workers if self.images else 0)
        reader = threading.Thread(target=self._read, name="zsteer-reader", daemon=True)
        writer = threading.Thread(target=self._write, args=(shards,), name="zsteer-writer", daemon=True)
        stop = StopFlag(config.handle_signals)
        finished = False
        try:
            with stop:
                reader.start()
                writer.start()
                self._main_loop(engine, encoder, stop)
                self.halt.set()
                self.write_q.put(_END)  # the writer commits every finished unit, then stops
                writer.join()
                self._raise_errors()
                finished = True
        finally:
            self.halt.set()
            if not finished and writer.is_alive():
                # The run failed: the abort marker goes behind what is already queued (at most the
                # queue's few batches, which the writer may still write and commit: committed is
                # committed), and after it nothing more is committed; a resume redoes the rest. The
                # writer drains its queue whatever happens, so the put gets through; joining it here,
                # inside the folder's lock, means no file is written after the lock is released.
                self.write_q.put(_ABORT)
            if writer.ident is not None:
                writer.join()
            if reader.ident is not None:  # halted, it stops at its next piece; it writes nothing
                reader.join(timeout=10)
            self.progress.close()
            encoder.close()
        return self._finish(stop.signum)

    def _main_loop(self, engine, encoder: Encoder, stop: StopFlag) -> None:
        batcher = Batcher(self.config.engine.batch_size)

        def hand_over_finished_units():
            for end in batcher.finished():
                self.write_q.put(end)

        while (chunk := self._next_chunk()) is not _END:
            if chunk.rejects is not None:
                self.write_q.put(_Rejected(chunk.unit, chunk.rejects))
                self.stats.count(rejected=chunk.rejects.num_rows)
                self.progress.update(chunk.rejects.num_rows)
            batcher.add(chunk)
            hand_over_finished_units()
            while batcher.full() and stop.signum is None:
                self._edit(engine, encoder, batcher.take())
                hand_over_finished_units()
                self._raise_errors()
            if stop.signum is not None:
                return
        self._raise_errors()
        if batcher.buffered:  # the job's last, partial batch (the engine pads it)
            self._edit(engine, encoder, batcher.take())
        hand_over_finished_units()

    def _next_chunk(self):
        """The next chunk from the reader, or _END; raises what the reader or writer raised meanwhile.

        Never a bare blocking get: a reader that gave up (the writer failed and halted the run) puts no
        _END, and waiting for one would hang the job.
        """
        while True:
            try:
                return self.read_q.get(timeout=POLL_SECONDS)
            except queue.Empty:
                self._raise_errors()

    def _finish(self, signum: int | None) -> JobResult:
        folder = self.prep.folder
        done = sum(len(c.units) for c in self.commits) == self.n_units
        if done:  # a signal that came after the last batch stopped nothing: the job is complete
            signum = None
        status = "interrupted" if signum is not None else "complete"
        summary = write_summary(
            folder,
            self.commits,
            self.prep.plan.num_rows,
            self.n_units,
            self.stats.as_dict(status),
            self.previous,
        )
        if signum is not None:
            log.warning(
                "stopped by %s: %d of %d units committed; run the same command again to resume",
                signal.Signals(signum).name, summary["units_done"], self.n_units,
            )  # fmt: skip
        else:
            log.info(
                "done: %d rows: %d edited, %d rejected -> %s (%.1f s, %.1f latents/s)",
                summary["rows_done"],
                summary["edited"],
                summary["rejected"],
                folder.root,
                self.stats.wall,
                self.stats.edited / max(self.stats.wall, 1e-9),
            )  # fmt: skip (this run's own time and rate; the summary's figures are job totals)
        return JobResult(folder.root, status, signum, summary)
