"""The job folder on disk and its commit protocol.

    OUT/job.json            identity (settings, model fingerprints, inputs, version) + runtime settings
    OUT/duplicates.npz      the ids that occur more than once in the inputs (duplicates.py)
    OUT/lookup/             an interpolation's id_to latents (latent_lookup.py; plain paths only)
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

On an object store (``--out s3://...``, jobs/storage.py), where rename is a copy and a delete, nothing is
renamed: each file is written once, whole; a unit's shards end in a token of their attempt
(``part-F-G-C-K-<token>.parquet``), so no attempt overwrites another's; the marker is created only if
it is not there (a create-only write), so the first attempt of a unit wins and a later one
(``CommittedElsewhere``) removes its shards; and readers take the names from the markers
(``committed_parts``), never from a listing of parts/. A resume removes only the unnamed objects of
units that have a marker (a unit without one may yet be committed by a still-running zombie worker,
whose marker then names them). ``.lock`` is then a lease object (lock.py).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from zsteer.core.errors import ZsteerError, fault_reason

from .lock import LOCK_NAME
from .storage import (  # noqa: F401 (the local protocol's writers: report, bench, demo import them from here)
    TMP_PREFIX,
    AnyPath,
    FileCheck,
    StorePath,
    file_check,
    json_bytes,
    storage_of,
    write_bytes_atomic,
    write_json_atomic,
    write_parquet_atomic,
)

JOB_JSON, SUMMARY_JSON = "job.json", "summary.json"
PARTS, REJECTS, COMMITS = "parts", "rejects", "commits"
DUPLICATES, LOOKUP = "duplicates.npz", "lookup"
_COMMIT_NAME = re.compile(r"commit-(\d{6,}-\d{6,}-\d{6,})\.json")
_SHARD_NAME = {PARTS: "part-{stem}-{k:03d}{token}.parquet", REJECTS: "rejects-{stem}-{k:03d}{token}.parquet"}
# A shard of a unit committed to an object store ends in its attempt's token (``attempt_token``).
_SHARD_PATTERN = {
    PARTS: r"part-{stem}-\d{{3,}}(-[0-9a-f]{{16}})?\.parquet",
    REJECTS: r"rejects-{stem}-\d{{3,}}(-[0-9a-f]{{16}})?\.parquet",
}
# A marker lists a unit's shards (unit_rows / rows_per_shard of them, ~150 bytes each): a few kB, 150 MB at
# the very most (a million-row unit in one-row shards).
# One larger was not written by zsteer, and is refused before it is read into memory.
MAX_MARKER_BYTES = 256 << 20


# The unit a file of parts/, rejects/ or commits/ belongs to: its shards, its marker, and the temporary
# file a ``file://`` marker is linked from (storage._link_create).
_UNIT_OF_NAME = re.compile(r"(?:\.tmp-[0-9a-f]+-)?(?:part|rejects|commit)-(\d{6,}-\d{6,}-\d{6,})[-.]")


def _stem_of(name: str) -> str | None:
    """The unit stem a job file's name holds (None: not a file of any unit)."""
    match = _UNIT_OF_NAME.match(name)
    return match.group(1) if match else None


def unit_stem(key: str) -> str:
    """ "F:G:C" -> "FFFFFF-GGGGGG-CCCCCC": the counters of a unit, as its files name them (sortable)."""
    return "-".join(f"{int(n):06d}" for n in key.split(":"))


def shard_name(kind: str, unit_key: str, k: int, token: str = "") -> str:
    """The name of shard ``k`` of a unit in parts/ (kind PARTS) or rejects/ (kind REJECTS); ``token``
    (``JobFolder.attempt_token``) makes it the name of one attempt of the unit on an object store."""
    return _SHARD_NAME[kind].format(stem=unit_stem(unit_key), k=k, token=token)


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

    def paths(self, folder: JobFolder) -> list[tuple[AnyPath, str]]:
        """(path, name) of every file the marker names, parts first."""
        return [(folder.parts / n, n) for n in self.parts] + [(folder.rejects / n, n) for n in self.rejects]


class MarkerError(ZsteerError):
    """A completion marker that zsteer did not write as it is (edited, or damaged on disk)."""


def _marker_error(path: AnyPath, what: str) -> MarkerError:
    return MarkerError(
        f"{path}: {what}; the job folder was edited or damaged: delete this marker to have its unit "
        "done again (`zsteer verify` lists what else is wrong)"
    )


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def parse_commit(path: AnyPath, doc) -> Commit:
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


