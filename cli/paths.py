"""Checks on the paths given to the commands, shared by `main` and the lazily loaded commands."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from zsteer.core.errors import ZsteerError


class PathOrUri(click.ParamType):
    """A job folder as ``--out`` / ``zsteer verify OUT`` take it: a plain path, checked and converted as
    ``click.Path(**options)`` does, or a URI (``s3://bucket/prefix``, ``file:///abs``) kept as text for
    jobs/storage.py to open (click.Path would turn ``s3://b`` into ``s3:/b``)."""

    name = "path"

    def __init__(self, **options):
        self.path = click.Path(**options)

    def convert(self, value, param, ctx):
        from zsteer.jobs.storage import is_uri  # pyarrow: only for the commands that take a job folder

        if isinstance(value, str) and is_uri(value):
            return value
        return self.path.convert(value, param, ctx)


def check_out_parent(flag: str, path: Path) -> None:
    """Refuse an output path below a file (``--out notes.txt/job``), or in a folder that cannot be written
    (read-only, no permission), before any work, naming both: a command that fails only when it writes
    its result has wasted all the work before it. A URI is checked when the job opens it."""
    if not isinstance(path, Path):
        return
    path = Path(path)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None:
        return
    if existing != path and not existing.is_dir():
        raise ZsteerError(f"{flag} {path}: {existing} is a file, not a folder")
    folder = existing if existing.is_dir() else existing.parent
    try:  # the one sure test (permissions, read-only mounts, ACLs, root): create a file there
        with tempfile.TemporaryFile(dir=folder, prefix=".zsteer-write-test-"):
            pass
    except OSError as exc:
        raise ZsteerError(
            f"{flag} {path}: cannot write in {folder} ({exc.strerror or exc}); choose a folder you can write to"
        ) from None


def check_out_file(flag: str, path: Path) -> None:
    """Refuse an output file whose folder does not exist or is a file, naming the flag and the path as
    given, then check as ``check_out_parent`` does: report writers (``--json``) do not create folders, so
    ``--json nodir/x.json`` would fail only after all the work before it."""
    if not isinstance(path, Path):
        return
    folder = Path(path).parent
    if not folder.exists():
        raise ZsteerError(f"{flag} {path}: the folder {folder} does not exist; create it or choose another")
    if not folder.is_dir():
        raise ZsteerError(f"{flag} {path}: {folder} is a file, not a folder")
    check_out_parent(flag, path)
