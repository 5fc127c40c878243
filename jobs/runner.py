"""The edit job: plan it, check it against job.json, then hand its units to an executor.

    prepare_job    models, manifest plan, targets, identity: every check before anything is written
    run_job        the lock, the resume check, job.json, the duplicate index, the units still to do
    executor       runs process_unit + commit_unit over those units (jobs/local.py: threads here)
    summary        totals from the commit markers, this run's stage times, written at the end

A unit's work is the plain function ``unit.process_unit``; the runner holds no per-row state of its own,
so what a row becomes depends on the row and the job's settings only (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import json
import logging
import signal
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from zsteer.core.errors import ZsteerError
from zsteer.pipeline.checkpoints import LoadedModel
from zsteer.pipeline.editor import Editor
from zsteer.pipeline.loading import load_models

from .config import JobConfig
from .device import parse_device
from .duplicates import DuplicateIndex, find_duplicates
from .executor import Executor, JobWork, make_executor
from .folder import DUPLICATES, JobFolder
from .identity import differences, job_identity
from .lock import job_lock
from .manifest import ManifestPlan, ModelShape, plan_manifest
from .method import check_method, check_registered, needs_targets, prepare_method, replaced_columns
from .progress import Progress
from .rows import RowDefaults, plan_units
from .signals import StopFlag
from .sources import resolve_manifests
from .storage import check_writable, locate, storage_of
from .summary import RunStats, write_summary
from .targets import JobTargets, resolve_job_targets
from .unit import UnitPlan, output_schema
from .verify import Problem, check_commit

log = logging.getLogger("zsteer.jobs")
DAMAGED_LINES = 5  # damaged units said one line each on resume; beyond, one line counts the rest
# (generator, classifier) -> the Editor of the job; default: the method's, on the configured backend.
EditorFactory = Callable[[LoadedModel, LoadedModel], Editor]


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
class PreparedJob:
    """A job checked against its inputs and models, nothing written yet."""

    folder: JobFolder
    plan: ManifestPlan
    shape: ModelShape
    generator: LoadedModel
    classifier: LoadedModel
    targets: JobTargets
    identity: dict
    runtime: dict
    executor: Executor  # built and checked against the job's settings before anything is written


def prepare_job(config: JobConfig) -> PreparedJob:
    """Every check that needs no lock: folder kind, method, models, manifest schemas, targets, device.

    The models are loaded on the CPU here whatever --device says (identity, fingerprints, the duplicate
    scan need no GPU), so a driver without CUDA can run a job on GPU workers."""
    folder = JobFolder(locate(config.output.out, "--out"))
    check_writable(folder.root)
    folder.check_fresh_or_job()
    check_registered(config.method)
    parse_device(config.engine.device)  # whether CUDA is there is the executor's check (where it runs)
    executor = make_executor(config)
    generator, classifier = load_models(config.models)
    shape = ModelShape(generator.spec.z_dim, generator.spec.n_classes, classifier.attributes)
    method = config.method
    outputs = tuple(f.name for f in method.output_fields(shape.z_dim, len(shape.attributes))) + ("image",)
    # An override column the method writes again (the value it applied) is read, not a clash.
    replaced = replaced_columns(method, shape.z_dim, len(shape.attributes))
    outputs = tuple(name for name in outputs if name not in replaced)
    plan = plan_manifest(
        resolve_manifests(config.manifests, exclude=folder.root), shape, method.row_columns, outputs
    )
    check_method(method, plan, shape, folder.root)  # before job.json: a refused job leaves nothing behind
    targets = resolve_job_targets(
        config.edit.targets,
        config.edit.preserve,
        shape.attributes,
        plan.has_targets or not needs_targets(method),
    )
    identity = job_identity(
        plan, generator, classifier, list(targets.targets), list(targets.preserve) if targets.preserve else None,
        method, config.output.images, config.unit_rows,
    )  # fmt: skip
    if config.engine.precision != "fp32":  # bf16 moves results beyond rounding (EngineConfig.precision)
        identity["precision"] = config.engine.precision
    runtime = {
        "engine": asdict(config.engine),
        "backend": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config.backend).items()},
        "executor": config.executor,
        "executor_options": {k: v for k, v in config.executor_options},
        "rows_per_shard": config.output.rows_per_shard,
        "workers": config.output.workers,
        "read_rows": config.read_rows,
        "generator_path": generator.path,
        "classifier_path": classifier.path,
    }
    return PreparedJob(folder, plan, shape, generator, classifier, targets, identity, runtime, executor)


def unit_plan(config: JobConfig, prep: PreparedJob, duplicates: DuplicateIndex) -> UnitPlan:
    """What every unit of this job is processed with."""
    images = config.output.images == "png"
    # What the method builds once per job before any unit (interpolation's id_to lookup).
    method = prepare_method(config.method, prep.plan, prep.shape, prep.folder.root)
    defaults = RowDefaults(
        prep.targets.weights, prep.targets.preserve_mask, method.default_steps, method.default_stop_prob
    )
    return UnitPlan(
        manifest=prep.plan, shape=prep.shape, defaults=defaults, method=method, duplicates=duplicates,
        schema=output_schema(prep.plan.carried, method, prep.shape, images), images=images,
        batch_size=config.engine.batch_size, read_rows=config.read_rows,
    )  # fmt: skip


def _duplicates(folder: JobFolder, plan: ManifestPlan) -> DuplicateIndex:
    """The job's duplicate index: read back on a resume (job.json pins the inputs), else built and saved."""
    path = folder.root / DUPLICATES
    if folder.exists(path):
        try:
            return DuplicateIndex.load(path)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("%s: unreadable (%s); scanning the inputs' ids again", path, exc)
    index = find_duplicates(plan, folder.root if isinstance(folder.root, Path) else None)
    index.save(path)
    return index


