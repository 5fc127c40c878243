"""The job folder on disk and its commit protocol.

    OUT/job.json            identity (settings, model fingerprints, inputs, version) + runtime settings
    OUT/duplicates.npz      the ids that occur more than once in the inputs (duplicates.py)
    OUT/parts/part-F-G-C-K.parquet       edited rows of unit F:G:C (file, row group, chunk), shard K
    OUT/rejects/rejects-F-G-C-K.parquet  rejected rows of unit F:G:C, shard K
    OUT/commits/commit-F-G-C.json        unit F:G:C's completion marker: its parts, rejects, counts, and
                                         the size and sha256 of each file it names
    OUT/summary.json        counts, stop reasons, stage times, throughput, peak memory
    OUT/.lock               flock held by the running job

Every file is written under a temporary name and renamed into place. A unit's marker is written last,
after the files it names are in place. On start, files that no marker names (a crash between a rename
and its marker) are deleted, and the units that have no marker are done again: every row ends up
exactly once in parts/ or rejects/. A marker names only plain file names of its own unit (checked when
read: a marker naming anything else is refused, so a resume never opens a path outside the folder), and
it records each file's size and sha256, so a resume (and `zsteer verify`) can tell a committed file that
was later deleted, truncated or altered (jobs/verify.py). Markers are keyed by unit, so workers that
commit different units never share a counter or a file (docs/ARCHITECTURE.md, "Exactly once").
File names come from the unit's counters only, never from row ids.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
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
_COMMIT_NAME = re.compile(r"commit-(\d{6,}-\d{6,}-\d{6,})\.json")
_SHARD_NAME = {PARTS: "part-{stem}-{k:03d}.parquet", REJECTS: "rejects-{stem}-{k:03d}.parquet"}
_SHARD_PATTERN = {PARTS: r"part-{stem}-\d{{3,}}\.parquet", REJECTS: r"rejects-{stem}-\d{{3,}}\.parquet"}
# A marker lists a unit's shards (unit_rows / rows_per_shard of them, ~150 bytes each): a few kB, 150 MB at
# the very most (a million-row unit in one-row shards).
# One larger was not written by zsteer, and is refused before it is read into memory.
MAX_MARKER_BYTES = 256 << 20
HASH_CHUNK = 1 << 20  # bytes hashed at a time: a shard is never held in memory to be checked


def unit_stem(key: str) -> str:
    """ "F:G:C" -> "FFFFFF-GGGGGG-CCCCCC": the counters of a unit, as its files name them (sortable)."""
    return "-".join(f"{int(n):06d}" for n in key.split(":"))


def shard_name(kind: str, unit_key: str, k: int) -> str:
    """The name of shard ``k`` of a unit in parts/ (kind PARTS) or rejects/ (kind REJECTS)."""
    return _SHARD_NAME[kind].format(stem=unit_stem(unit_key), k=k)


@dataclass(frozen=True)
class FileCheck:
    """What a marker records of each file it names, to tell it from a damaged or replaced one."""

    bytes: int  # size: a truncated or extended file is found by a stat alone
    sha256: str  # hex digest of the whole file: any altered byte


def file_check(path: Path) -> FileCheck:
    """Size and sha256 of ``path``, read in chunks (about 1 GB/s: docs/NOTES.md, "Checksums of committed shards")."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(HASH_CHUNK), b""):
            digest.update(chunk)
            size += len(chunk)
    return FileCheck(size, digest.hexdigest())


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
    # name -> {"bytes": size, "sha256": hex} of every file in parts and rejects. Empty in markers of
    # zsteer before checksums: their files are checked by their Parquet row counts only (jobs/verify.py).
    files: dict[str, dict] = field(default_factory=dict)
    # Rows in the unit's parts where its method writes several per edited row (an alpha strip,
    # interpolation frames); None = one per edited row, so ``edited``.
    output_rows: int | None = None

    def paths(self, folder: JobFolder) -> list[tuple[Path, str]]:
        """(path, name) of every file the marker names, parts first."""
        return [(folder.parts / n, n) for n in self.parts] + [(folder.rejects / n, n) for n in self.rejects]


