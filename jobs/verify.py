"""Checking what a job folder's completion markers promise: each file they name is there and unchanged.

A marker records the size and sha256 of every file it names (folder.py). ``check_commit`` compares them
with the files on disk; a resume runs it over every marker before planning the work (runner.py) and
withdraws the marker of a damaged unit, so that unit is done again and summary.json counts only what is
really there. ``verify_folder`` is `zsteer verify OUT`: the same check over a whole folder, plus the
markers themselves and summary.json's counts, without changing anything.

Markers written before checksums (no ``files`` field) are checked by what their Parquet footers say:
each file opens and the rows add up to the marker's counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from zsteer.core.errors import ZsteerError, fault_reason

from .folder import JOB_JSON, Commit, JobFolder, MarkerError
from .storage import AnyPath, locate
from .summary import job_totals


@dataclass(frozen=True)
class Problem:
    """A file that is not what the job's markers say it is."""

    path: AnyPath
    what: str  # e.g. "missing", "2000 bytes, the marker recorded 5123"
    unit: str | None = None  # the unit whose marker names it (None: the marker itself, summary.json)

    def line(self) -> str:
        unit = f" (unit {self.unit})" if self.unit else ""
        return f"{self.path}: {self.what}{unit}"


def _footer_rows(folder: JobFolder, path: AnyPath) -> int:
    with folder.storage.parquet_file(path) as pf:
        return pf.metadata.num_rows


def check_commit(folder: JobFolder, commit: Commit, checksums: bool = True) -> list[Problem]:
    """What is wrong with the files ``commit`` names (empty: all there, sizes and checksums as recorded).

    ``checksums=False`` checks sizes only (a stat per file).
    """
    problems: list[Problem] = []
    rows = {"parts": 0, "rejects": 0}
    storage = folder.storage
    for path, name in commit.paths(folder):
        kind = path.parent.name
        try:
            info = storage.stat(path, follow_links=False, missing_ok=False)
            if info.kind != "file":  # a link, a FIFO (would block a read), a folder
                problems.append(Problem(path, "not a regular file", commit.unit))
                continue
            size = info.size
            if commit.files:
                recorded = commit.files[name]
                if size != recorded["bytes"]:
                    problems.append(
                        Problem(path, f"{size} bytes, the marker recorded {recorded['bytes']}", commit.unit)
                    )
                elif checksums and storage.file_check(path).sha256 != recorded["sha256"]:
                    problems.append(
                        Problem(path, "contents changed (sha256 differs from the marker's)", commit.unit)
                    )
            else:
                rows[kind] += _footer_rows(folder, path)
        except FileNotFoundError:
            problems.append(Problem(path, "missing", commit.unit))
        except (OSError, pa.ArrowException) as exc:
            problems.append(Problem(path, f"unreadable ({fault_reason(exc)})", commit.unit))
    if (
        not commit.files
        and not problems
        and (rows["parts"], rows["rejects"])
        != (commit.edited if commit.output_rows is None else commit.output_rows, commit.rejected)
    ):
        where = folder.marker(commit.unit)
        problems.append(
            Problem(
                where,
                f"its files hold {rows['parts']} edited and {rows['rejects']} rejected rows, the marker says "
                f"{commit.edited} and {commit.rejected}",
                commit.unit,
            )
        )
    return problems


@dataclass
class VerifyReport:
    """What `zsteer verify` found."""

    units: int = 0  # markers read
    files: int = 0  # files the markers name
    bytes: int = 0  # bytes checked
    legacy: int = 0  # markers without checksums (checked by row counts)
    problems: list[Problem] = field(default_factory=list)  # each bad file, once
    strays: list[AnyPath] = field(default_factory=list)  # files no marker names (left by an interrupted run)
    job_json_bad: bool = False  # job.json unreadable: a rerun of the job cannot redo anything, it is refused

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_folder(root: Path | str) -> VerifyReport:
    """Check job.json, every marker of the job folder ``root`` (a path or a URI), every file they name, and
    summary.json's counts."""
    folder = JobFolder(locate(root, "OUT"))
    if not folder.storage.is_file(folder.job_json):
        raise ZsteerError(f"{root}: not a zsteer job folder (no {JOB_JSON})")
    report = VerifyReport()
    try:  # the job's settings: without them the folder can be neither resumed nor drawn nor judged
        folder.read_job(hint="zsteer edit, sheet and report refuse the folder")
    except ZsteerError as exc:
        report.problems.append(Problem(folder.job_json, str(exc).removeprefix(f"{folder.job_json}: ")))
        report.job_json_bad = True
    commits: list[Commit] = []
    named: set[AnyPath] = set()
    for path in folder.marker_paths():
        named.add(path)
        try:
            commit = folder.read_marker(path)
        except MarkerError as exc:
            report.problems.append(Problem(path, str(exc).removeprefix(f"{path}: ")))
            continue
        report.units += 1
        report.legacy += not commit.files
        paths = commit.paths(folder)
        named.update(p for p, _ in paths)
        report.files += len(paths)
        report.bytes += sum(c.get("bytes", 0) for c in commit.files.values())
        report.problems += check_commit(folder, commit)
        commits.append(commit)
    for sub in (folder.parts, folder.rejects, folder.commits):
        report.strays += [
            p for p, found in folder.storage.list_folder(sub)
            if p not in named and found is not None and found.kind == "file"
        ]  # fmt: skip
    report.problems += _summary_problems(folder, commits)
    return report


def _summary_problems(folder: JobFolder, commits: list[Commit]) -> list[Problem]:
    """summary.json's counts against the markers (a unit without a marker is not in the output)."""
    path = folder.summary_json
    if not folder.storage.is_file(path):
        return []
    try:
        summary = json.loads(folder.storage.read_bytes(path).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return [Problem(path, f"unreadable ({exc})")]
    if not isinstance(summary, dict):
        return [Problem(path, "not a JSON object")]
    totals = job_totals(commits)
    keys = ("rows_done", "edited", "rejected", "units_done")
    wrong = [k for k in keys if summary.get(k) != totals[k]]
    if not wrong:
        return []
    said = ", ".join(f"{k} {summary.get(k)} (markers: {totals[k]})" for k in wrong)
    return [
        Problem(
            path, f"counts rows that are not in the output: {said}; run the job's command again to redo them"
        )
    ]
