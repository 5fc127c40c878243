"""`zsteer verify OUT`: check a job folder's committed files against their markers' sizes and sha256.

Imported only when named (main.LAZY_COMMANDS), like the other job commands. Exit 0 when every committed
file is as its marker recorded, 1 when any is not (each named on a line of its own), 2 on a usage error.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from zsteer.jobs.verify import verify_folder

from .paths import PathOrUri

DAMAGED_EXIT = 1


@click.command()
@click.argument("out", type=PathOrUri(file_okay=False, path_type=Path))
def verify(out):
    """Check that every file OUT's commit markers name is there, whole and unchanged (size and sha256)."""
    start = time.perf_counter()
    report = verify_folder(out)
    seconds = time.perf_counter() - start
    for problem in report.problems:
        click.echo(f"zsteer: bad: {problem.line()}", err=True)
    if report.strays:
        click.echo(
            f"zsteer: {len(report.strays)} file(s) that no marker names (left by an interrupted run; the job "
            f"removes them when it resumes), e.g. {report.strays[0]}",
            err=True,
        )
    if report.legacy:
        click.echo(
            f"zsteer: {report.legacy} unit(s) have no checksums (an older zsteer): checked by row counts only",
            err=True,
        )
    checked = (
        f"{report.units} unit(s), {report.files} file(s), {report.bytes / 1e6:.1f} MB in {seconds:.1f} s"
    )
    if report.ok:
        click.echo(f"zsteer: verified {checked}: all intact", err=True)
        return 0
    advice = (
        "restore job.json from a copy, or run the job afresh in a new folder (a rerun here is refused)"
        if report.job_json_bad
        else "run the job's `zsteer edit` command again to redo the damaged units"
    )
    click.echo(f"zsteer: verified {checked}: {len(report.problems)} bad; {advice}", err=True)
    return DAMAGED_EXIT
