"""One writer per job folder: an exclusive, non-blocking flock on OUT/.lock (a lease object on an object
store: ``StoreLease``).

The kernel drops the lock when the process ends in any way (SIGKILL included), so a crashed run never
leaves a stale lock behind; the pid written into the file is only for the message.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

from zsteer.core.errors import ZsteerError

from .storage import AnyPath, StorePath, storage_of

LOCK_NAME = ".lock"
log = logging.getLogger("zsteer.jobs")


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


# A lease on an object store is held while its object was written less than LEASE_SECONDS ago; the
# holder writes it again every RENEW_SECONDS. A driver that died leaves it to run out.
LEASE_SECONDS = 60.0
RENEW_SECONDS = 15.0


class StoreLease:
    """One driver per job folder on an object store, where there is no flock: ``OUT/.lock`` is created
    with the store's create-only write, and renewed by a thread of the driver while the job runs.

    A second run that finds a lease renewed less than LEASE_SECONDS ago is refused in one line; one
    that finds an older lease (its driver died: SIGKILL, a lost node) takes it over. The lease only
    keeps two drivers from cleaning up each other's work in flight: exactly once does not rest on it
    (markers are create-only, shard names unique per attempt: jobs/folder.py). Its age is the store's
    modification time against this machine's clock, so clocks more than a few seconds apart shorten
    or lengthen the wait; and two runs that find the same stale lease at the same moment may both take
    it. One driver per --out is the rule; the lease catches the usual breach of it.
    """

    def __init__(self, root: StorePath):
        self.path = root / LOCK_NAME
        self.storage = storage_of(self.path)
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._doc = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}

    def _body(self) -> bytes:
        return (json.dumps({**self._doc, "renewed": time.time()}) + "\n").encode()

    def __enter__(self) -> StoreLease:
        self.storage.make_folder(self.path.parent)
        if not self.storage.create_only(self.path, self._body()):
            found = self.storage.stat(self.path)
            age = time.time() - found.mtime_ns / 1e9 if found is not None else LEASE_SECONDS
            if age < LEASE_SECONDS:
                raise ZsteerError(
                    f"{self.path.parent}: another zsteer run ({self._holder()}) holds its lease, renewed "
                    f"{max(age, 0):.0f} s ago; wait for it to finish, or if it died, run again after "
                    f"{LEASE_SECONDS - max(age, 0):.0f} s (a lease runs out {LEASE_SECONDS:g} s after its run stops)"
                )
            self.storage.remove(self.path)  # ran out: its driver is gone
            if not self.storage.create_only(self.path, self._body()):
                raise ZsteerError(
                    f"{self.path.parent}: another zsteer run ({self._holder()}) took the lease just now; "
                    "one run per --out"
                )
        self._renewer = threading.Thread(target=self._renew, name="zsteer-lease", daemon=True)
        self._renewer.start()
        return self

    def _holder(self) -> str:
        try:
            doc = json.loads(self.storage.read_bytes(self.path))
            return f"host {doc['host']}, pid {doc['pid']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "unknown"

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_SECONDS):
            try:
                self.storage.write_bytes(self.path, self._body())
            except OSError as exc:  # the store is unreachable for now: the next renewal tries again
                log.warning("%s: could not renew the job's lease (%s)", self.path, exc)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        self.storage.remove(self.path)


def job_lock(root: AnyPath) -> FolderLock | StoreLease:
    """What keeps a second run out of the job folder ``root``: a flock for a plain path, a lease on an
    object store (jobs/storage.py)."""
    return FolderLock(root) if isinstance(root, Path) else StoreLease(root)
