"""Checks on the paths given to the commands, shared by `main` and the lazily loaded commands."""

from __future__ import annotations

import tempfile
from pathlib import Path

from zsteer.core.errors import ZsteerError


def check_out_parent(flag: str, path: Path) -> None:
    """Refuse an output path below a file (``--out notes.txt/job``), or in a folder that cannot be written
    (read-only, no permission), before any work, naming both: a command that fails only when it writes
    its result has wasted all the work before it."""
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
