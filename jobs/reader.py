"""Streaming the manifest: row group by row group, a bounded number of rows at a time.

Memory is bounded by ``read_rows`` whatever the row-group size: a row group is never read whole. A
row group that turns out to be unreadable part way (a corrupt page) is not fatal: its remaining rows
become rejects with the reason, so every row is still accounted for exactly once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from .manifest import ManifestPlan
from .rows import Unit


@dataclass
class Piece:
    """A slice of a row group as read: either a record batch, or a reason it could not be read."""

    unit: Unit
    offset: int  # index in its file of the piece's first row
    n_rows: int
    last: bool  # the last piece of its unit
    batch: pa.RecordBatch | None = None
    fault: str | None = None


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"row group unreadable: {text[0] if text else type(exc).__name__}"


def read_units(plan: ManifestPlan, units: list[Unit], read_rows: int) -> Iterator[Piece]:
    """Pieces of ``units`` (in the given order), at most ``read_rows`` rows each, every column."""
    open_file: tuple[int, pq.ParquetFile] | None = None
    try:
        for unit in units:
            file = plan.files[unit.file]
            size, start = file.row_groups[unit.row_group], file.row_offset(unit.row_group)
            done = 0
            try:
                if open_file is None or open_file[0] != unit.file:
                    if open_file is not None:
                        open_file[1].close()
                        open_file = None
                    open_file = (unit.file, pq.ParquetFile(file.path))
                # Threads off: two cores are the engine's; reading is far from the bottleneck (PERFORMANCE.md).
                batches = open_file[1].iter_batches(
                    batch_size=read_rows,
                    row_groups=[unit.row_group],
                    columns=file.schema.names,
                    use_threads=False,
                )
                for batch in batches:
                    n = batch.num_rows
                    yield Piece(unit, start + done, n, done + n == size, batch=batch)
                    done += n
                if done != size:
                    raise OSError(f"read {done} rows, the footer says {size}")
            except (pa.ArrowException, OSError, ValueError) as exc:
                if done < size:
                    yield Piece(unit, start + done, size - done, True, fault=_reason(exc))
    finally:
        if open_file is not None:
            open_file[1].close()
