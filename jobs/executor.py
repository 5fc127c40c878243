"""The executor seam: who runs ``process_unit`` over a job's units, looked up by name in a registry.

An executor gets a ``JobWork`` (the plan, the units still to do, how to build an editor, where to commit)
and must, for every unit it finishes, call ``run_and_commit`` (``process_unit`` then ``commit_unit``) and
report what it returns with ``work.record``. It may run units in any order and anywhere: results and markers are per unit.
It stops taking new units once ``work.stopped()`` is true. Adding one: docs/ARCHITECTURE.md, "Adding an
executor".
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from zsteer.core.errors import ZsteerError
from zsteer.pipeline.editor import Editor

from .commit import UnitDone
from .folder import Commit, JobFolder
from .progress import Progress
from .rows import Unit
from .summary import RunStats
from .unit import UnitPlan


@dataclass
class JobWork:
    """One run's work, as the runner hands it to an executor."""

    plan: UnitPlan
    units: list[Unit]  # to do, in job order
    make_editor: Callable[[], Editor]  # builds the job's editor (once per worker: it loads the models)
    folder: JobFolder
    rows_per_shard: int  # most rows per output file
    png_workers: int  # PNG encoder processes per worker (0: inline)
    on_commit: Callable[[Commit], None]  # called (from any thread) with each durable commit
    stats: RunStats  # per-stage seconds and counts of this run (thread-safe)
    progress: Progress  # rows done (thread-safe)
    stopped: Callable[[], bool]  # a signal asked the run to stop: take no new unit, drop unfinished ones
    # The job's --device, for a worker to check it can use it when it starts (the driver may have none).
    device: str = "cpu"

    def record(self, done: UnitDone) -> None:
        """Account a committed unit, the same whichever executor ran it: its stage seconds, counts and
        encoder peak into this run's stats, then ``on_commit`` (callable from any thread)."""
        for stage, seconds in done.seconds.items():
            self.stats.add(stage, seconds)
        self.stats.encoder_peak(done.encoder_peak_mb)
        self.stats.count(edited=done.commit.edited, rejected=done.commit.rejected)
        self.on_commit(done.commit)


class Executor(Protocol):
    def check(self, config) -> None:
        """Refuse (ZsteerError, one line) job settings it cannot honour; called before anything is written.
        Whether --device can be used is checked here, where the editor will run (not on the driver)."""
        ...

    def run(self, work: JobWork) -> None:
        """Run ``work.units``; returns when each is committed or dropped (stopped), raises what failed."""
        ...


# name -> "module:attribute" of an executor class (constructed with its options).
EXECUTORS: dict[str, str] = {
    "local": "zsteer.jobs.local:LocalExecutor",
    "ray": "zsteer.jobs.ray_executor:RayExecutor",
}


def executor_class(name: str) -> type:
    try:
        module, attr = EXECUTORS[name].split(":")
    except KeyError:
        raise ZsteerError(f"--executor {name}: unknown executor; known: {', '.join(EXECUTORS)}") from None
    return getattr(importlib.import_module(module), attr)


def make_executor(config) -> Executor:
    """The executor ``config`` (a JobConfig) names, built with its options and checked against the job."""
    cls = executor_class(config.executor)
    try:
        executor = cls(**dict(config.executor_options))
    except (TypeError, ValueError) as exc:
        raise ZsteerError(f"--executor {config.executor}: {exc}") from None
    executor.check(config)
    return executor
