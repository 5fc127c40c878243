"""Checks on the paths given to the commands, shared by `main` and the lazily loaded commands."""

from __future__ import annotations

from pathlib import Path

from zsteer.core.errors import ZsteerError


def check_out_parent(flag: str, path: Path) -> None:
    """Refuse an output path below a file (``--out notes.txt/job``) before any work, naming both."""
    existing = next((p for p in Path(path).parents if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ZsteerError(f"{flag} {path}: {existing} is a file, not a folder")
