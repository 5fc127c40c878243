"""Turning `--manifest` arguments (files, directories, globs) into one sorted list of Parquet files."""

from __future__ import annotations

import glob
from pathlib import Path

from zsteer.core.errors import ZsteerError

GLOB_CHARS = set("*?[")


def _is_hidden(path: Path, root: Path) -> bool:
    """Dot and underscore names (.tmp files, _SUCCESS, _common_metadata) are not data, as in Spark/Arrow."""
    return any(part.startswith((".", "_")) for part in path.relative_to(root).parts)


def resolve_manifests(specs: tuple[str, ...] | list[str], exclude: Path | None = None) -> list[Path]:
    """Parquet files named by ``specs``: a file as given, a directory's *.parquet (recursively), a glob;
    dot and underscore names found by a directory walk or a glob are skipped.

    The result is sorted and deduplicated by resolved path, so the same arguments always give the same
    units in the same order (what resume relies on). ``exclude`` is the job's own output folder: a job
    must not read what it writes, so files below it that a directory walk or a glob finds are skipped
    (``-m data --out data/run`` resumes), and a file below it named on its own is refused.
    """
    if not specs:
        raise ZsteerError("--manifest: give at least one Parquet file, directory or glob")
    out = exclude.resolve() if exclude is not None else None

    def outside(files: list[Path]) -> list[Path]:
        return [p for p in files if out is None or not p.resolve().is_relative_to(out)]

    found: dict[Path, None] = {}
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            files = outside([p for p in path.rglob("*.parquet") if p.is_file() and not _is_hidden(p, path)])
            if not files:
                raise ZsteerError(f"--manifest {spec}: directory holds no *.parquet files")
        elif path.exists():
            if out is not None and path.resolve().is_relative_to(out):
                raise ZsteerError(f"--manifest {spec}: is inside the output folder --out {exclude}")
            files = [path]
        elif GLOB_CHARS & set(spec):
            matches = [Path(p) for p in glob.glob(spec, recursive=True)]
            files = outside([p for p in matches if p.is_file() and not _is_hidden(p, p.parent)])
            if not files:
                raise ZsteerError(f"--manifest {spec}: the pattern matches no files")
        else:
            raise ZsteerError(f"--manifest {spec}: no such file or directory")
        for file in files:
            found.setdefault(file.resolve(), None)
    return sorted(found)
