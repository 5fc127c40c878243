"""The unit of work as a plain function: ``process_unit(plan, unit, editor) -> UnitOutput``.

A unit (at most ``unit_rows`` rows of one row group, rows.Unit) is read, validated, edited, encoded and
turned into two Arrow tables, its output rows and its rejects, by this one function. It holds no
threads and no state spanning the job: everything it needs is in the ``UnitPlan`` (the job's settings
and manifest plan, picklable) and the editor it is given. Executors decide where and how many run at
once (jobs/local.py: threads on this machine); commit.py makes a finished unit durable.

A row's result depends only on that row and the plan: a unit's rows are edited in batches of the
plan's ``batch_size`` that never cross a unit, and the editor pads them itself (pipeline/ascent_loop.py),
so neither the batch a row lands in nor the executor changes a bit of it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa

from zsteer.core.errors import ZsteerError, first_line
from zsteer.core.status import count_stop_reasons
from zsteer.pipeline.editor import EditBatch, EditCancelled, Editor

from .duplicates import DuplicateIndex
from .encode import DeferredPNGs
from .manifest import ManifestPlan, ModelShape
from .method import EditMethod, replaced_columns
from .reader import Piece, UnitReader
from .rows import RowChunk, RowDefaults, RowValidator, Unit, reject_schema

log = logging.getLogger("zsteer.jobs")


class UnitCancelled(Exception):
    """``cancelled()`` turned true between two batches or two steps: the unit is dropped, to be done again."""


@dataclass(frozen=True)
class UnitPlan:
    """Everything a unit's work depends on, fixed for the life of a job (and picklable for a cluster)."""

    manifest: ManifestPlan  # the inputs: files, row groups, schema
    shape: ModelShape  # what the models take and give
    defaults: RowDefaults  # what rows without overrides get
    method: EditMethod  # how rows are edited
    duplicates: DuplicateIndex  # the ids seen more than once, and where first
    schema: pa.Schema  # the output rows
    images: bool  # render and encode an `image` column
    batch_size: int  # rows handed to the editor at a time (speed only)
    read_rows: int  # rows read at a time (memory only)


@dataclass
class UnitOutput:
    """A finished unit: its output rows, its rejects, and what it took."""

    unit: Unit
    edited: pa.Table  # [e] rows of the output schema
    rejects: pa.Table  # [r] rows of the reject schema; inputs + r == unit.n_rows
    stop_reasons: dict[str, int]
    seconds: Counter = field(default_factory=Counter)  # per stage: read, compute, encode, tables
    encoder_peak_mb: float = 0.0
    # Input rows edited, where a method writes several output rows per input row (EditResult.source);
    # None = one each, so the edited table's rows.
    inputs: int | None = None

    @property
    def n_rows(self) -> int:
        """Input rows the unit accounts for: edited and rejected."""
        edited = self.edited.num_rows if self.inputs is None else self.inputs
        return edited + self.rejects.num_rows


def output_schema(plan_carried: pa.Schema, method: EditMethod, shape: ModelShape, images: bool) -> pa.Schema:
    """id and the carried columns, the method's columns, then `image` (PNG bytes) when images are on.

    An override column the method writes again (``replaced_columns``: the value it applied) is not carried.
    """
    replaced = replaced_columns(method, shape.z_dim, len(shape.attributes))
    fields = [f for f in plan_carried if f.name not in replaced]
    fields += method.output_fields(shape.z_dim, len(shape.attributes))
    if images:
        fields.append(pa.field("image", pa.binary()))
    return pa.schema(fields)


def _read_unit(plan: UnitPlan, unit: Unit, reader: UnitReader) -> tuple[list[RowChunk], float]:
    validator = RowValidator(plan.manifest, plan.shape, plan.defaults, plan.duplicates, plan.method)
    start, chunks = time.perf_counter(), []
    for piece in reader.pieces(unit):
        if piece.fault is not None:
            chunks.append(validator.unreadable(piece.unit, piece.offset, piece.n_rows, piece.fault))
        else:
            chunks += _validate(validator, piece)
    reader.confirm(unit)  # the file is still the planned one: what was read may be committed
    return chunks, time.perf_counter() - start


def _validate(validator: RowValidator, piece: Piece) -> list[RowChunk]:
    """The piece validated; if validation itself raises (a value no check foresaw), the piece's rows are
    validated one by one and each row that still raises is rejected with the error: such a row would
    otherwise stop the job at the same place on every resume, and the job could never finish."""
    try:
        return [validator.validate(piece.unit, piece.offset, piece.batch, piece.last)]
    except (OSError, ZsteerError, MemoryError):  # the system's faults, not the row's: never rejects
        raise
    except Exception as exc:
        log.warning(
            "%s: validating rows %d-%d raised %s; rows that raise alone are rejected with it",
            validator.plan.files[piece.unit.file].path, piece.offset, piece.offset + piece.n_rows - 1,
            type(exc).__name__,
        )  # fmt: skip
    chunks = []
    for i in range(piece.n_rows):
        last = piece.last and i == piece.n_rows - 1
        try:
            chunks.append(validator.validate(piece.unit, piece.offset + i, piece.batch.slice(i, 1), last))
        except (OSError, ZsteerError, MemoryError):  # the system's faults, not the row's: never rejects
            raise
        except Exception as exc:
            reason = f"the row could not be validated ({type(exc).__name__}: {first_line(exc, limit=200)})"
            chunks.append(validator.unreadable(piece.unit, piece.offset + i, 1, reason))
    return chunks