def run_job(config: JobConfig, editor_factory: EditorFactory | None = None) -> JobResult:
    """Run (or resume) the job ``config`` describes; user errors raise ZsteerError before any work.

    ``editor_factory(generator, classifier)`` builds what edits the rows; by default the method's editor
    on ``config.backend``.
    """
    prep = prepare_job(config)
    folder = prep.folder
    with job_lock(folder.root):
        old = folder.read_job()
        if old is not None:
            _check_inputs_there(folder, old.get("identity"), prep.identity)
            diff = differences(old.get("identity", {}), prep.identity)
            if diff:
                shown = "; ".join(diff[:3]) + (f"; and {len(diff) - 3} more" if len(diff) > 3 else "")
                raise ZsteerError(
                    f"--out {folder.root}: this job was started with other settings ({shown}); "
                    "resume with the same settings, or choose another --out"
                )
        folder.make()
        folder.write_job({"identity": prep.identity, "runtime": prep.runtime})
        try:
            return _start(config, prep, editor_factory)
        except ZsteerError:
            if old is None:  # this run made the job: a refusal before any unit wrote leaves no job behind
                folder.forget_new_job()
            raise


def _start(config: JobConfig, prep: PreparedJob, editor_factory: EditorFactory | None) -> JobResult:
    """The units still to do, after job.json: resume bookkeeping, then one run (``_run``)."""
    folder = prep.folder
    units = plan_units(prep.plan, config.unit_rows)
    commits = _intact(folder, folder.load_commits(), {u.key: u.n_rows for u in units})
    removed = folder.remove_orphans(commits)
    done = {c.unit for c in commits}
    todo = [u for u in units if u.key not in done]
    previous = _previous_runs(folder)
    if commits:
        log.info(
            "resuming %s: %d of %d units done%s",
            folder.root, len(units) - len(todo), len(units),
            f", removed {removed} file(s) that no marker names" if removed else "",
        )  # fmt: skip
    if not todo:  # a run killed right after its last commit leaves no summary: write it now
        log.info("nothing to do: every unit of %s is committed", folder.root)
        run = RunStats().as_dict("complete")
        summary = write_summary(folder, commits, prep.plan.num_rows, len(units), run, previous)
        return JobResult(folder.root, "complete", None, summary)
    plan = unit_plan(config, prep, _duplicates(folder, prep.plan))
    return _run(config, prep, plan, commits, todo, len(units), previous, editor_factory)


