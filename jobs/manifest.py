"""The manifest contract (docs/NOTES.md, "Job contracts") and the checks made before any work starts.

A manifest is one or more Parquet files with these columns:

- ``id``: int (stored as int64) or string, unique across the whole job;
- ``z``: a fixed-size or variable list of float32/float64, exactly z_dim finite values per row;
- ``label``: int in [0, n_classes), required for a conditional generator (else carried as it is);
- per-row edit overrides, all optional, null = the job's setting:
  ``targets`` (map<string, number>, list<struct<name: string, weight: number>>, or a JSON object string
  such as ``{"Smiling": 1, "Eyeglasses": -1}``), ``steps`` (int in [0, max(MAX_ROW_STEPS, --steps)]: a
  row asking for more is rejected, it would hold its whole batch for that long), ``stop_at_prob``
  (float in (0, 1), NaN = never stop early);
- anything else is carried to the output untouched (every column but ``z`` is carried).

Whole-file faults (not Parquet, truncated, empty, no rows, a missing or mistyped column, a z length that
does not fit the generator, columns that differ between files) stop the job before it starts with one
line naming the file and the column. Row faults are found while streaming and go to rejects/.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from zsteer.core.errors import ZsteerError

ID, Z, LABEL, TARGETS, STEPS, STOP_AT_PROB = "id", "z", "label", "targets", "steps", "stop_at_prob"
# Every per-row override column zsteer knows; a method reads those it names (jobs/method.py).
ROW_COLUMNS = (TARGETS, STEPS, STOP_AT_PROB)
# Most steps a row's `steps` value may ask for (or the job's --steps, if larger).
MAX_ROW_STEPS = 10_000
# Columns the job writes; a manifest column of the same name would be ambiguous in the output.
OUTPUT_COLUMNS = (
    "z_edited", "logits_before", "logits_after", "latent_shift", "steps_taken", "stop_reason", "image",
)  # fmt: skip


@dataclass(frozen=True)
class ModelShape:
    """What the models expect of a manifest row."""

    # Length of z the generator takes.
    z_dim: int
    # Classes of a conditional generator (labels must be in [0, n_labels)); 0 = unconditional.
    n_labels: int
    # Classifier outputs, in order: what targets name.
    attributes: tuple[str, ...]


@dataclass(frozen=True)
class InputFile:
    """One manifest file as planned; the job cuts its row groups into units of at most unit_rows rows."""

    # Position in the job's sorted file list: units are named by it, never by anything in the data.
    index: int
    # Resolved path: what rejects name as their source, and job.json's key for the file.
    path: Path
    # Size on disk, modification time, a hash of the Parquet footer (schema, row groups, column chunk
    # offsets and statistics) and rows per row group: with the path, what job.json records to notice
    # a changed input (a file written again with the same size and row count has another footer or mtime).
    size: int
    row_groups: tuple[int, ...]
    # Arrow schema as stored (z of either list type, id of any accepted type).
    schema: pa.Schema
    mtime_ns: int = 0
    footer_hash: str = ""

    @property
    def num_rows(self) -> int:
        return sum(self.row_groups)

    def row_offset(self, row_group: int) -> int:
        """Index in the file of the first row of ``row_group``."""
        return sum(self.row_groups[:row_group])


@dataclass(frozen=True)
class ManifestPlan:
    """The checked inputs of a job."""

    # Every input file, in the job's order (sorted paths): units are done in this order.
    files: tuple[InputFile, ...]
    # Output schema of the carried columns (id first, normalised to int64 or string; z left out).
    carried: pa.Schema
    # Which per-row override columns the manifest has (same in every file: the schemas must agree).
    has_targets: bool
    has_steps: bool
    has_stop_at_prob: bool
    # Whether labels are read and checked (the generator is conditional).
    uses_labels: bool

    @property
    def id_type(self) -> pa.DataType:
        return self.carried.field(ID).type

    @property
    def num_rows(self) -> int:
        return sum(f.num_rows for f in self.files)


def _fail(path: Path, message: str) -> ZsteerError:
    return ZsteerError(f"{path}: {message}")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def footer_hash(path: Path) -> str:
    """BLAKE2b of the file's footer bytes (the thrift metadata before the trailing length and magic).

    Cheap (one small read at the end of the file) and it changes whenever the data is written again:
    the footer holds every column chunk's offsets, sizes and statistics.
    """
    with open(path, "rb") as fh:
        fh.seek(-8, 2)
        tail = fh.read(8)
        length = int.from_bytes(tail[:4], "little")
        fh.seek(-(8 + length), 2)
        return hashlib.blake2b(fh.read(length) + tail, digest_size=16).hexdigest()


def read_footer(index: int, path: Path) -> InputFile:
    """Open ``path``'s footer (no data is read); a file that is not Parquet is a one-line error."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise _fail(path, f"cannot read ({exc.strerror})") from None
    if stat.st_size == 0:
        raise _fail(path, "empty file (0 bytes), not a Parquet file")
    try:
        with pq.ParquetFile(path) as pf:
            meta, schema = pf.metadata, pf.schema_arrow
        digest = footer_hash(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise _fail(path, f"not a readable Parquet file (truncated or corrupt? {_first_line(exc)})") from None
    row_groups = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
    if sum(row_groups) == 0:
        raise _fail(path, "has no rows")
    return InputFile(index, path, stat.st_size, row_groups, schema, stat.st_mtime_ns, digest)


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def targets_column_ok(t: pa.DataType) -> bool:
    """map<string, number>, list<struct<name: string, weight: number>>, or a JSON string."""
    if _is_string(t):
        return True
    if pa.types.is_map(t):
        return _is_string(t.key_type) and _is_number(t.item_type)
    if _is_list(t) and pa.types.is_struct(t.value_type):
        names = {
            t.value_type.field(i).name: t.value_type.field(i).type for i in range(t.value_type.num_fields)
        }
        return set(names) == {"name", "weight"} and _is_string(names["name"]) and _is_number(names["weight"])
    return False


def id_output_type(t: pa.DataType) -> pa.DataType | None:
    """int64 for integer ids (uint64 could overflow: refused), string for strings, None if not an id type."""
    if pa.types.is_integer(t) and t != pa.uint64():
        return pa.int64()
    if _is_string(t):
        return pa.string()
    return None


def check_file(
    file: InputFile,
    shape: ModelShape,
    row_columns: tuple[str, ...] = ROW_COLUMNS,
    output_names: tuple[str, ...] = OUTPUT_COLUMNS,
) -> pa.Schema:
    """The file's carried-columns schema after checking every column the job reads; raises one line.

    ``row_columns``: the per-row override columns the job's method reads (others are only carried);
    ``output_names``: the columns the job writes, which an input column may not shadow.
    """
    schema, path = file.schema, file.path
    names = schema.names
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise _fail(path, f"column {dup!r} appears twice")
    if Z not in names:
        hint = " (an output shard? its edited latents are in z_edited)" if "z_edited" in names else ""
        raise _fail(path, f"no column 'z'{hint}; columns: {', '.join(names[:10])}")
    if ID not in names:
        raise _fail(path, f"no column 'id'; columns: {', '.join(names[:10])}")
    z_type = schema.field(Z).type
    if not (
        _is_list(z_type) and pa.types.is_floating(z_type.value_type) and z_type.value_type != pa.float16()
    ):
        raise _fail(path, f"column 'z' must be a list of float32 or float64, found {z_type}")
    if pa.types.is_fixed_size_list(z_type) and z_type.list_size != shape.z_dim:
        raise _fail(
            path,
            f"column 'z' holds {z_type.list_size} values per row; the generator takes z_dim={shape.z_dim}",
        )
    id_type = schema.field(ID).type
    out_id = id_output_type(id_type)
    if out_id is None:
        raise _fail(path, f"column 'id' must be int64 or string, found {id_type}")
    if shape.n_labels:
        if LABEL not in names:
            raise _fail(path, f"no column 'label': the generator is conditional ({shape.n_labels} classes)")
        if not pa.types.is_integer(schema.field(LABEL).type):
            raise _fail(path, f"column 'label' must be integers, found {schema.field(LABEL).type}")
    if TARGETS in names and TARGETS in row_columns and not targets_column_ok(schema.field(TARGETS).type):
        raise _fail(
            path,
            f"column 'targets' must be map<string, number>, list<struct<name, weight>> or JSON strings, "
            f"found {schema.field(TARGETS).type}",
        )
    if STEPS in names and STEPS in row_columns and not pa.types.is_integer(schema.field(STEPS).type):
        raise _fail(path, f"column 'steps' must be integers, found {schema.field(STEPS).type}")
    if (
        STOP_AT_PROB in names
        and STOP_AT_PROB in row_columns
        and not pa.types.is_floating(schema.field(STOP_AT_PROB).type)
    ):
        raise _fail(path, f"column 'stop_at_prob' must be floats, found {schema.field(STOP_AT_PROB).type}")
    clash = [n for n in names if n in output_names]
    if clash:
        raise _fail(path, f"column {clash[0]!r} has the name of an output column; rename it")
    fields = [pa.field(ID, out_id)] + [schema.field(n) for n in names if n not in (ID, Z)]
    return pa.schema(fields)


def plan_manifest(
    paths: list[Path],
    shape: ModelShape,
    row_columns: tuple[str, ...] = ROW_COLUMNS,
    output_names: tuple[str, ...] = OUTPUT_COLUMNS,
) -> ManifestPlan:
    """Open every file's footer and check it against the models before any row is edited."""
    files = [read_footer(i, p) for i, p in enumerate(paths)]
    carried: pa.Schema | None = None
    for file in files:
        schema = check_file(file, shape, row_columns, output_names)
        if carried is None:
            carried, first = schema, file
            continue
        if set(schema.names) != set(carried.names):
            extra = sorted(set(schema.names) ^ set(carried.names))
            raise _fail(
                file.path, f"columns differ from {first.path} (at {extra[0]!r}); one job needs one schema"
            )
        for name in carried.names:  # the order may differ: columns are read by name
            if schema.field(name).type != carried.field(name).type:
                raise _fail(
                    file.path,
                    f"column {name!r} is {schema.field(name).type} but {carried.field(name).type} "
                    f"in {first.path}",
                )
    assert carried is not None  # resolve_manifests never returns an empty list
    return ManifestPlan(
        files=tuple(files),
        carried=carried,
        has_targets=TARGETS in carried.names and TARGETS in row_columns,
        has_steps=STEPS in carried.names and STEPS in row_columns,
        has_stop_at_prob=STOP_AT_PROB in carried.names and STOP_AT_PROB in row_columns,
        uses_labels=shape.n_labels > 0,
    )
