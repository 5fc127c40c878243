"""Per-row validation of one piece of a unit: the rows to edit, as arrays, and the rejects.

A rejected row gets every reason that applies, joined by "; ". Checks: null / duplicate id, text that is
not valid UTF-8 (any column), null z, wrong z length, null values in z, NaN or Inf in z (after the cast
to float32), a z value beyond MAX_ABS_Z in magnitude, null or out-of-range label (conditional
generators), unusable per-row targets / steps (negative, or above max(MAX_ROW_STEPS, --steps)) /
stop_at_prob, and later copies of an id (the job's first row with an id wins, duplicates.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from zsteer.core.status import MAX_ABS_Z  # the bound of a latent's values (jobs import it from here too)

from .duplicates import DuplicateIndex, id_keys, position
from .manifest import (
    ID,
    LABEL,
    MAX_ROW_STEPS,
    STEPS,
    STOP_AT_PROB,
    TARGETS,
    InputFile,
    ManifestPlan,
    ModelShape,
    Z,
)
from .method import EditMethod, needs_targets, row_inputs
from .targets import TargetParser


def reject_schema(id_type: pa.DataType) -> pa.Schema:
    """rejects/*.parquet: source file, row index in that file, id (null when unreadable), reason."""
    return pa.schema([("source", pa.string()), ("row", pa.int64()), (ID, id_type), ("reason", pa.string())])


def reject_table(id_type: pa.DataType, source: str, rows, ids, reasons: list[str]) -> pa.Table:
    """Rejects of one chunk; ``ids`` is an Arrow array (or None: all unreadable)."""
    n = len(reasons)
    return pa.table(
        {
            "source": pa.array([source] * n, pa.string()),
            "row": pa.array(rows, pa.int64()),
            ID: ids if ids is not None else pa.nulls(n, id_type),
            "reason": pa.array(reasons, pa.string()),
        },
        schema=reject_schema(id_type),
    )


@dataclass(frozen=True)
class Unit:
    """A unit of work and of resume: at most ``unit_rows`` consecutive rows of one row group.

    A row group is cut into chunks of the job's ``unit_rows`` (recorded in job.json, so a resume cuts
    the same way): however big a row group is, a unit is committed, and a stop loses, a bounded amount
    of work.
    """

    file: int  # index in the job's sorted file list
    row_group: int
    chunk: int = 0  # the unit's rows are [chunk * unit_rows, ...) of its row group
    start: int = 0  # index in its file of the unit's first row
    n_rows: int = 0

    @property
    def key(self) -> str:
        return f"{self.file}:{self.row_group}:{self.chunk}"


def plan_units(plan: ManifestPlan, unit_rows: int) -> list[Unit]:
    """Every unit of the job, in job order (files, row groups, chunks)."""
    units = []
    for file in plan.files:
        offset = 0
        for group, rows in enumerate(file.row_groups):
            for chunk, first in enumerate(range(0, rows, unit_rows)):
                units.append(Unit(file.index, group, chunk, offset + first, min(unit_rows, rows - first)))
            offset += rows
    return units


@dataclass
class RowChunk:
    """Rows read together from one unit, split into rows to edit and rejects."""

    unit: Unit
    n_rows: int  # rows read (to edit + rejected): what the writer counts a unit's completion by
    last: bool  # the unit's last chunk
    carried: pa.Table  # [n] id + carried columns of the rows to edit (output schema)
    z: np.ndarray  # [n, z_dim] float32
    weights: np.ndarray  # [n, A] float32 signed target weights
    preserve: np.ndarray  # [n, A] float32 1.0 = hold in place
    labels: np.ndarray | None  # [n] int64 class per row (conditional generators), else None
    max_steps: np.ndarray  # [n] int32 step budget per row
    stop_prob: np.ndarray  # [n] float32 stop probability per row, NaN = never
    rejects: pa.Table | None  # rows rejected from this chunk, or None
    # The method's own per-row inputs of the rows to edit (method.row_inputs): name -> [n, ...].
    extra: dict[str, np.ndarray] | None = None

    @property
    def n_edit(self) -> int:
        return len(self.z)


@dataclass(frozen=True)
class RowDefaults:
    """Job-wide settings a row uses when it has no override."""

    weights: np.ndarray  # [A] the job's targets (zeros when every row brings its own)
    preserve_mask: np.ndarray | None  # [A] the job's --preserve set, None = every non-target
    steps: int  # --steps: the step budget of rows without a `steps` value
    stop_prob: float  # --stop-at-prob of rows without a `stop_at_prob` value; NaN = never


class Reasons:
    """Reasons per row, collected check by check (rejects are rare, so a dict beats string arrays)."""

    def __init__(self, n: int):
        self.bad = np.zeros(n, bool)
        self.text: dict[int, list[str]] = {}

    def add(self, mask: np.ndarray, message) -> None:
        """Reject rows where ``mask``; ``message`` is a string or a function of the row index."""
        self.add_rows(np.flatnonzero(mask), message)

    def add_rows(self, rows: np.ndarray, message) -> None:
        for i in rows:
            self.text.setdefault(int(i), []).append(message if isinstance(message, str) else message(i))
        self.bad[rows] = True

    def joined(self, rows: np.ndarray) -> list[str]:
        return ["; ".join(self.text[int(i)]) for i in rows]


def _mask(arr: pa.Array) -> np.ndarray:
    return arr.to_numpy(zero_copy_only=False).astype(bool)


def largest_magnitudes(block: np.ndarray) -> np.ndarray:
    """The largest finite |value| of each row [k] of latents [k, z_dim]: a row above MAX_ABS_Z is refused
    (a row's z here; an interpolation's end point in jobs/latent_lookup.py)."""
    return np.abs(np.where(np.isfinite(block), block, 0)).max(axis=1)


def too_large(column: str, largest: float) -> str:
    """The reject reason of a latent in ``column`` whose largest value is beyond MAX_ABS_Z."""
    return (
        f"{column} has a value of magnitude {largest:.4g}, above the {MAX_ABS_Z:g} a latent may have "
        "(z ~ N(0, I) stays within about 6)"
    )


def _check_z(column: pa.Array, z_dim: int, reasons: Reasons) -> np.ndarray:
    """z as [n, z_dim] float32 (zeros in rows that fail); adds the reasons of the rows that fail."""
    n = len(column)
    null = _mask(column.is_null())
    reasons.add(null, "z is null")
    if pa.types.is_fixed_size_list(column.type):
        good = ~null  # the length was checked against z_dim for the whole file
    else:
        lengths = pc.list_value_length(column).fill_null(z_dim).to_numpy(zero_copy_only=False)
        wrong = lengths != z_dim
        reasons.add(wrong, lambda i: f"z has {lengths[i]} values, expected {z_dim}")
        good = ~null & ~wrong
    z = np.zeros((n, z_dim), np.float32)
    rows = np.flatnonzero(good)
    if not len(rows):
        return z
    # [k * z_dim]; flatten() respects slice offsets (.values would not) and skips null lists
    values = (column if len(rows) == n else column.filter(pa.array(good))).flatten()
    if values.null_count:
        has_null = _mask(values.is_null()).reshape(-1, z_dim).any(axis=1)
        reasons.add_rows(rows[has_null], "z has null values")
        values = values.fill_null(0.0)
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, rejected below
        block = values.to_numpy(zero_copy_only=False).reshape(-1, z_dim).astype(np.float32)  # [k, z_dim]
    finite = np.isfinite(block).all(axis=1)
    if not finite.all():
        reasons.add_rows(rows[~finite], "z has NaN or Inf (as float32)")
    largest = largest_magnitudes(block)  # [k]
    far = finite & (largest > MAX_ABS_Z)
    if far.any():
        reasons.add_rows(rows[far], lambda i: too_large("z", largest[np.searchsorted(rows, i)]))
    z[rows] = block
    return z


def _has_text(t: pa.DataType) -> bool:
    """Whether values of type ``t`` hold strings, at any depth (lists, structs, maps, dictionaries)."""
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return True
    if pa.types.is_dictionary(t):
        return _has_text(t.value_type)
    return any(_has_text(t.field(i).type) for i in range(t.num_fields))


def invalid_text(batch: pa.RecordBatch) -> dict[str, np.ndarray]:
    """{column: [n] bool, the rows whose strings are not valid UTF-8} for each column that has such rows.

    Parquet readers do not check the UTF-8 of strings, and decoding one in Python raises mid-job; such a
    row is rejected, and its value never reaches a shard that another reader would fail on. Whole
    columns are checked in C++ (``validate(full=True)``); rows one by one only in a column that failed.
    """
    bad: dict[str, np.ndarray] = {}
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        if not _has_text(column.type):
            continue
        try:
            column.validate(full=True)
        except pa.ArrowInvalid:
            # take, not slice: a slice of a struct or list shares its children whole, and would fail
            # for a neighbour's value
            rows = (column.take(pa.array([i], pa.int64())) for i in range(len(column)))
            bad[name] = np.array([not _valid(row) for row in rows], bool)
    return bad


def _valid(column: pa.Array) -> bool:
    try:
        column.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _without_invalid_text(
    batch: pa.RecordBatch, bad: dict[str, np.ndarray], reasons: Reasons
) -> pa.RecordBatch:
    """``batch`` with the invalid values of ``bad`` nulled (their rows rejected, naming the column)."""
    columns = list(batch.columns)
    for name, rows in bad.items():
        reasons.add(rows, f"column {name!r} holds text that is not valid UTF-8")
        i = batch.schema.get_field_index(name)
        columns[i] = pc.if_else(pa.array(rows), pa.scalar(None, columns[i].type), columns[i])
    return pa.RecordBatch.from_arrays(columns, schema=batch.schema)


def _int_values(column: pa.Array, fill: int) -> tuple[np.ndarray, np.ndarray]:
    """(values [n] int64 with nulls filled, null mask [n])."""
    return column.fill_null(fill).to_numpy(zero_copy_only=False).astype(np.int64), _mask(column.is_null())


class RowValidator:
    """Validates pieces of a job's units; each piece on its own (duplicates come from the job's index)."""

    def __init__(
        self,
        plan: ManifestPlan,
        shape: ModelShape,
        defaults: RowDefaults,
        duplicates: DuplicateIndex,
        method: EditMethod | None = None,  # reads its own per-row columns (row_inputs); None: none
    ):
        self.plan = plan
        self.shape = shape
        self.defaults = defaults
        self.duplicates = duplicates
        self.method = method
        self.needs_targets = method is None or needs_targets(method)
        self.targets = TargetParser(shape.attributes) if plan.has_targets else None

    def unreadable(self, unit: Unit, offset: int, n_rows: int, reason: str) -> RowChunk:
        """Every row of a part of a row group that cannot be read, as rejects (ids unknown)."""
        file = self.plan.files[unit.file]
        a = len(self.shape.attributes)
        return RowChunk(
            unit=unit, n_rows=n_rows, last=True, carried=self.plan.carried.empty_table(),
            z=np.zeros((0, self.shape.z_dim), np.float32), weights=np.zeros((0, a), np.float32),
            preserve=np.zeros((0, a), np.float32),
            labels=np.zeros(0, np.int64) if self.plan.uses_labels else None,
            max_steps=np.zeros(0, np.int32), stop_prob=np.zeros(0, np.float32),
            rejects=reject_table(
                self.plan.id_type, str(file.path), np.arange(offset, offset + n_rows), None, [reason] * n_rows
            ),
        )  # fmt: skip

    def validate(self, unit: Unit, offset: int, batch: pa.RecordBatch, last: bool) -> RowChunk:
        """Split ``batch`` (rows ``offset``.. of its file, in ``plan.conform``'s columns) into rows to edit
        and rejects."""
        file: InputFile = self.plan.files[unit.file]
        n, shape, d = batch.num_rows, self.shape, self.defaults
        reasons = Reasons(n)
        id_null = _mask(batch.column(ID).is_null())
        reasons.add(id_null, "id is null")
        bad_text = invalid_text(batch)
        if bad_text:
            batch = _without_invalid_text(batch, bad_text, reasons)
            id_null |= bad_text.get(ID, False)  # an id that is not text is unknown: null in rejects
        ids = batch.column(ID)
        ids = ids.cast(self.plan.id_type)  # int64 or string (safe cast: uint64 was refused)
        z = _check_z(batch.column(Z), shape.z_dim, reasons)

        labels = None
        if self.plan.uses_labels:
            labels, null = _int_values(batch.column(LABEL), 0)
            reasons.add(null, "label is null")
            out = ~null & ((labels < 0) | (labels >= shape.n_labels))
            reasons.add(out, lambda i: f"label {labels[i]} out of range [0, {shape.n_labels})")

        weights = np.broadcast_to(d.weights, (n, len(d.weights)))  # [n, A], no copy without overrides
        has_own = np.zeros(n, bool)
        if self.targets is not None:
            own, has_own, errors = self.targets.parse_column(batch.column(TARGETS))
            for i, text in errors.items():
                reasons.add_rows(np.array([i]), text)
            weights = np.where(has_own[:, None], own, weights)
            has_own[list(errors)] = True  # already rejected for its targets: no second reason
        if not d.weights.any() and self.needs_targets:
            reasons.add(~has_own, "no targets: the row's targets are null and no --target was given")

        max_steps = np.full(n, d.steps, np.int32)
        if self.plan.has_steps:
            steps, null = _int_values(batch.column(STEPS), d.steps)
            cap = max(MAX_ROW_STEPS, d.steps)
            reasons.add(steps < 0, lambda i: f"steps {steps[i]} is negative")
            reasons.add(
                steps > cap, lambda i: f"steps {steps[i]} is above the most a row may ask for ({cap})"
            )
            max_steps = np.clip(steps, 0, cap).astype(np.int32)

        stop_prob = np.full(n, d.stop_prob, np.float32)
        if self.plan.has_stop_at_prob:
            col = batch.column(STOP_AT_PROB)
            own_p = col.fill_null(math.nan).to_numpy(zero_copy_only=False).astype(np.float64)
            null = _mask(col.is_null())
            bad = ~null & ~np.isnan(own_p) & ~((own_p > 0) & (own_p < 1))
            reasons.add(bad, lambda i: f"stop_at_prob {own_p[i]} is not in (0, 1) (NaN = never)")
            stop_prob = np.where(null, stop_prob, own_p).astype(np.float32)

        extra: dict[str, np.ndarray] | None = None
        if self.method is not None:
            extra, own_reasons = row_inputs(self.method, batch, shape)
            for i, text in sorted(own_reasons.items()):
                reasons.add_rows(np.array([i]), text)

        # A later copy of an id is rejected whatever else holds for it (duplicates.py has the rule).
        named = np.flatnonzero(~id_null)
        if len(self.duplicates) and len(named):
            named_ids = ids.take(pa.array(named, pa.int64()))
            later = self.duplicates.later_rows(id_keys(named_ids), position(unit.file, offset + named))
            if later.any():
                shown = named_ids.filter(pa.array(later)).to_pylist()
                text = dict(zip(named[later].tolist(), shown, strict=True))
                reasons.add_rows(named[later], lambda i: self._duplicate_reason(text[int(i)]))

        keep = np.flatnonzero(~reasons.bad)
        rejects = None
        if reasons.bad.any():
            bad_rows = np.flatnonzero(reasons.bad)
            rejects = reject_table(
                self.plan.id_type, str(file.path), bad_rows + offset,
                ids.take(pa.array(bad_rows, pa.int64())), reasons.joined(bad_rows),
            )  # fmt: skip
        weights = np.ascontiguousarray(weights[keep], np.float32)  # [k, A]
        preserve = (weights == 0).astype(np.float32)  # every non-target (engine.default_preserve) ...
        if d.preserve_mask is not None:
            preserve *= d.preserve_mask  # ... or only the --preserve set
        return RowChunk(
            unit=unit, n_rows=n, last=last, carried=self._carried(batch, ids).take(pa.array(keep, pa.int64())),
            z=z[keep], weights=weights, preserve=preserve, labels=None if labels is None else labels[keep],
            max_steps=max_steps[keep], stop_prob=stop_prob[keep], rejects=rejects,
            extra={k: v[keep] for k, v in extra.items()} if extra else None,
        )  # fmt: skip

    def _duplicate_reason(self, value) -> str:
        key = int(id_keys(pa.array([value], self.plan.id_type))[0])
        file, row = self.duplicates.first_of(key)
        return f"duplicate id {value!r} (first in {self.plan.files[file].path.name}, row {row})"

    def _carried(self, batch: pa.RecordBatch, ids: pa.Array) -> pa.Table:
        """id (normalised) + every other column but z, by name, in the job's column order."""
        columns = [ids] + [batch.column(name) for name in self.plan.carried.names[1:]]
        return pa.Table.from_arrays(columns, schema=self.plan.carried)