def _check_inputs_there(folder: JobFolder, old, new: dict) -> None:
    """An input the job started with that is gone is said as such, with what to do, rather than as a
    list of its recorded size, time and footer against nothing."""
    before = old.get("inputs") if isinstance(old, dict) else None
    if not isinstance(before, dict):
        return
    missing = [path for path in before if path not in new["inputs"] and not _exists(path)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ZsteerError(
            f"{missing[0]}: an input of the job in {folder.root} is missing{more} (moved or deleted); the "
            "rows of its units come from it: put it back at that path to resume, or start a new job with "
            "another --out"
        )


def _exists(text: str) -> bool:
    """Whether an input job.json recorded (a path or a URI) is there."""
    try:
        where = locate(text, "input")
        return storage_of(where).stat(where) is not None
    except (ZsteerError, OSError):
        return False


def _intact(folder: JobFolder, commits: list, unit_rows: dict[str, int]) -> list:
    """The commits of this job's units (``unit_rows``: key -> rows) whose files are all there with the
    size and sha256 their marker recorded. A damaged unit's marker is withdrawn (one line each), so the
    unit is done again and the summary counts only rows that are in the output; so is a marker of a unit
    the job does not have, or of another row count (copied in from another job)."""
    intact, damaged = [], 0
    for commit in commits:
        marker = folder.marker(commit.unit)
        if commit.unit not in unit_rows:
            problems = [Problem(marker, "names a unit this job does not have (copied from another job?)")]
        elif commit.rows != unit_rows[commit.unit]:
            problems = [Problem(marker, f"counts {commit.rows} rows, the unit has {unit_rows[commit.unit]}")]
        else:
            problems = check_commit(folder, commit)
        if not problems:
            intact.append(commit)
            continue
        damaged += 1
        if damaged <= DAMAGED_LINES:
            more = f" (and {len(problems) - 1} more of its files)" if len(problems) > 1 else ""
            log.warning(
                "%s: %s%s: rows that unit %s committed would be lost, so the unit will be done again",
                problems[0].path, problems[0].what, more, commit.unit,
            )  # fmt: skip
        folder.drop_commit(commit)
    if damaged > DAMAGED_LINES:
        log.warning("and %d more unit(s) with damaged files, to be done again", damaged - DAMAGED_LINES)
    legacy = sum(not c.files for c in intact)
    if legacy:
        log.info(
            "%d unit(s) were committed by a zsteer without checksums: checked by their Parquet row counts only",
            legacy,
        )
    return intact


def _make_editor(config: JobConfig, prep: PreparedJob, method, editor_factory: EditorFactory | None):
    """What builds the job's editor in each worker: ``method`` is the prepared one (``UnitPlan.method``),
    so its editor knows what ``prepare`` learnt of the manifest (interpolation: whether classes blend)."""

    def make() -> Editor:
        try:
            if editor_factory is not None:
                return editor_factory(prep.generator, prep.classifier)
            return method.make_editor(prep.generator, prep.classifier, config.engine, config.backend)
        except (ValueError, TypeError) as exc:  # e.g. channels the classifier cannot read
            raise ZsteerError(f"{prep.classifier.path}: does not fit the generator: {exc}") from None

    return make


def _run(config, prep, plan, commits, todo, n_units, previous, editor_factory) -> JobResult:
    """One run over the units still to do, by the configured executor."""
    commits = list(commits)
    stats = RunStats()
    progress = Progress(prep.plan.num_rows, sum(c.rows for c in commits), config.progress_seconds)
    executor = prep.executor
    stop = StopFlag(config.handle_signals)
    try:
        with stop:
            executor.run(
                JobWork(
                    plan=plan, units=todo, make_editor=_make_editor(config, prep, plan.method, editor_factory),
                    folder=prep.folder, rows_per_shard=config.output.rows_per_shard,
                    png_workers=config.output.workers, on_commit=commits.append, stats=stats,
                    progress=progress, stopped=lambda: stop.signum is not None,
                    device=config.engine.device,
                )
            )  # fmt: skip
    finally:
        progress.close()
    return _finish(prep, commits, n_units, stats, previous, stop.signum)


def _previous_runs(folder: JobFolder) -> list[dict]:
    """The runs summary.json lists (none when it is missing, unreadable, or not as zsteer writes it:
    the summary only reports them, the job's results come from the markers)."""
    try:
        runs = json.loads(folder.storage.read_bytes(folder.summary_json).decode("utf-8"))["runs"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return []
    return runs if isinstance(runs, list) and all(_is_run(r) for r in runs) else []


def _is_run(run) -> bool:
    """A run of summary.json as RunStats writes it (as far as the totals read it)."""
    number = (int, float)
    return (
        isinstance(run, dict)
        and all(isinstance(run.get(k, 0), number) for k in ("wall_seconds", "edited", "peak_rss_mb"))
        and isinstance(run.get("stage_seconds", {}), dict)
        and all(isinstance(v, number) for v in run.get("stage_seconds", {}).values())
    )


def _finish(prep, commits, n_units, stats, previous, signum: int | None) -> JobResult:
    folder = prep.folder
    if not folder.renames:  # the strays of units committed in this run (JobFolder.remove_orphans)
        folder.remove_orphans(commits)
    done = len(commits) == n_units
    if done:  # a signal that came after the last batch stopped nothing: the job is complete
        signum = None
    status = "interrupted" if signum is not None else "complete"
    summary = write_summary(
        folder,
        commits,
        prep.plan.num_rows,
        n_units,
        stats.as_dict(status),
        previous,
    )
    if signum is not None:
        log.warning(
            "stopped by %s: %d of %d units committed; run the same command again to resume",
            signal.Signals(signum).name, summary["units_done"], n_units,
        )  # fmt: skip
    else:
        log.info(
            "done: %d rows: %d edited, %d rejected -> %s (%.1f s, %.1f latents/s)",
            summary["rows_done"],
            summary["edited"],
            summary["rejected"],
            folder.root,
            stats.wall,
            stats.edited / max(stats.wall, 1e-9),
        )  # fmt: skip (this run's own time and rate; the summary's figures are job totals)
    return JobResult(folder.root, status, signum, summary)