def _rows_to_edit(chunks: list[RowChunk]) -> tuple[pa.Table, EditBatch]:
    """The unit's rows to edit, all pieces together (a unit is bounded: unit_rows rows)."""
    keep = [c for c in chunks if c.n_edit] or chunks[:1]

    def cat(name: str):
        parts = [getattr(c, name) for c in keep]
        return None if parts[0] is None else np.concatenate(parts)

    extras = [c.extra for c in keep if c.extra]
    extra = {k: np.concatenate([e[k] for e in extras]) for k in extras[0]} if extras else None
    batch = EditBatch(
        z=cat("z"), weights=cat("weights"), preserve=cat("preserve"), labels=cat("labels"),
        max_steps=cat("max_steps"), stop_prob=cat("stop_prob"), extra=extra,
    )  # fmt: skip
    return pa.concat_tables([c.carried for c in keep]), batch


def process_unit(
    plan: UnitPlan,
    unit: Unit,
    editor: Editor,
    *,
    reader: UnitReader | None = None,
    encode: Callable = DeferredPNGs,
    cancelled: Callable[[], bool] | None = None,
    on_rows: Callable[[int], None] | None = None,
) -> UnitOutput:
    """Read, validate, edit, encode one unit; returns its tables. Writes nothing.

    ``reader``: a UnitReader to reuse (a worker keeps one open across its units); ``encode(images)`` ->
    something whose ``result()`` is ``encode_pngs(images)`` (``Encoder.submit``; by default encoded
    when asked for);
    ``cancelled()``: asked between batches, and by an editor that loops (the ascent) between its steps
    (``EditBatch.cancelled``); raises UnitCancelled when true; ``on_rows(n)``: progress.
    """
    own_reader = reader is None
    reader = reader or UnitReader(plan.manifest, plan.read_rows)
    try:
        chunks, read_seconds = _read_unit(plan, unit, reader)
    finally:
        if own_reader:
            reader.close()
    seconds: Counter = Counter(read=read_seconds)
    rejects = [c.rejects for c in chunks if c.rejects is not None]
    n_rejected = sum(t.num_rows for t in rejects)
    if on_rows is not None and n_rejected:
        on_rows(n_rejected)
    carried, rows = _rows_to_edit(chunks)
    replaced = [
        c
        for c in replaced_columns(plan.method, plan.shape.z_dim, len(plan.shape.attributes))
        if c in carried.column_names
    ]
    carried = carried.drop_columns(replaced) if replaced else carried  # written again by the method
    n = rows.n_rows
    batches = []  # (rows, EditResult, PNG future or None)
    for start in range(0, n, plan.batch_size):
        if cancelled is not None and cancelled():
            raise UnitCancelled(unit.key)
        stop = min(n, start + plan.batch_size)
        t0 = time.perf_counter()
        try:
            result = editor.edit_batch(
                replace(rows.slice(start, stop), cancelled=cancelled), render=plan.images
            )
        except EditCancelled:
            raise UnitCancelled(unit.key) from None
        seconds["compute"] += time.perf_counter() - t0
        pngs = encode(np.ascontiguousarray(result.images.numpy())) if plan.images else None
        batches.append((slice(start, stop), result, pngs))
        if on_rows is not None:
            on_rows(stop - start)
    tables, status, peak = [], [], 0.0
    for span, result, pngs in batches:
        rows_carried = carried.slice(span.start, span.stop - span.start)
        if result.source is not None:  # several output rows per input row, in the input's order
            rows_carried = rows_carried.take(pa.array(result.source.numpy(), pa.int64()))
        columns = list(rows_carried.columns)
        columns += plan.method.output_columns(result, slice(None))
        if pngs is not None:
            t0 = time.perf_counter()
            images, encode_seconds, peak_mb = pngs.result()
            seconds["encode_wait"] += time.perf_counter() - t0
            seconds["encode"] += encode_seconds
            peak = max(peak, peak_mb)
            columns.append(pa.array(images, pa.binary()))
        tables.append(pa.Table.from_arrays(columns, schema=plan.schema))
        status.append(result.status.numpy())
    edited = pa.concat_tables(tables) if tables else plan.schema.empty_table()
    reject_table = (
        pa.concat_tables(rejects) if rejects else reject_schema(plan.manifest.id_type).empty_table()
    )
    reasons = count_stop_reasons(np.concatenate(status)) if status else {}
    expanded = any(result.source is not None for _, result, _ in batches)
    return UnitOutput(unit, edited, reject_table, reasons, seconds, peak, n if expanded else None)
