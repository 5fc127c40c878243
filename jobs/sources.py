"""Turning `--manifest` arguments (files, directories, globs) into one sorted list of Parquet files."""

from __future__ import annotations

import glob
from pathlib import Path

from zsteer.pipeline.errors import ZsteerError

GLOB_CHARS = set("*?[")


def _is_hidden(path: Path, root: Path) -> bool:
    """Dot and underscore names (.tmp files, _SUCCESS, _common_metadata) are not data, as in Spark/Arrow."""
    return any(part.startswith((".", "_")) for part in path.relative_to(root).parts)


def resolve_manifests(specs: tuple[str, ...] | list[str], exclude: Path | None = None) -> list[Path]:
    """Parquet files named by ``specs``: a file as given, a directory's *.parquet (recursively), a glob;
    dot and underscore names found by a directory walk or a glob are skipped.

    The result is sorted and deduplicated by resolved path, so the same arguments always give the same
    units in the same order (what resume relies on). Files under ``exclude`` (the job's own output
    folder) are refused: a job must not read what it writes.
    """
    if not specs:
        raise ZsteerError("--manifest: give at least one Parquet file, directory or glob")
    found: dict[Path, None] = {}
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            files = [p for p in path.rglob("*.parquet") if p.is_file() and not _is_hidden(p, path)]
            if not files:
                raise ZsteerError(f"--manifest {spec}: directory holds no *.parquet files")
        elif path.exists():
            files = [path]
        elif GLOB_CHARS & set(spec):
            matches = [Path(p) for p in glob.glob(spec, recursive=True)]
            files = [p for p in matches if p.is_file() and not _is_hidden(p, p.parent)]
            if not files:
                raise ZsteerError(f"--manifest {spec}: the pattern matches no files")
        else:
            raise ZsteerError(f"--manifest {spec}: no such file or directory")
        for file in files:
            found.setdefault(file.resolve(), None)
    paths = sorted(found)
    if exclude is not None:
        out = exclude.resolve()
        inside = [p for p in paths if p.is_relative_to(out)]
        if inside:
            raise ZsteerError(f"--manifest {inside[0]}: is inside the output folder --out {exclude}")
    return paths
