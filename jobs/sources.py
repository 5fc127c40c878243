"""Turning `--manifest` arguments (files, directories, globs; plain paths or URIs) into one sorted list of
Parquet files."""

from __future__ import annotations

import fnmatch
import glob
import re
from pathlib import Path

from zsteer.core.errors import ZsteerError

from .storage import AnyPath, StorePath, locate

GLOB_CHARS = set("*?[")


def _is_hidden(path: Path, root: Path) -> bool:
    """Dot and underscore names (.tmp files, _SUCCESS, _common_metadata) are not data, as in Spark/Arrow."""
    return any(part.startswith((".", "_")) for part in path.relative_to(root).parts)


def _glob_regex(pattern: str) -> re.Pattern:
    """A glob as ``glob.glob(recursive=True)`` reads it, for object keys: ``*`` and ``?`` stay within a
    folder, ``**/`` crosses any number of them, ``[...]`` is a set (fnmatch's, whose ``*`` crosses "/")."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 2 if pattern[i + 1 : i + 2] in ("!", "]") else i + 1)
            out.append(fnmatch.translate(pattern[i : end + 1])[4:-3])  # "(?s:[...])\Z" -> "[...]"
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def _uri_files(spec: str, found: StorePath, out: AnyPath | None) -> list[StorePath]:
    """The Parquet files a URI names: an object as given, a prefix's *.parquet at any depth, or a glob
    (``*``, ``?``, ``[...]`` in the path; ``**`` crosses folders), listed through its file system."""
    store = found.store

    def outside(files: list[StorePath]) -> list[StorePath]:
        return [p for p in files if out is None or not p.is_relative_to(out)]

    info = store.stat(found)
    if info is not None and info.kind == "file":
        if out is not None and found.is_relative_to(out):
            raise ZsteerError(f"--manifest {spec}: is inside the output folder --out {out}")
        return [found]
    if info is not None and info.kind == "folder":
        files = [
            p for p in store.find_files(found)
            if p.name.endswith(".parquet") and not _is_hidden(Path(p.path), Path(found.path))
        ]  # fmt: skip
        files = outside(files)
        if not files:
            raise ZsteerError(f"--manifest {spec}: holds no *.parquet files")
        return files
    if GLOB_CHARS & set(found.path):
        parts = found.path.split("/")
        fixed = next(i for i, part in enumerate(parts) if GLOB_CHARS & set(part))
        base = StorePath("/".join(parts[:fixed]), store)
        pattern = _glob_regex(found.path)
        files = [
            p for p in store.find_files(base)
            if pattern.fullmatch(p.path) and not _is_hidden(Path(p.path), Path(base.path))
        ]  # fmt: skip
        files = outside(files)
        if not files:
            raise ZsteerError(f"--manifest {spec}: the pattern matches no files")
        return files
    raise ZsteerError(f"--manifest {spec}: no such file or prefix")


def _order(path: AnyPath):
    """Job order: plain paths as Path sorts them (as before URIs were read), then URIs by their text."""
    return (1, str(path)) if isinstance(path, StorePath) else (0, path)


def resolve_manifests(specs: tuple[str, ...] | list[str], exclude: AnyPath | None = None) -> list[AnyPath]:
    """Parquet files named by ``specs``: a file as given, a directory's *.parquet (recursively), a glob;
    dot and underscore names found by a directory walk or a glob are skipped. A spec that is a URI
    (``s3://bucket/prefix``, ``file:///data/*.parquet``) is listed through its ``pyarrow.fs`` file system
    the same way (jobs/storage.py).

    The result is sorted and deduplicated by resolved path, so the same arguments always give the same
    units in the same order (what resume relies on). ``exclude`` is the job's own output folder: a job
    must not read what it writes, so files below it that a directory walk or a glob finds are skipped
    (``-m data --out data/run`` resumes), and a file below it named on its own is refused.
    """
    if not specs:
        raise ZsteerError("--manifest: give at least one Parquet file, directory or glob")
    out = exclude.resolve() if isinstance(exclude, Path) else exclude

    def outside(files: list[Path]) -> list[Path]:
        return [p for p in files if not isinstance(out, Path) or not p.resolve().is_relative_to(out)]

    found: dict[AnyPath, None] = {}
    for spec in specs:
        where = locate(spec, "--manifest")
        if isinstance(where, StorePath):
            for file in _uri_files(spec, where, exclude if isinstance(exclude, StorePath) else None):
                found.setdefault(file, None)
            continue
        path = where
        if path.is_dir():
            files = outside([p for p in path.rglob("*.parquet") if p.is_file() and not _is_hidden(p, path)])
            if not files:
                raise ZsteerError(f"--manifest {spec}: directory holds no *.parquet files")
        elif path.exists():
            if isinstance(out, Path) and path.resolve().is_relative_to(out):
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
    return sorted(found, key=_order)
