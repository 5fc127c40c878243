"""The job folder on disk and its commit protocol.

    OUT/job.json            identity (settings, model fingerprints, inputs, version) + runtime settings
    OUT/duplicates.npz      the ids that occur more than once in the inputs (duplicates.py)
    OUT/parts/part-F-G-C-K.parquet       edited rows of unit F:G:C (file, row group, chunk), shard K
    OUT/rejects/rejects-F-G-C-K.parquet  rejected rows of unit F:G:C, shard K
    OUT/commits/commit-F-G-C.json        unit F:G:C's completion marker: its parts, rejects and counts
    OUT/summary.json        counts, stop reasons, stage times, throughput, peak memory
    OUT/.lock               flock held by the running job

Every file is written under a temporary name and renamed into place. A unit's marker is written last,
after the files it names are in place. On start, files that no marker names (a crash between a rename
and its marker) are deleted, and the units that have no marker are done again: every row ends up
exactly once in parts/ or rejects/. Markers are keyed by unit, so workers that commit different units
never share a counter or a file (docs/ARCHITECTURE.md, "Exactly once").
File names come from the unit's counters only, never from row ids.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from zsteer.core.errors import ZsteerError

from .lock import LOCK_NAME

JOB_JSON, SUMMARY_JSON = "job.json", "summary.json"
PARTS, REJECTS, COMMITS = "parts", "rejects", "commits"
TMP_PREFIX = ".tmp-"
DUPLICATES = "duplicates.npz"
_COMMIT_NAME = re.compile(r"commit-(\d{6,})-(\d{6,})-(\d{6,})\.json")


def unit_stem(key: str) -> str:
    """ "F:G:C" -> "FFFFFF-GGGGGG-CCCCCC": the counters of a unit, as its files name them (sortable)."""
    return "-".join(f"{int(n):06d}" for n in key.split(":"))


@dataclass
class Commit:
    """One unit's completion marker: the unit is done, and these files hold all its rows."""

    unit: str  # unit key "file:row_group:chunk"
    parts: list[str]  # names in parts/
    rejects: list[str]  # names in rejects/
    rows: int  # rows of the units (edited + rejected)
    edited: int
    rejected: int
    stop_reasons: dict[str, int] = field(default_factory=dict)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``path`` under a temporary name in the same folder, fsync, rename into place."""
    tmp = path.with_name(TMP_PREFIX + path.name)
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """One row group per shard: shards are bounded in rows, so a reader never needs more."""
    tmp = path.with_name(TMP_PREFIX + path.name)
    pq.write_table(table, tmp, row_group_size=max(table.num_rows, 1))
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class JobFolder:
    """Paths and bookkeeping of one job folder."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.parts = self.root / PARTS
        self.rejects = self.root / REJECTS
        self.commits = self.root / COMMITS
        self.job_json = self.root / JOB_JSON
        self.summary_json = self.root / SUMMARY_JSON

    def check_fresh_or_job(self) -> None:
        """Refuse a folder that holds anything but a zsteer job: orphan cleanup deletes files there."""
        if self.job_json.exists() or not self.root.exists():
            return
        if not self.root.is_dir():
            raise ZsteerError(f"--out {self.root}: exists and is not a folder")
        allowed = {LOCK_NAME, PARTS, REJECTS, COMMITS, DUPLICATES}
        for entry in self.root.iterdir():
            if entry.name not in allowed or (entry.is_dir() and any(entry.iterdir())):
                raise ZsteerError(
                    f"--out {self.root}: not a zsteer job folder (no {JOB_JSON}, holds {entry.name!r}); "
                    "choose a new or empty folder"
                )

    def make(self) -> None:
        for path in (self.parts, self.rejects, self.commits):
            path.mkdir(parents=True, exist_ok=True)

    def read_job(self, hint: str = "choose another --out") -> dict | None:
        """job.json as a dict (None if there is none); anything else is a one-line error ending in ``hint``."""
        if not self.job_json.exists():
            return None
        try:
            doc = json.loads(self.job_json.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
            raise ZsteerError(f"{self.job_json}: unreadable ({exc}); {hint}") from None
        if not isinstance(doc, dict):
            raise ZsteerError(f"{self.job_json}: expected a JSON object, found {type(doc).__name__}; {hint}")
        return doc

    def write_job(self, doc: dict) -> None:
        write_json_atomic(self.job_json, doc)

    def load_commits(self) -> list[Commit]:
        """Commit markers in order. A marker is renamed into place whole, so every one is complete."""
        commits = []
        for path in sorted(self.commits.glob("commit-*.json")):  # sorted by unit: job order
            if not _COMMIT_NAME.fullmatch(path.name):
                continue
            try:
                commits.append(Commit(**json.loads(path.read_text(encoding="utf-8"))))
            except (json.JSONDecodeError, UnicodeDecodeError, TypeError, OSError) as exc:
                raise ZsteerError(
                    f"{path}: damaged completion marker ({exc}); the job folder was edited"
                ) from None
        return commits

    def remove_orphans(self, commits: list[Commit]) -> int:
        """Delete files of parts/, rejects/, commits/ that no commit names (left by a crash)."""
        keep = {self.marker(c.unit) for c in commits}
        keep |= {self.parts / name for c in commits for name in c.parts}
        keep |= {self.rejects / name for c in commits for name in c.rejects}
        removed = 0
        for folder in (self.parts, self.rejects, self.commits):
            for path in folder.iterdir():
                if path.is_file() and path not in keep:
                    path.unlink()
                    removed += 1
        return removed

    def marker(self, unit_key: str) -> Path:
        return self.commits / f"commit-{unit_stem(unit_key)}.json"

    def commit(self, commit: Commit) -> None:
        """Make ``commit`` durable: its files are in place and fsynced; the marker goes last."""
        for folder in (self.parts, self.rejects):
            _fsync_dir(folder)
        write_json_atomic(self.marker(commit.unit), asdict(commit))
        _fsync_dir(self.commits)
