"""Output shards and commits: rows go to parts/ in shards of at most rows_per_shard, units are committed
only once every one of their rows is in a file that is in place (the protocol is in folder.py).

Shards are cut at unit boundaries, so a commit's files hold exactly its units' rows. A unit with more
rows than a shard holds is split; its shards are held uncommitted until its last one is written, then
committed together. Units are committed in input order, once their rows fill a shard, once their
rejects fill a rejects file, or flush_seconds after the last commit, whichever comes first: the
writer's buffers stay bounded by rows_per_shard (plus one unit's rejects).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from .folder import Commit, JobFolder, write_parquet_atomic
from .rows import Unit


@dataclass
class _UnitLog:
    """What the writer has of a unit so far."""

    edited: int = 0
    rejected: int = 0
    stop_reasons: Counter = field(default_factory=Counter)
    rejects: list[pa.Table] = field(default_factory=list)


class ShardWriter:
    """Buffers edited rows and rejects per unit, writes bounded shards, commits finished units."""

    def __init__(
        self,
        folder: JobFolder,
        rows_per_shard: int,
        flush_seconds: float,
        commits: list[Commit],
        on_commit=None,
    ):
        self.folder = folder
        self.rows_per_shard = rows_per_shard
        self.flush_seconds = flush_seconds
        self.on_commit = on_commit  # called with each Commit once it is durable
        self._seq = max((c.seq for c in commits), default=-1) + 1
        self._part = _next_number((n for c in commits for n in c.parts), "part-")
        self._reject_file = _next_number((n for c in commits for n in c.rejects), "rejects-")
        self._buf: list[tuple[Unit, pa.Table]] = []  # rows of closed units, then of the open unit
        self._buf_rows = 0
        self._closed: list[Unit] = []  # finished units waiting for a commit, in order
        self._open: Unit | None = None  # the unit receiving rows now
        self._pending_parts: list[str] = []  # shards of the open unit, written but uncommitted
        self._pending_unit: Unit | None = None  # the unit those shards belong to
        self._logs: dict[Unit, _UnitLog] = {}
        self._closed_rejects = 0  # rejected rows of the finished units waiting for a commit
        self._last_commit = time.monotonic()

    def _log(self, unit: Unit) -> _UnitLog:
        return self._logs.setdefault(unit, _UnitLog())

    def add_rejects(self, unit: Unit, table: pa.Table) -> None:
        log = self._log(unit)
        log.rejected += table.num_rows
        log.rejects.append(table)

    def add_rows(self, unit: Unit, table: pa.Table) -> None:
        """Edited rows of ``unit``, in order; units arrive one after the other."""
        assert self._open in (None, unit), "units must arrive in order"
        self._open = unit
        log = self._log(unit)
        log.edited += table.num_rows
        counts = pc.value_counts(table.column("stop_reason")).to_pylist()
        log.stop_reasons.update({c["values"]: c["counts"] for c in counts})
        while table.num_rows:
            space = self.rows_per_shard - self._buf_rows
            if table.num_rows <= space:
                self._buf.append((unit, table))
                self._buf_rows += table.num_rows
                return
            if self._closed:  # make room by committing the finished units before this one
                self._flush_closed()
                continue
            # Only this unit is buffered and it outgrows a shard: write a full one, commit it later.
            self._buf.append((unit, table.slice(0, space)))
            table = table.slice(space)
            self._pending_parts.append(self._write_part([t for _, t in self._buf]))
            self._pending_unit = unit
            self._buf, self._buf_rows = [], 0

    def end_unit(self, unit: Unit, n_rows: int) -> None:
        """Every row of ``unit`` (``n_rows`` rows read) has been handed over."""
        log = self._log(unit)
        if log.edited + log.rejected != n_rows or (unit.n_rows and n_rows != unit.n_rows):
            raise RuntimeError(
                f"unit {unit.key}: {log.edited} edited + {log.rejected} rejected, {n_rows} rows read, "
                f"{unit.n_rows} in the manifest"
            )
        self._open = None
        self._closed.append(unit)
        self._closed_rejects += log.rejected
        split = bool(self._pending_parts)  # a split unit's shards are committed together, now
        full = max(self._buf_rows, self._closed_rejects) >= self.rows_per_shard
        if split or full or time.monotonic() - self._last_commit >= self.flush_seconds:
            self._flush_closed()

    def close(self) -> None:
        """Commit every finished unit; drop the open unit's rows (it will be done again on resume)."""
        self._flush_closed()
        for name in self._pending_parts:
            (self.folder.parts / name).unlink(missing_ok=True)
        self._pending_parts, self._pending_unit, self._buf, self._buf_rows = [], None, [], 0

    def _write_part(self, tables: list[pa.Table]) -> str:
        name = f"part-{self._part:06d}.parquet"
        self._part += 1
        write_parquet_atomic(pa.concat_tables(tables), self.folder.parts / name)
        return name

    def _write_rejects(self, tables: list[pa.Table]) -> list[str]:
        """The rejects of a commit, in files of at most rows_per_shard rows, as parts are."""
        table, names = pa.concat_tables(tables), []
        for start in range(0, table.num_rows, self.rows_per_shard):
            name = f"rejects-{self._reject_file:06d}.parquet"
            self._reject_file += 1
            write_parquet_atomic(table.slice(start, self.rows_per_shard), self.folder.rejects / name)
            names.append(name)
        return names

    def _flush_closed(self) -> None:
        """Write the finished units' buffered rows as one shard and commit those units."""
        if not self._closed:
            return
        closed = set(self._closed)
        # Held shards belong to one split unit; they are committed with it, never with its neighbours.
        assert not self._pending_parts or self._closed == [self._pending_unit]
        rows = [t for u, t in self._buf if u in closed]  # a prefix of the buffer
        self._buf = [(u, t) for u, t in self._buf if u not in closed]
        self._buf_rows = sum(t.num_rows for _, t in self._buf)
        parts = self._pending_parts + ([self._write_part(rows)] if rows else [])
        logs = [self._logs.pop(u) for u in self._closed]
        rejects = [t for log in logs for t in log.rejects]
        reject_files = self._write_rejects(rejects) if rejects else []
        reasons: Counter = Counter()
        for log in logs:
            reasons.update(log.stop_reasons)
        commit = Commit(
            seq=self._seq,
            units=[u.key for u in self._closed],
            parts=parts,
            rejects=reject_files,
            rows=sum(log.edited + log.rejected for log in logs),
            edited=sum(log.edited for log in logs),
            rejected=sum(log.rejected for log in logs),
            stop_reasons=dict(sorted(reasons.items())),
        )
        self.folder.commit(commit)
        self._seq += 1
        self._closed, self._pending_parts, self._pending_unit = [], [], None
        self._closed_rejects = 0
        self._last_commit = time.monotonic()
        if self.on_commit is not None:
            self.on_commit(commit)


def _next_number(names, prefix: str) -> int:
    """One more than the largest counter in ``names`` (``PREFIX-NNNNNN.parquet``), 0 for none."""
    return max((int(n[len(prefix) : -len(".parquet")]) for n in names), default=-1) + 1
