"""Streaming the manifest: unit by unit, a bounded number of rows at a time.

Memory is bounded by ``read_rows`` rows (and one block of ``DECODE_ROWS`` being decoded) whatever the
row-group size: a row group is never read whole. Files
are opened without pre-buffering (which would read every column chunk of a row group at once: 256 MB for
a 1M-row row group of 64 floats) and with a small read buffer, so a column chunk is read page by page.

The units of one row group are read from one stream, in order. A resume that starts inside a row group
decodes the rows before its first unit to skip them (there is no seek to a row in Parquet); that costs
read time only, memory stays bounded.

Faults are of two kinds:

- the data of a row group cannot be decoded part way (a corrupt page, a bad compressed block, a page
  whose CRC does not match: files written with page checksums are read with their verification on, so
  flipped bytes in a page are found instead of edited as a valid row): not fatal; its rows from the
  first block of ``DECODE_ROWS`` that fails on, in every unit of the row group still to do, become
  rejects with the reason, so every row is still accounted for exactly once, and which rows survive does
  not depend on the read size, the units or a resume;
- the file cannot be opened or read (gone, permission denied, an I/O error of the disk or the network):
  a ``ReadError``, which stops the job with one line naming the file; nothing of the unit was committed,
  so the same command resumes once the file is back. Such a fault says nothing about the rows, so they
  are never rejected for it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from zsteer.core.errors import ZsteerError, fault_reason, first_line

from .manifest import InputFile, ManifestPlan, is_os_fault, is_unchanged, stat_matches
from .rows import Unit
from .storage import storage_of

READ_BUFFER = 1 << 20  # bytes read at a time from a column chunk (pyarrow's buffered stream)
# Rows a row group is decoded at a time, in blocks counted from its first row. Fixed, not --read-rows: where
# a damaged page stops a row group (at the first block that fails to decode) must not depend on the read
# size, the units or where a resume started (docs/ARCHITECTURE.md, "Batch invariance"). Reads of
# ``read_rows`` rows are made of whole blocks; 1024 rows of z are a few hundred kB.
DECODE_ROWS = 1024


class ReadError(ZsteerError):
    """A manifest file could not be opened or read (an OS-level fault, not the data): fatal, resumable."""


class _Undecodable(Exception):
    """The data of a row group could not be decoded (wraps what pyarrow raised)."""


@dataclass
class Piece:
    """A slice of a unit as read: either a record batch (ManifestPlan.conform's columns), or a reason it
    could not be read."""

    unit: Unit
    offset: int  # index in its file of the piece's first row
    n_rows: int
    last: bool  # the last piece of its unit
    batch: pa.RecordBatch | None = None
    fault: str | None = None


def _read_error(file: InputFile, what: str, exc: BaseException) -> ReadError:
    return ReadError(
        f"{file.path}: cannot {what} ({fault_reason(exc)}); nothing unfinished was committed: "
        "make the file readable and run the same command again to resume"
    )


def _changed(file: InputFile) -> ReadError:
    return ReadError(
        f"{file.path}: changed since the job started (size, modification time or footer differ); nothing "
        "read from it since was committed: put the original back (with its modification time: cp -p) and run "
        "the same command to resume, or start a new job with another --out"
    )


def _check_unchanged(file: InputFile, pf: pq.ParquetFile, stat) -> None:
    """Refuse a file written again since the job planned it: its rows are not the rows job.json names."""
    groups = tuple(pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups))
    if not stat_matches(file, stat) or groups != file.row_groups:
        raise _changed(file)


class _RowGroupStream:
    """The rows of one row group in order, as record batches of at most ``read_rows`` rows, decoded in
    blocks of ``DECODE_ROWS``."""

    def __init__(self, pf: pq.ParquetFile, file: InputFile, row_group: int, read_rows: int):
        self.file, self.row_group = file, row_group
        self.size = file.row_groups[row_group]
        self.read_rows = read_rows
        self.pos = 0  # rows of the row group handed out (or skipped) so far
        # Threads off: two cores are the engine's; reading is far from the bottleneck (docs/NOTES.md, "Reading and threads").
        self._blocks = pf.iter_batches(
            batch_size=DECODE_ROWS, row_groups=[row_group], columns=file.schema.names, use_threads=False
        )
        self._head: pa.RecordBatch | None = None  # decoded rows not handed out yet
        self._fault: _Undecodable | None = None  # a block that failed after the head's blocks decoded

    def _block(self, decoded: int) -> pa.RecordBatch:
        """The next decoded block (``decoded``: rows of the row group decoded before it); raises
        _Undecodable or an OS fault."""
        try:
            block = next(self._blocks, None)
        except Exception as exc:
            if is_os_fault(exc):
                raise
            raise _Undecodable(first_line(exc)) from exc
        if block is None or block.num_rows == 0:
            raise _Undecodable(f"read {decoded} rows, the footer says {self.size}")
        return block

    def _fill(self, want: int) -> None:
        """Decode whole blocks into the head until it holds ``want`` rows. A block that fails after others
        decoded is kept for the next call: the rows before it are handed out first."""
        if self._fault is not None:
            raise self._fault
        blocks, rows = [], 0
        while rows < want:
            try:
                blocks.append(self._block(self.pos + rows))
            except _Undecodable as exc:
                if not blocks:
                    raise
                self._fault = exc
                break
            rows += blocks[-1].num_rows
        self._head = (
            blocks[0] if len(blocks) == 1 else pa.Table.from_batches(blocks).combine_chunks().to_batches()[0]
        )

    def _next(self, limit: int) -> pa.RecordBatch:
        """The next at most ``limit`` rows (at least one; at most ``read_rows``); raises _Undecodable or
        an OS fault."""
        limit = min(limit, self.read_rows)
        if self._head is None:
            self._fill(limit)
        batch, self._head = self._head.slice(0, limit), self._head.slice(limit)
        if self._head.num_rows == 0:
            self._head = None
        self.pos += batch.num_rows
        return batch

    def take(self, n: int) -> Iterator[pa.RecordBatch]:
        """The next ``n`` rows, in batches."""
        stop = self.pos + n
        while self.pos < stop:
            yield self._next(stop - self.pos)

    def skip_to(self, row: int) -> None:
        """Read past the rows before ``row`` (index in the row group), keeping none of them."""
        for _ in self.take(row - self.pos):
            pass


class UnitReader:
    """Reads units of one job, a unit at a time, keeping its file and row-group stream open between calls.

    One per worker (a thread of the local executor, an actor of a cluster): consecutive units of a row
    group continue the open stream instead of decoding the row group again from its start. Raises
    ReadError when a file cannot be opened or read; see the module docstring.
    """

    def __init__(self, plan: ManifestPlan, read_rows: int):
        self.plan, self.read_rows = plan, read_rows
        self._pf: pq.ParquetFile | None = None
        self._pf_index = -1
        self._stream: _RowGroupStream | None = None
        self._broken: tuple[int, int, str] | None = (
            None  # (file, row group, reason): undecodable from here on
        )

    def close(self) -> None:
        if self._pf is not None:
            self._pf.close()
        self._pf, self._pf_index, self._stream = None, -1, None

    def __enter__(self) -> UnitReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _open(self, unit: Unit) -> pq.ParquetFile:
        file = self.plan.files[unit.file]
        if self._pf_index != unit.file:
            self.close()
            try:
                storage = storage_of(file.path)
                pf = storage.parquet_file(
                    file.path, pre_buffer=False, buffer_size=READ_BUFFER, page_checksum_verification=True
                )
                stat = storage.stat(file.path)
            except Exception as exc:  # gone or unreadable
                raise _read_error(file, "open it", exc) from None
            self._pf, self._pf_index = pf, unit.file
            _check_unchanged(file, pf, stat)
        return self._pf

    def confirm(self, unit: Unit) -> None:
        """Raise ReadError if the unit's file is not the one the job planned (size, modification time,
        footer hash): called after a unit's rows are read and before they are committed, so rows read
        from a file rewritten in place mid-job (``cp other.parquet m.parquet``: the open handle then
        reads the new bytes under the old footer) are never committed, as rows or as rejects."""
        file = self.plan.files[unit.file]
        try:
            unchanged = is_unchanged(file)
        except OSError as exc:
            raise _read_error(file, "check it", exc) from None
        if not unchanged:
            raise _changed(file)

    def pieces(self, unit: Unit) -> Iterator[Piece]:
        """The unit's rows in order, as pieces of at most ``read_rows`` rows (or faults)."""
        file = self.plan.files[unit.file]
        first = unit.start - file.row_offset(unit.row_group)  # the unit's first row, in its row group
        if self._broken is not None and self._broken[:2] == (unit.file, unit.row_group):
            yield Piece(unit, unit.start, unit.n_rows, True, fault=self._broken[2])
            return
        pf = self._open(unit)
        stream = self._stream
        if stream is None or stream.row_group != unit.row_group or stream.pos > first:
            stream = self._stream = _RowGroupStream(pf, file, unit.row_group, self.read_rows)
        done = 0
        try:
            stream.skip_to(first)
            for batch in stream.take(unit.n_rows):
                n = batch.num_rows
                batch = self.plan.conform(batch)  # the job's columns and types, whatever the file's
                yield Piece(unit, unit.start + done, n, done + n == unit.n_rows, batch=batch)
                done += n
        except _Undecodable as exc:
            # The stream of this row group is broken: its rows from here on cannot be read.
            self._broken = (unit.file, unit.row_group, f"row group unreadable: {exc}")
            self._stream = None
            yield Piece(unit, unit.start + done, unit.n_rows - done, True, fault=self._broken[2])
        except OSError as exc:
            raise _read_error(file, f"read row group {unit.row_group}", exc) from None


def read_units(plan: ManifestPlan, units: list[Unit], read_rows: int) -> Iterator[Piece]:
    """Pieces of ``units`` (in job order), at most ``read_rows`` rows each, every column."""
    with UnitReader(plan, read_rows) as reader:
        for unit in units:
            yield from reader.pieces(unit)


class ThreadReaders:
    """One UnitReader per thread (a reader keeps its file open across units and is not thread-safe),
    for a worker whose threads each run units; ``close()`` closes them all."""

    def __init__(self, plan: ManifestPlan, read_rows: int):
        self.plan, self.read_rows = plan, read_rows
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[UnitReader] = []

    def get(self) -> UnitReader:
        """This thread's reader, opened on first use."""
        reader = getattr(self._local, "reader", None)
        if reader is None:
            reader = self._local.reader = UnitReader(self.plan, self.read_rows)
            with self._lock:
                self._all.append(reader)
        return reader

    def close(self) -> None:
        with self._lock:
            readers, self._all = self._all, []
        for reader in readers:
            reader.close()
