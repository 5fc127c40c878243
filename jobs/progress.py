"""Progress: a tqdm bar on a terminal, a plain line every few seconds elsewhere (CI logs keep no bars)."""

from __future__ import annotations

import logging
import sys
import threading
import time
from datetime import timedelta

from tqdm import tqdm

log = logging.getLogger("zsteer.jobs")


class Progress:
    """Rows done out of ``total`` (rows of this job, including those committed by earlier runs)."""

    def __init__(self, total: int, done: int, every_seconds: float, stream=None):
        self.stream = stream or sys.stderr
        self.total, self.done, self.start_done = total, done, done
        self.every = every_seconds
        self._t0 = self._last = time.monotonic()
        self.bar = None
        self._lock = threading.Lock()  # workers of an executor report from their own threads
        if self.stream.isatty():
            self.bar = tqdm(
                total=total, initial=done, unit="rows", file=self.stream, dynamic_ncols=True, smoothing=0.1
            )

    def update(self, rows: int) -> None:
        with self._lock:
            self._update(rows)

    def _update(self, rows: int) -> None:
        self.done += rows
        if self.bar is not None:
            self.bar.update(rows)
            return
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            log.info(self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = (now or time.monotonic()) - self._t0
        rate = (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0
        left = self.total - self.done
        eta = str(timedelta(seconds=round(left / rate))) if rate > 0 else "?"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return f"{self.done}/{self.total} rows ({pct:.1f}%), {rate:.1f} rows/s, ETA {eta}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