class MarkerError(ZsteerError):
    """A completion marker that zsteer did not write as it is (edited, or damaged on disk)."""


def _marker_error(path: Path, what: str) -> MarkerError:
    return MarkerError(
        f"{path}: {what}; the job folder was edited or damaged: delete this marker to have its unit "
        "done again (`zsteer verify` lists what else is wrong)"
    )


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def parse_commit(path: Path, doc) -> Commit:
    """A marker's JSON as a Commit, every field checked: types, counts that add up, and file names that
    are plain names of this unit's shards (a marker naming ``../x`` or ``/etc/passwd`` is refused, so
    nothing outside parts/ and rejects/ is ever opened or deleted)."""
    match = _COMMIT_NAME.fullmatch(path.name)
    if not isinstance(doc, dict):
        raise _marker_error(path, f"expected a JSON object, found {type(doc).__name__}")
    unit = doc.get("unit")
    if (
        not isinstance(unit, str)
        or not re.fullmatch(r"\d+:\d+:\d+", unit)
        or (match and unit_stem(unit) != match.group(1))
    ):
        raise _marker_error(path, f"'unit' is {unit!r}, not the unit its name says")
    stem = unit_stem(unit)
    for kind, key in ((PARTS, "parts"), (REJECTS, "rejects")):
        names = doc.get(key)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise _marker_error(path, f"{key!r} must be a list of file names")
        pattern = re.compile(_SHARD_PATTERN[kind].format(stem=stem))
        bad = next((n for n in names if not pattern.fullmatch(n)), None)
        if bad is not None:
            raise _marker_error(
                path,
                f"names {bad!r}, not a file of unit {unit} in {kind}/ (refused: only plain names are read)",
            )
    counts = {k: doc.get(k) for k in ("rows", "edited", "rejected")}
    if (
        not all(_is_count(v) for v in counts.values())
        or counts["rows"] != counts["edited"] + counts["rejected"]
    ):
        raise _marker_error(path, f"counts {counts} are not whole numbers that add up")
    reasons = doc.get("stop_reasons", {})
    if not isinstance(reasons, dict) or not all(
        isinstance(k, str) and _is_count(v) for k, v in reasons.items()
    ):
        raise _marker_error(path, "'stop_reasons' must map reasons to counts")
    files = doc.get("files", {})
    named = set(doc["parts"]) | set(doc["rejects"])
    if not isinstance(files, dict) or (files and set(files) != named):
        raise _marker_error(path, "'files' must give a size and checksum for each file it names")
    for name, check in files.items():
        if not (
            isinstance(check, dict)
            and _is_count(check.get("bytes"))
            and isinstance(check.get("sha256"), str)
            and re.fullmatch(r"[0-9a-f]{64}", check["sha256"])
        ):
            raise _marker_error(path, f"the size or sha256 of {name!r} is not valid")
    output_rows = doc.get("output_rows")
    if output_rows is not None and not _is_count(output_rows):
        raise _marker_error(path, f"'output_rows' is {output_rows!r}, not a count")
    unknown = set(doc) - {f for f in Commit.__dataclass_fields__}
    if unknown:
        raise _marker_error(path, f"unknown field {sorted(unknown)[0]!r}")
    return Commit(
        unit=unit, parts=list(doc["parts"]), rejects=list(doc["rejects"]), rows=counts["rows"],
        edited=counts["edited"], rejected=counts["rejected"], stop_reasons=dict(reasons), files=dict(files),
        output_rows=output_rows,
    )  # fmt: skip


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """OS errors inside name ``path``: pyarrow's write errors (a full disk, a size limit) carry no file
    name, and the CLI prints an OSError as ``FILE: reason`` (cli/main.py)."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None:
            raise
        lines = str(exc).strip().splitlines()
        reason = exc.strerror or (lines[0] if lines else type(exc).__name__)
        raise OSError(exc.errno, reason, str(path)) from exc


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``path`` under a temporary name in the same folder, fsync, rename into place."""
    tmp = path.with_name(TMP_PREFIX + path.name)
    with naming(path), open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def write_parquet_atomic(table: pa.Table, path: Path) -> FileCheck:
    """One row group per shard: shards are bounded in rows, so a reader never needs more. Returns the
    size and sha256 of the file as written (read back from the page cache: a few ms a shard)."""
    tmp = path.with_name(TMP_PREFIX + path.name)
    with naming(path):
        pq.write_table(table, tmp, row_group_size=max(table.num_rows, 1))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        check = file_check(tmp)
    os.replace(tmp, path)
    return check


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
            if path.is_symlink():  # files there that no marker names are deleted: never follow a link
                raise ZsteerError(
                    f"{path}: a link to {os.readlink(path)}, where the job keeps only its own files (it "
                    "deletes the ones no marker names); make it a folder of the job and run the same command again"
                )
            if path.exists() and not path.is_dir():
                raise ZsteerError(
                    f"{path}: expected a folder of the job, found a file (the job folder was edited); "
                    "move it away and run the same command again"
                )
            path.mkdir(parents=True, exist_ok=True)

    def read_job(self, hint: str = "choose another --out") -> dict | None:
        """job.json as a dict (None if there is none); anything else is a one-line error ending in ``hint``."""
        if not self.job_json.exists():
            return None
        try:
            doc = json.loads(self.job_json.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, OSError) as exc:
            raise ZsteerError(f"{self.job_json}: unreadable ({_reason(exc)}); {hint}") from None
        if not isinstance(doc, dict):
            raise ZsteerError(f"{self.job_json}: expected a JSON object, found {type(doc).__name__}; {hint}")
        return doc

    def write_job(self, doc: dict) -> None:
        write_json_atomic(self.job_json, doc)

    def load_commits(self) -> list[Commit]:
        """Commit markers in order, each checked (``parse_commit``); a marker that is not as zsteer
        wrote it is a one-line MarkerError. A marker is renamed into place whole, so a crash never
        leaves half of one."""
        return [self.read_marker(path) for path in self.marker_paths()]

    def marker_paths(self) -> list[Path]:
        """Paths of the completion markers, sorted by unit: job order."""
        return sorted(p for p in self.commits.glob("commit-*.json") if _COMMIT_NAME.fullmatch(p.name))

    def read_marker(self, path: Path) -> Commit:
        """One marker, checked (``parse_commit``); raises a one-line MarkerError."""
        try:
            if path.stat().st_size > MAX_MARKER_BYTES:
                raise _marker_error(path, f"{path.stat().st_size} bytes, more than a marker ever holds")
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, OSError) as exc:
            raise _marker_error(path, f"not readable JSON ({_reason(exc)})") from None
        return parse_commit(path, doc)

    def drop_commit(self, commit: Commit) -> None:
        """Withdraw a unit's marker (its files become orphans, removed by ``remove_orphans``)."""
        self.marker(commit.unit).unlink(missing_ok=True)
        _fsync_dir(self.commits)

    def remove_orphans(self, commits: list[Commit]) -> int:
        """Delete files of parts/, rejects/, commits/ that no commit names (left by a crash). Links,
        FIFOs and such lose their name only; a folder there is not the job's to delete: one line."""
        keep = {self.marker(c.unit) for c in commits}
        keep |= {self.parts / name for c in commits for name in c.parts}
        keep |= {self.rejects / name for c in commits for name in c.rejects}
        removed = 0
        for folder in (self.parts, self.rejects, self.commits):
            for path in folder.iterdir():
                if path in keep:
                    continue
                if path.is_dir() and not path.is_symlink():
                    raise ZsteerError(
                        f"{path}: a folder where the job keeps only its own files (the job folder was "
                        "edited); move it away and run the same command again"
                    )
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


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
