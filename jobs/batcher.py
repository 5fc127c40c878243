"""Rebatching: the rows to edit of consecutive chunks, cut into engine batches of exactly batch_size.

Row groups rarely hold a multiple of the batch size; batches that cross chunk and unit boundaries keep
every batch but the job's last one full, so the engine runs one fixed shape. The batcher also says
when a unit's last row has left in a batch, which is when the writer may close that unit.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass

import numpy as np

from .rows import RowChunk, Unit


@dataclass(frozen=True)
class UnitEnd:
    """All ``n_rows`` rows of ``unit`` have been handed to the writer."""

    unit: Unit
    n_rows: int


@dataclass(frozen=True)
class Segment:
    """Rows [start, stop) of a chunk's rows to edit, and the units that end with them.

    A batch can hold the tail of one unit and the head of the next; handing the writer the end of a
    unit right after its last segment means it never sees a unit's rows before the previous unit ended.
    """

    chunk: RowChunk
    start: int
    stop: int
    ends: tuple[UnitEnd, ...] = ()


class Batcher:
    """FIFO of chunks; ``take`` cuts batches, ``finished`` reports units whose rows have all been taken.

    Units end in input order: ``take`` attaches each end to the segment holding the unit's last row;
    ``finished`` returns ends that no batch carries (a unit whose rows were all rejected, or whose
    last row left in an earlier batch).
    """

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self._queue: deque[list] = deque()  # [chunk, next row]
        self.buffered = 0  # rows to edit waiting for a batch
        self._added = 0  # rows to edit ever added / taken: a unit ends once taken passes its mark
        self._taken = 0
        self._unit_rows: Counter[Unit] = Counter()
        self._ends: deque[tuple[int, UnitEnd]] = deque()

    def add(self, chunk: RowChunk) -> None:
        if chunk.n_edit:
            self._queue.append([chunk, 0])
            self.buffered += chunk.n_edit
            self._added += chunk.n_edit
        self._unit_rows[chunk.unit] += chunk.n_rows
        if chunk.last:
            self._ends.append((self._added, UnitEnd(chunk.unit, self._unit_rows.pop(chunk.unit))))

    def full(self) -> bool:
        return self.buffered >= self.batch_size

    def take(self) -> list[Segment]:
        """Up to batch_size rows, oldest first, as segments of their chunks."""
        want = min(self.batch_size, self.buffered)
        segments = []
        while want:
            entry = self._queue[0]
            chunk, start = entry
            stop = min(chunk.n_edit, start + want)
            want -= stop - start
            self.buffered -= stop - start
            self._taken += stop - start
            segments.append(Segment(chunk, start, stop, self.finished()))
            if stop == chunk.n_edit:
                self._queue.popleft()
            else:
                entry[1] = stop
        return segments

    def finished(self) -> tuple[UnitEnd, ...]:
        """Units whose every row to edit has been taken (in order), removed from the watch list."""
        out = []
        while self._ends and self._ends[0][0] <= self._taken:
            out.append(self._ends.popleft()[1])
        return tuple(out)


def gather(segments: list[Segment], name: str, size: int = 0) -> np.ndarray | None:
    """One array of a batch: the segments' slices of the chunks' array ``name`` (None stays None).

    With ``size`` larger than the rows, the last row is repeated up to ``size`` rows: a compiled
    engine then sees the job's last, short batch in the shape it compiled for the others.
    """
    parts = [getattr(s.chunk, name) for s in segments]
    if parts[0] is None:
        return None
    rows = [p[s.start : s.stop] for p, s in zip(parts, segments, strict=True)]
    n = sum(len(r) for r in rows)
    if size > n:
        rows.append(np.repeat(rows[-1][-1:], size - n, axis=0))
    return np.concatenate(rows)
