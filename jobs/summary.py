"""summary.json: what the job did (from the commit markers, so it survives resumes) and how fast it and each run were."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import datetime, timezone

from .folder import Commit, JobFolder
from .memory import peak_rss_mb

STAGES = ("read", "compute", "encode", "write")


class RunStats:
    """This run's counts and per-stage seconds; each pipeline thread adds to its own stage."""

    def __init__(self):
        self.started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._t0 = time.perf_counter()
        self._lock = threading.Lock()
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.edited = 0
        self.rejected = 0
        self.encoder_peak_mb = 0.0  # largest peak of the PNG encoder processes (0: none ran)
        # Per-worker counts and rates of an executor with workers on other processes or nodes (ray):
        # name -> {node, units, rows, edited, seconds, latents_per_second}; empty for the local one.
        self.workers: dict[str, dict] = {}

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] += seconds

    def encoder_peak(self, mb: float) -> None:
        with self._lock:
            self.encoder_peak_mb = max(self.encoder_peak_mb, mb)

    def count(self, edited: int = 0, rejected: int = 0) -> None:
        with self._lock:
            self.edited += edited
            self.rejected += rejected

    @property
    def wall(self) -> float:
        return time.perf_counter() - self._t0

    def as_dict(self, status: str) -> dict:
        wall = self.wall
        return {
            "started_at": self.started_at,
            "status": status,
            "edited": self.edited,
            "rejected": self.rejected,
            "wall_seconds": round(wall, 3),
            "stage_seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "latents_per_second": round(self.edited / wall, 2) if wall > 0 else 0.0,
            "peak_rss_mb": peak_rss_mb(),
            "encoder_peak_rss_mb": self.encoder_peak_mb,
            **({"workers": self.workers} if self.workers else {}),
        }


def job_totals(commits: list[Commit]) -> dict:
    """Counts over every commit of the job, whichever run made it."""
    reasons: Counter[str] = Counter()
    for c in commits:
        reasons.update(c.stop_reasons)
    return {
        "rows_done": sum(c.rows for c in commits),
        "edited": sum(c.edited for c in commits),
        "rejected": sum(c.rejected for c in commits),
        "stop_reasons": dict(sorted(reasons.items())),
        "units_done": len(commits),
        "parts": sum(len(c.parts) for c in commits),
    }


def run_totals(runs: list[dict]) -> dict:
    """Stage seconds and throughput over every run of the job, peak memory the largest of any run.

    Totals, not the last run's figures: a resume that finds nothing left to do (or a short last run)
    does not hide what the job cost.
    """
    wall = sum(r.get("wall_seconds", 0.0) for r in runs)
    edited = sum(r.get("edited", 0) for r in runs)
    return {
        "wall_seconds": round(wall, 3),
        "stage_seconds": {
            k: round(sum(r.get("stage_seconds", {}).get(k, 0.0) for r in runs), 3) for k in STAGES
        },
        "latents_per_second": round(edited / wall, 2) if wall > 0 else 0.0,
        "peak_rss_mb": max((r.get("peak_rss_mb", 0.0) for r in runs), default=0.0),
    }


def write_summary(
    folder: JobFolder, commits: list[Commit], rows_in: int, units: int, run: dict, previous: list[dict]
) -> dict:
    """Write summary.json: job totals (counts, seconds, speed over every run), and every run in `runs`."""
    totals = job_totals(commits)
    runs = [*previous, run]
    doc = {
        "complete": totals["units_done"] == units,
        "rows_in": rows_in,
        "units": units,
        **totals,
        **run_totals(runs),
        "runs": runs,
    }
    folder.write_json(folder.summary_json, doc)
    return doc
