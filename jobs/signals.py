"""SIGINT / SIGTERM: ask the job to stop at the next step, instead of dying mid-write.

The first signal only sets a flag, which the editor asks between ascent steps and the units between
batches (jobs/unit.py): the units in flight are dropped unfinished (they are done again on resume), the
ones already finished are committed, and the job exits resumable (130 / 143). The handlers are then
put back, so a second Ctrl-C interrupts whatever runs; even then the commit protocol keeps the folder
consistent, it only loses the uncommitted work.
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger("zsteer.jobs")
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopFlag:
    """Context manager: ``.signum`` is set by the first SIGINT/SIGTERM while it is active."""

    def __init__(self, install: bool = True):
        # Handlers can only be installed from the main thread; elsewhere the flag is set by calling stop().
        self.install = install and threading.current_thread() is threading.main_thread()
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def stop(self, signum: int) -> None:
        self.signum = signum

    def _handle(self, signum, frame) -> None:
        self.stop(signum)
        self._restore()
        log.warning(
            "%s received: stopping at the next step; finished units stay committed (send it again to interrupt now)",
            signal.Signals(signum).name,
        )

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def __enter__(self) -> StopFlag:
        if self.install:
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()
