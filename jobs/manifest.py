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

Files of one job may differ in layout (``unify_schemas``): z of either float width and list kind, id of
any accepted integer width, and a column that only some files have (null in the rows of the others).
The carried columns of the output are the union of the files' columns, each with the narrowest type
that holds every file's values without loss; the same column with types that no type holds without
loss (a string in one file, an integer in another; string ids and integer ids) is a conflict.

Whole-file faults (not Parquet, truncated, empty, no rows, a missing or mistyped column, a z length that
does not fit the generator, a column whose types conflict between files) stop the job before it starts
with one line naming the file and the column (and the other file, for a conflict). Row faults are found
while streaming and go to rejects/.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pyarrow as pa

from zsteer.core.errors import ZsteerError, first_line

from .storage import AnyPath, storage_of

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
    # Resolved path, or a StorePath for a URI (jobs/storage.py, shown as the URI): what rejects name as
    # their source, and job.json's key for the file.
    path: AnyPath
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
    # Output schema of the carried columns: id first (int64 or string), then the union of every file's
    # other columns but z, widened to one type each (unify_schemas); the same for every unit of the job.
    carried: pa.Schema
    # Which per-row override columns the manifest has (in any file: rows of the others have none).
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

    def conform(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """A batch read from any file of the job, as the job reads it: the carried columns in the plan's
        order and types (all null where the file lacks one), then z as stored (rows.py reads either kind).
        """
        columns, fields = [], list(self.carried)
        names = batch.schema.names
        for f in fields:
            if f.name not in names:
                columns.append(pa.nulls(batch.num_rows, f.type))
                continue
            column = batch.column(f.name)
            columns.append(column if column.type == f.type else column.cast(f.type))
        z = batch.column(Z)
        columns.append(z)
        fields.append(pa.field(Z, z.type))
        return pa.RecordBatch.from_arrays(columns, schema=pa.schema(fields))


def _fail(path: AnyPath, message: str) -> ZsteerError:
    return ZsteerError(f"{path}: {message}")


def is_os_fault(exc: BaseException) -> bool:
    """An error of the operating system (it has an errno), as opposed to one of decoding the data.

    pyarrow raises OSError for both: decoding faults of Parquet ("Corrupt snappy compressed data",
    "Couldn't deserialize thrift") carry no errno, failed system calls do.
    """
    return isinstance(exc, OSError) and exc.errno is not None


def stat_matches(file: InputFile, stat) -> bool:
    """Whether a stat of ``file`` (None: not there) shows the size and modification time it was planned
    with: the first test of ``is_unchanged``, and of a reader opening the file (reader.py)."""
    return (
        stat is not None and stat.size == file.size and not (file.mtime_ns and stat.mtime_ns != file.mtime_ns)
    )


def is_unchanged(file: InputFile) -> bool:
    """Whether ``file`` on disk is still the one planned: size, modification time and footer hash.

    A stat and one small read; raises OSError when the file cannot be reached at all. Readers call it
    after reading, before what they read is used for good (reader.py, duplicates.py): a file written
    again in place is read through an open handle under its old footer, so a check at open is not enough.
    """
    stat = storage_of(file.path).stat(file.path, missing_ok=False)
    if not stat_matches(file, stat):
        return False
    if not file.footer_hash:
        return True
    try:
        return footer_hash(file.path) == file.footer_hash
    except (OSError, ValueError):  # a footer length that points nowhere: not the planned file
        return False


def footer_hash(path: AnyPath) -> str:
    """BLAKE2b of the file's footer bytes (the thrift metadata before the trailing length and magic).

    Cheap (one small read at the end of the file) and it changes whenever the data is written again:
    the footer holds every column chunk's offsets, sizes and statistics.
    """
    with storage_of(path).open_input(path) as fh:
        fh.seek(-8, 2)
        tail = fh.read(8)
        length = int.from_bytes(tail[:4], "little")
        fh.seek(-(8 + length), 2)
        return hashlib.blake2b(fh.read(length) + tail, digest_size=16).hexdigest()


def read_footer(index: int, path: AnyPath) -> InputFile:
    """Open ``path``'s footer (no data is read); a file that is not Parquet is a one-line error."""
    storage = storage_of(path)
    try:
        stat = storage.stat(path)
    except OSError as exc:
        raise _fail(path, f"cannot read ({exc.strerror or exc})") from None
    if stat is None:
        raise _fail(path, "cannot read (No such file or directory)")
    if stat.size == 0:
        raise _fail(path, "empty file (0 bytes), not a Parquet file")
    try:
        with storage.parquet_file(path) as pf:
            meta, schema = pf.metadata, pf.schema_arrow
        digest = footer_hash(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise _fail(path, f"not a readable Parquet file (truncated or corrupt? {first_line(exc)})") from None
    row_groups = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
    if sum(row_groups) == 0:
        raise _fail(path, "has no rows")
    return InputFile(index, path, stat.size, row_groups, schema, stat.mtime_ns, digest)


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
    schema, path = _decoded(file.schema), file.path
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
    # An override column of type null (all null: a writer that saw no values) is no override at all.
    overrides = [n for n in names if n in row_columns and not pa.types.is_null(schema.field(n).type)]
    if TARGETS in overrides and not targets_column_ok(schema.field(TARGETS).type):
        raise _fail(
            path,
            f"column 'targets' must be map<string, number>, list<struct<name, weight>> or JSON strings, "
            f"found {schema.field(TARGETS).type}",
        )
    if STEPS in overrides and not pa.types.is_integer(schema.field(STEPS).type):
        raise _fail(path, f"column 'steps' must be integers, found {schema.field(STEPS).type}")
    if STOP_AT_PROB in overrides and not pa.types.is_floating(schema.field(STOP_AT_PROB).type):
        raise _fail(path, f"column 'stop_at_prob' must be floats, found {schema.field(STOP_AT_PROB).type}")
    clash = [n for n in names if n in output_names]
    if clash:
        raise _fail(path, f"column {clash[0]!r} has the name of an output column; rename it")
    fields = [pa.field(ID, out_id)] + [schema.field(n) for n in names if n not in (ID, Z)]
    return pa.schema(fields)


def _decoded(schema: pa.Schema) -> pa.Schema:
    """``schema`` with each dictionary-encoded column as its values: the job reads them so
    (ManifestPlan.conform decodes them). A row taken from a dictionary array keeps the whole dictionary,
    so a check of one row's text would see every value, and a shard would carry values none of its rows
    hold. Parquet dictionary-encodes the output's pages anyway."""
    return pa.schema(
        [f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f for f in schema]
    )


def _widen_int(a: pa.DataType, b: pa.DataType) -> pa.DataType | None:
    """The narrowest integer type holding every value of both; None for uint64 with a signed type."""
    signed = [t.bit_width for t in (a, b) if pa.types.is_signed_integer(t)]
    unsigned = [t.bit_width for t in (a, b) if pa.types.is_unsigned_integer(t)]
    if not signed:
        return getattr(pa, f"uint{max(unsigned)}")()
    width = max(signed + [2 * w for w in unsigned])  # uintN fits in int(2N)
    return getattr(pa, f"int{width}")() if width <= 64 else None


def widen(a: pa.DataType, b: pa.DataType) -> pa.DataType | None:
    """The type that ``a`` and ``b`` both cast to without losing a value, or None (a conflict).

    Lossless widenings only: null to anything, integers to a wider integer, floats to a wider float,
    string to large_string (binary alike), a dictionary to its values, fixed-size or variable lists to a
    list of the widened values, maps and structs (same fields) member by member. Integer with float, or
    anything with a string, is a conflict: float64 cannot hold every int64, and a job that silently
    turned one file's numbers into text would change the user's data.
    """
    if a == b:
        return a
    if pa.types.is_null(a) or pa.types.is_null(b):
        return b if pa.types.is_null(a) else a
    if pa.types.is_dictionary(a) or pa.types.is_dictionary(b):
        return widen(
            a.value_type if pa.types.is_dictionary(a) else a, b.value_type if pa.types.is_dictionary(b) else b
        )
    if pa.types.is_integer(a) and pa.types.is_integer(b):
        return _widen_int(a, b)
    if pa.types.is_floating(a) and pa.types.is_floating(b):
        return a if a.bit_width > b.bit_width else b
    for kinds, large in ((_is_string, pa.large_string()), (_is_binary, pa.large_binary())):
        if kinds(a) and kinds(b):
            return large  # they differ, so one of them is large
    if _is_list(a) and _is_list(b):
        value = widen(a.value_type, b.value_type)
        if value is None:
            return None
        field = a.value_field.with_type(value).with_nullable(a.value_field.nullable or b.value_field.nullable)
        if pa.types.is_fixed_size_list(a) and pa.types.is_fixed_size_list(b) and a.list_size == b.list_size:
            return pa.list_(field, a.list_size)
        return (
            pa.large_list(field)
            if pa.types.is_large_list(a) or pa.types.is_large_list(b)
            else pa.list_(field)
        )
    if pa.types.is_map(a) and pa.types.is_map(b):
        key, item = widen(a.key_type, b.key_type), widen(a.item_type, b.item_type)
        return None if key is None or item is None else pa.map_(key, item)
    if pa.types.is_struct(a) and pa.types.is_struct(b):
        names = [a.field(i).name for i in range(a.num_fields)]
        if names != [b.field(i).name for i in range(b.num_fields)]:
            return None
        types = [widen(a.field(i).type, b.field(i).type) for i in range(a.num_fields)]
        if any(t is None for t in types):
            return None
        return pa.struct([a.field(i).with_type(t) for i, t in enumerate(types)])
    return None


def _is_binary(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def _kind(t: pa.DataType) -> str:
    """How a conflict names a type: ids as strings or integers, anything else by its Arrow name."""
    return "strings" if _is_string(t) else "integers" if pa.types.is_integer(t) else str(t)


def unify_schemas(files: list[InputFile], schemas: list[pa.Schema]) -> pa.Schema:
    """One carried schema for the whole job from each file's (check_file): the union of the columns, in
    order of first appearance, each with the type every file's values widen to; a column that some file
    lacks is nullable. A conflict is one line naming both files (the later one first).
    """
    merged: dict[str, pa.Field] = {}
    for file, schema in zip(files, schemas, strict=True):
        for field in schema:
            old = merged.get(field.name)
            if old is None:
                merged[field.name] = field
                continue
            wide = widen(old.type, field.type)
            if wide is None:
                raise _conflict(files, schemas, file, field)
            merged[field.name] = old.with_type(wide).with_nullable(old.nullable or field.nullable)
    for name, field in merged.items():
        if not all(name in schema.names for schema in schemas):
            merged[name] = field.with_nullable(True)  # null in the rows of the files without it
    return pa.schema(list(merged.values()))


def _conflict(
    files: list[InputFile], schemas: list[pa.Schema], file: InputFile, field: pa.Field
) -> ZsteerError:
    """The conflict of ``field`` of ``file`` with the earliest file whose own type of it does not widen."""
    earlier = [
        (f, s.field(field.name).type)
        for f, s in zip(files, schemas, strict=True)
        if f.index < file.index and field.name in s.names
    ]
    other, other_type = next(((f, t) for f, t in earlier if widen(t, field.type) is None), earlier[0])
    here = field.type
    if field.name == ID:
        detail = f"holds {_kind(here)} but {_kind(other_type)} in {other.path}; one job needs one kind of id"
    else:
        detail = (
            f"is {here} but {other_type} in {other.path}; no type holds both without loss "
            "(convert one of the files, or edit them as separate jobs)"
        )
    return _fail(file.path, f"column {field.name!r} {detail}")


def _has_overrides(carried: pa.Schema, name: str, row_columns: tuple[str, ...]) -> bool:
    """Whether the job reads override column ``name``: the method reads it, and some file has values."""
    return name in row_columns and name in carried.names and not pa.types.is_null(carried.field(name).type)


def plan_manifest(
    paths: list[AnyPath],
    shape: ModelShape,
    row_columns: tuple[str, ...] = ROW_COLUMNS,
    output_names: tuple[str, ...] = OUTPUT_COLUMNS,
) -> ManifestPlan:
    """Open every file's footer, check it against the models and unify the files' schemas, before any
    row is edited."""
    files = [read_footer(i, p) for i, p in enumerate(paths)]
    carried = unify_schemas(files, [check_file(file, shape, row_columns, output_names) for file in files])
    return ManifestPlan(
        files=tuple(files),
        carried=carried,
        has_targets=_has_overrides(carried, TARGETS, row_columns),
        has_steps=_has_overrides(carried, STEPS, row_columns),
        has_stop_at_prob=_has_overrides(carried, STOP_AT_PROB, row_columns),
        uses_labels=shape.n_labels > 0,
    )
