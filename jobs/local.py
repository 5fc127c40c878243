"""The local executor: units run by a few threads on this machine, one editor, PNG encoder processes.

    thread 1   run_and_commit(unit k)   read, validate | edit (holds the editor) | tables, commit_unit
    thread 2   run_and_commit(unit k+1) read, validate |      waits for it      | ...

Each thread runs whole units through the plain ``run_and_commit`` (jobs/commit.py: ``process_unit`` then
``commit_unit``, the same function the Ray executor's actors call) and reports them with ``work.record``. The editor is
shared, and its batches run one at a time on a compute thread of their own (``SerializedEditor``): the
device (or the CPU's cores) runs one batch at once, while the other unit thread reads, validates, waits
for PNGs and writes files. The main thread only
hands out units, a bounded number at a time, so memory holds at most ``threads`` units whatever the
manifest size, and signal handlers (which run on the main thread) are never blocked behind compute.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from zsteer.pipeline.editor import EditBatch, Editor, EditResult

from .commit import run_and_commit
from .device import require_device
from .encode import Encoder
from .executor import JobWork
from .reader import ThreadReaders
from .rows import Unit


class SerializedEditor:
    """An Editor shared by several threads: every batch runs on one compute thread of its own.

    One thread, not a lock: torch's CPU ops run on an OpenMP team per calling thread, and the idle
    team of another thread keeps spinning for a while after each parallel region, taking the cores
    from the team at work (measured: a lock between two threads made the job 12% slower).
    """

    def __init__(self, editor: Editor):
        self.editor = editor
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="zsteer-compute")

    def submit(self, batch: EditBatch, render: bool = True) -> Future:
        """The batch's EditResult as a future (a caller that must do something while it waits)."""
        return self._thread.submit(self.editor.edit_batch, batch, render)

    def edit_batch(self, batch: EditBatch, render: bool = True) -> EditResult:
        return self.submit(batch, render).result()

    def render(self, z, labels=None):
        return self._thread.submit(self.editor.render, z, labels).result()

    def close(self) -> None:
        self._thread.shutdown(wait=True)


@dataclass(frozen=True)
class LocalExecutor:
    """Threads on this machine."""

    # Units in flight: 2 lets one thread edit while the other does everything else; more only adds memory.
    threads: int = 2

    def check(self, config) -> None:
        """The editor runs in this process: --device must be usable here."""
        require_device(config.engine.device, "in this torch build or machine")

    def run(self, work: JobWork) -> None:
        editor = SerializedEditor(work.make_editor())
        encoder = Encoder(work.png_workers if work.plan.images else 0)
        failed = threading.Event()  # a unit failed: the others stop at their next batch
        readers = ThreadReaders(work.plan.manifest, work.plan.read_rows)  # each thread keeps its open file

        def stopped() -> bool:
            return failed.is_set() or work.stopped()

        def run_unit(unit: Unit) -> None:
            done = run_and_commit(
                work.plan, unit, editor, work.folder, work.rows_per_shard, reader=readers.get(),
                encode=encoder.submit, cancelled=stopped, on_rows=work.progress.update,
            )  # fmt: skip
            if done is not None:
                work.record(done)

        pending: deque[Future] = deque()
        try:
            with ThreadPoolExecutor(self.threads, thread_name_prefix="zsteer-unit") as pool:
                try:
                    for unit in work.units:
                        while len(pending) >= self.threads:
                            pending.popleft().result()
                        if stopped():
                            break
                        pending.append(pool.submit(run_unit, unit))
                    while pending:
                        pending.popleft().result()
                except BaseException:
                    failed.set()  # the pool's exit waits for the threads, which stop at their next batch
                    raise
        finally:
            editor.close()
            encoder.close()
            readers.close()
