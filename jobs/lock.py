"""One writer per job folder: an exclusive, non-blocking flock on OUT/.lock.

The kernel drops the lock when the process ends in any way (SIGKILL included), so a crashed run never
leaves a stale lock behind; the pid written into the file is only for the message.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from zsteer.core.errors import ZsteerError

LOCK_NAME = ".lock"


class FolderLock:
    """Context manager holding the folder's lock; a second holder gets a ZsteerError naming the pid."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ZsteerError(
                f"{self.path.parent}: another zsteer run (pid {holder}) is writing this folder; "
                "wait for it to finish or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None