class CommittedElsewhere(Exception):
    """The unit's marker was already there when this attempt came to create it (an object store's
    create-only write lost): another attempt committed the unit, and its marker is the one that counts."""


class JobFolder:
    """Paths and bookkeeping of one job folder, on the storage its root names (jobs/storage.py): a plain
    path (files renamed into place, directories fsynced) or a URI (whole writes, create-only markers)."""

    def __init__(self, root: AnyPath):
        self.root = root if isinstance(root, StorePath) else Path(root)
        self.storage = storage_of(self.root)
        self.parts = self.root / PARTS
        self.rejects = self.root / REJECTS
        self.commits = self.root / COMMITS
        self.job_json = self.root / JOB_JSON
        self.summary_json = self.root / SUMMARY_JSON

    @property
    def renames(self) -> bool:
        """Whether files are renamed into place (a plain path) rather than written once under names of
        their own (an object store)."""
        return self.storage.atomic_rename

    def attempt_token(self) -> str:
        """What makes the names of one attempt of a unit its own: nothing where a rename puts a file in
        place whole (a retry rewrites the same names), a random suffix on an object store (an attempt,
        or a zombie worker, never overwrites another attempt's objects)."""
        return "" if self.renames else f"-{secrets.token_hex(8)}"

    def exists(self, path: AnyPath) -> bool:
        return self.storage.stat(path) is not None

    def check_fresh_or_job(self) -> None:
        """Refuse a folder that holds anything but a zsteer job: orphan cleanup deletes files there."""
        if self.exists(self.job_json):
            return
        root = self.storage.stat(self.root)
        if root is None:
            return
        if root.kind != "folder":
            raise ZsteerError(f"--out {self.root}: exists and is not a folder")
        allowed = {LOCK_NAME, PARTS, REJECTS, COMMITS, DUPLICATES}
        for entry, found in self.storage.list_folder(self.root):
            if entry.name not in allowed or (
                found is not None and found.kind == "folder" and self.storage.list_folder(entry)
            ):
                raise ZsteerError(
                    f"--out {self.root}: not a zsteer job folder (no {JOB_JSON}, holds {entry.name!r}); "
                    "choose a new or empty folder"
                )

    def make(self) -> None:
        for path in (self.parts, self.rejects, self.commits):
            if (
                isinstance(path, Path) and path.is_symlink()
            ):  # files no marker names are deleted: never follow a link
                raise ZsteerError(
                    f"{path}: a link to {os.readlink(path)}, where the job keeps only its own files (it "
                    "deletes the ones no marker names); make it a folder of the job and run the same command again"
                )
            found = self.storage.stat(path)
            if found is not None and found.kind != "folder":
                raise ZsteerError(
                    f"{path}: expected a folder of the job, found a file (the job folder was edited); "
                    "move it away and run the same command again"
                )
            self.storage.make_folder(path)

    def read_job(self, hint: str = "choose another --out") -> dict | None:
        """job.json as a dict (None if there is none); anything else is a one-line error ending in ``hint``."""
        if not self.exists(self.job_json):
            return None
        try:
            doc = json.loads(self.storage.read_bytes(self.job_json).decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, OSError) as exc:
            raise ZsteerError(f"{self.job_json}: unreadable ({fault_reason(exc)}); {hint}") from None
        if not isinstance(doc, dict):
            raise ZsteerError(f"{self.job_json}: expected a JSON object, found {type(doc).__name__}; {hint}")
        return doc

    def forget_new_job(self) -> None:
        """Take back a job that was refused before any unit wrote a file: its job.json and what was derived
        from the inputs it pinned (the duplicate index, an interpolation's lookup), so the folder is as
        ``check_fresh_or_job`` accepts and the corrected command starts afresh instead of being refused as
        a resume with other settings. Once a unit wrote anything, the job stays as it is: resumable."""
        if any(self.storage.list_folder(path) for path in (self.parts, self.rejects, self.commits)):
            return
        self.storage.remove(self.root / DUPLICATES)
        lookup = self.root / LOOKUP
        if isinstance(lookup, Path) and lookup.is_dir():  # never on an object store (latent_lookup.py)
            shutil.rmtree(lookup)
        self.storage.remove(self.job_json)  # last: until it goes, a rerun resumes this start

    def write_job(self, doc: dict) -> None:
        self.write_json(self.job_json, doc)

    def write_json(self, path: AnyPath, doc) -> None:
        """A JSON file of the folder, whole or not at all (renamed into place, or one write)."""
        self.storage.write_bytes(path, json_bytes(doc))

    def load_commits(self) -> list[Commit]:
        """Commit markers in order, each checked (``parse_commit``); a marker that is not as zsteer
        wrote it is a one-line MarkerError. A marker is renamed into place (or created) whole, so a
        crash never leaves half of one."""
        return [self.read_marker(path) for path in self.marker_paths()]

    def marker_paths(self) -> list[AnyPath]:
        """Paths of the completion markers, sorted by unit: job order."""
        return [p for p, _ in self.storage.list_folder(self.commits) if _COMMIT_NAME.fullmatch(p.name)]

    def read_marker(self, path: AnyPath) -> Commit:
        """One marker, checked (``parse_commit``); raises a one-line MarkerError."""
        try:
            found = self.storage.stat(path, missing_ok=False)
            if found.size > MAX_MARKER_BYTES:
                raise _marker_error(path, f"{found.size} bytes, more than a marker ever holds")
            doc = json.loads(self.storage.read_bytes(path).decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, OSError) as exc:
            raise _marker_error(path, f"not readable JSON ({fault_reason(exc)})") from None
        return parse_commit(path, doc)

    def drop_commit(self, commit: Commit) -> None:
        """Withdraw a unit's marker (its files become orphans, removed by ``remove_orphans``)."""
        self.storage.remove(self.marker(commit.unit))
        self.storage.sync_folder(self.commits)

    def committed_parts(self, commits: list[Commit] | None = None) -> list[AnyPath]:
        """Every file of parts/ the markers (``commits``, default: those in commits/) name, in job order:
        the output as readers take it (``pq.ParquetDataset(files, filesystem=...)``), never a listing of
        parts/, which may hold files of an attempt that crashed or, on an object store, lost its unit."""
        commits = self.load_commits() if commits is None else sorted(commits, key=lambda c: unit_stem(c.unit))
        return [self.parts / name for commit in commits for name in commit.parts]

    def remove_orphans(self, commits: list[Commit]) -> int:
        """Delete files of parts/, rejects/, commits/ that no commit names (left by a crash, or on an
        object store by an attempt that lost its unit). Links, FIFOs and such lose their name only; a
        folder there is not the job's to delete: one line.

        On an object store only the strays of units that have a marker go: a unit with none may still be
        committed by a worker of a killed driver that is still running (a zombie), whose marker would
        then name the shards deleted here. A stray of a committed unit is never read (its marker is
        create-only, and names other objects), so removing it is for space only; the runner calls this
        again at the end of a run (``runner._finish``), for the units committed since."""
        keep = {self.marker(c.unit) for c in commits}
        keep |= {self.parts / name for c in commits for name in c.parts}
        keep |= {self.rejects / name for c in commits for name in c.rejects}
        committed = {unit_stem(c.unit) for c in commits}
        removed = 0
        for folder in (self.parts, self.rejects, self.commits):
            for path, found in self.storage.list_folder(folder, follow_links=False):
                if path in keep:
                    continue
                if found is not None and found.kind == "folder":
                    raise ZsteerError(
                        f"{path}: a folder where the job keeps only its own files (the job folder was "
                        "edited); move it away and run the same command again"
                    )
                if not self.renames and _stem_of(path.name) not in committed:
                    continue  # maybe a live attempt's: see above
                self.storage.remove(path)
                removed += 1
        return removed

    def marker(self, unit_key: str) -> AnyPath:
        return self.commits / f"commit-{unit_stem(unit_key)}.json"

    def commit(self, commit: Commit) -> None:
        """Make ``commit`` durable: its files are in place and fsynced; the marker goes last. On an object
        store the marker is created only if it is not there (a create-only write): raises
        CommittedElsewhere when another attempt of the unit created it first."""
        if self.renames:
            for folder in (self.parts, self.rejects):
                self.storage.sync_folder(folder)
            write_json_atomic(self.marker(commit.unit), asdict(commit))
            self.storage.sync_folder(self.commits)
        elif not self.storage.create_only(self.marker(commit.unit), json_bytes(asdict(commit))):
            raise CommittedElsewhere(commit.unit)
