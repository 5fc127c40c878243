"""Manifests made of several files of different layouts (issue 14, part 4): what unifies, what conflicts.

The rule is manifest.unify_schemas: the output's carried columns are the union of the files' columns,
each widened without loss to one type; a column a file lacks is null in its rows; a real conflict is one
line naming both files.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jobkit import Z_DIM, crash_at_commit, job_config, latents, read_parts, read_rejects

from zsteer.core.errors import ZsteerError
from zsteer.jobs.manifest import widen
from zsteer.jobs.runner import run_job

pytestmark = pytest.mark.usefixtures("single_thread")

Z = latents(12)


def _z(rows: slice, kind: str) -> pa.Array:
    """The rows' z as a fixed-size float32 list, a variable float64 list or a large float32 list."""
    block = Z[rows]
    if kind == "fixed32":
        return pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), Z_DIM)
    if kind == "list64":
        return pa.array(block.astype(np.float64).tolist(), pa.list_(pa.float64()))
    return pa.array(block.tolist(), pa.large_list(pa.float32()))


def _write(path, columns: dict, row_group_size: int = 2):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def _three_layouts(data):
    """12 rows in three files that each hold some of the columns, in other types."""
    _write(
        data / "a.parquet",
        {"id": pa.array(range(4), pa.int32()), "z": _z(slice(0, 4), "list64"),
         "note": pa.array(["a0", "a1", "a2", "a3"]), "score": pa.array([0.5, 1.5, 2.5, 3.5], pa.float32())},
    )  # fmt: skip
    _write(
        data / "b.parquet",
        {"id": pa.array(range(4, 8), pa.int64()), "z": _z(slice(4, 8), "fixed32"),
         "score": pa.array([4.25, 5.25, None, 7.25], pa.float64()), "count": pa.array([1, 2, 3, 4], pa.int16()),
         "note": pa.array(["b4", "b5", "b6", "b7"]).dictionary_encode()},
    )  # fmt: skip
    _write(
        data / "c.parquet",
        {"id": pa.array(range(8, 12), pa.uint16()), "z": _z(slice(8, 12), "large32"),
         "count": pa.array([5, 6, 7, 8], pa.int64()), "tags": pa.array([["x"], [], None, ["y", "z"]]),
         "note": pa.array(["c8", "c9", "c10", "c11"], pa.large_string())},
    )  # fmt: skip
    return data


def test_files_of_other_layouts_make_one_job_with_the_union_of_their_columns(tmp_path, job_models):
    data = _three_layouts(tmp_path / "data")
    out = tmp_path / "job"
    assert run_job(job_config(data, out, job_models)).status == "complete"
    assert read_rejects(out) is None
    parts = read_parts(out).sort_by("id")
    # id first, then every column in order of first appearance, each widened without loss.
    assert parts.schema.names[:5] == ["id", "note", "score", "count", "tags"]
    types = {f.name: f.type for f in parts.schema}
    assert types["id"] == pa.int64() and types["note"] == pa.large_string()
    assert types["score"] == pa.float64() and types["count"] == pa.int64()
    assert types["tags"] == pa.list_(pa.string())
    rows = parts.to_pydict()
    assert rows["id"] == list(range(12))
    assert rows["note"] == ["a0", "a1", "a2", "a3", "b4", "b5", "b6", "b7", "c8", "c9", "c10", "c11"]
    assert rows["score"] == [0.5, 1.5, 2.5, 3.5, 4.25, 5.25, None, 7.25, None, None, None, None]
    assert rows["count"] == [None] * 4 + [1, 2, 3, 4, 5, 6, 7, 8]
    assert rows["tags"] == [None] * 8 + [["x"], [], None, ["y", "z"]]
    # Every shard of the job has the one schema, whatever file its rows came from.
    shards = sorted((out / "parts").glob("part-*.parquet"))
    assert len(shards) == 6 and all(pq.read_schema(s) == parts.schema for s in shards)
    job = json.loads((out / "job.json").read_text())
    assert job["identity"]["columns"][:4] == [
        ["id", "int64"], ["note", "large_string"], ["score", "double"], ["count", "int64"],
    ]  # fmt: skip
    assert job["identity"]["columns"][4][0] == "tags"


def test_a_row_is_edited_the_same_whatever_the_layout_of_its_file(tmp_path, job_models):
    data = _three_layouts(tmp_path / "data")
    run_job(job_config(data, tmp_path / "mixed", job_models))
    one = _write(
        tmp_path / "one" / "m.parquet", {"id": pa.array(range(12)), "z": _z(slice(0, 12), "fixed32")}
    )
    run_job(job_config(one, tmp_path / "single", job_models))
    mixed, single = (
        read_parts(tmp_path / "mixed").sort_by("id"),
        read_parts(tmp_path / "single").sort_by("id"),
    )
    assert mixed.column("z_edited").equals(single.column("z_edited"))
    assert mixed.column("logits_after").equals(single.column("logits_after"))


def test_overrides_in_some_files_only_leave_the_other_rows_on_the_job_settings(tmp_path, job_models):
    data = tmp_path / "data"
    _write(data / "a.parquet", {"id": pa.array([0, 1]), "z": _z(slice(0, 2), "fixed32")})
    _write(
        data / "b.parquet",
        {"id": pa.array([2, 3]), "z": _z(slice(2, 4), "fixed32"), "steps": pa.array([0, None], pa.int32()),
         "targets": pa.array(['{"attr3": 1}', None])},
    )  # fmt: skip
    out = tmp_path / "job"
    run_job(job_config(data, out, job_models))  # --steps 3, --target attr1
    parts = read_parts(out).sort_by("id").to_pydict()
    assert parts["steps_taken"] == [3, 3, 0, 3]
    assert parts["steps"] == [None, None, 0, None] and parts["targets"] == [None, None, '{"attr3": 1}', None]


def test_a_resumed_union_job_equals_an_uninterrupted_one(tmp_path, job_models, monkeypatch):
    data = _three_layouts(tmp_path / "data")
    whole = tmp_path / "whole"
    run_job(job_config(data, whole, job_models, unit_rows=2))
    out = tmp_path / "crashed"
    crash_at_commit(monkeypatch, 3, job_config(data, out, job_models, unit_rows=2))
    assert run_job(job_config(data, out, job_models, unit_rows=2)).status == "complete"
    assert read_parts(out).sort_by("id").equals(read_parts(whole).sort_by("id"))


@pytest.mark.parametrize(
    ("a", "b", "fragment"),
    [
        (pa.array(["x", "y"]), pa.array([1, 2]), "column 'note' is int64 but string in"),
        (pa.array([1, 2]), pa.array([1.5, 2.5]), "column 'note' is double but int64 in"),
        (pa.array([1, 2], pa.int64()), pa.array([1, 2], pa.uint64()), "column 'note' is uint64 but int64 in"),
        (pa.array([[1.0]]), pa.array(["x"]), "column 'note' is string but list<element: double> in"),
        (
            pa.array([{"p": 1}, {"p": 2}]),
            pa.array([{"q": 1}, {"q": 2}]),
            "column 'note' is struct<q: int64> but struct<p: int64> in",
        ),
    ],
)
def test_a_column_of_conflicting_types_is_one_line_naming_both_files(tmp_path, job_models, a, b, fragment):
    data = tmp_path / "data"
    first = _write(
        data / "a.parquet",
        {"id": pa.array([0, 1][: len(a)]), "z": _z(slice(0, len(a)), "fixed32"), "note": a},
    )
    later = _write(
        data / "b.parquet",
        {"id": pa.array([2, 3][: len(b)]), "z": _z(slice(2, 2 + len(b)), "fixed32"), "note": b},
    )
    with pytest.raises(ZsteerError) as info:
        run_job(job_config(data, tmp_path / "job", job_models))
    text = str(info.value)
    assert text.startswith(f"{later.resolve()}: {fragment} {first.resolve()};") and "\n" not in text
    assert not (tmp_path / "job").exists()


def test_string_ids_and_integer_ids_conflict(tmp_path, job_models):
    data = tmp_path / "data"
    _write(data / "a.parquet", {"id": pa.array([0, 1], pa.int32()), "z": _z(slice(0, 2), "fixed32")})
    _write(data / "b.parquet", {"id": pa.array([2, 3]), "z": _z(slice(2, 4), "list64")})
    later = _write(data / "c.parquet", {"id": pa.array(["p", "q"]), "z": _z(slice(4, 6), "fixed32")})
    with pytest.raises(ZsteerError) as info:
        run_job(job_config(data, tmp_path / "job", job_models))
    assert str(info.value) == (
        f"{later.resolve()}: column 'id' holds strings but integers in {(data / 'a.parquet').resolve()}; "
        "one job needs one kind of id"
    )


def test_a_later_conflict_names_the_file_whose_type_it_cannot_join(tmp_path, job_models):
    """int8 and uint32 widen to int64, which uint64 cannot join; uint64 conflicts with the int8 file."""
    data = tmp_path / "data"
    for name, values in (("a", pa.array([1, 2], pa.uint32())), ("b", pa.array([1, 2], pa.int8()))):
        _write(
            data / f"{name}.parquet",
            {"id": pa.array([ord(name), ord(name) + 10]), "z": _z(slice(0, 2), "fixed32"), "n": values},
        )
    later = _write(
        data / "c.parquet",
        {"id": pa.array([5, 6]), "z": _z(slice(0, 2), "fixed32"), "n": pa.array([1, 2], pa.uint64())},
    )
    with pytest.raises(ZsteerError, match="column 'n' is uint64 but int8 in .*b.parquet") as info:
        run_job(job_config(data, tmp_path / "job", job_models))
    assert str(info.value).startswith(str(later.resolve()))


@pytest.mark.parametrize(
    ("a", "b", "wide"),
    [
        (pa.int32(), pa.int64(), pa.int64()),
        (pa.uint8(), pa.int8(), pa.int16()),
        (pa.uint32(), pa.int16(), pa.int64()),
        (pa.uint16(), pa.uint64(), pa.uint64()),
        (pa.uint64(), pa.int8(), None),
        (pa.float32(), pa.float64(), pa.float64()),
        (pa.int32(), pa.float64(), None),
        (pa.null(), pa.string(), pa.string()),
        (pa.string(), pa.large_string(), pa.large_string()),
        (pa.dictionary(pa.int8(), pa.string()), pa.string(), pa.string()),
        (pa.binary(), pa.string(), None),
        (pa.list_(pa.float32(), 4), pa.list_(pa.float32(), 4), pa.list_(pa.float32(), 4)),
        (pa.list_(pa.float32(), 4), pa.list_(pa.float32(), 8), pa.list_(pa.float32())),
        (pa.list_(pa.float32(), 4), pa.list_(pa.float64()), pa.list_(pa.float64())),
        (pa.list_(pa.int64()), pa.list_(pa.string()), None),
        (pa.map_(pa.string(), pa.int32()), pa.map_(pa.string(), pa.float32()), None),
        (pa.map_(pa.string(), pa.float32()), pa.map_(pa.large_string(), pa.float64()),
         pa.map_(pa.large_string(), pa.float64())),
        (pa.struct([("a", pa.int8())]), pa.struct([("a", pa.int32())]), pa.struct([("a", pa.int32())])),
        (pa.timestamp("ms"), pa.timestamp("us"), None),
    ],
)  # fmt: skip
def test_widen_is_lossless_or_nothing(a, b, wide):
    assert widen(a, b) == wide and widen(b, a) == wide
    if wide is not None:  # both cast to it, with every value kept
        for t in (a, b):
            assert pa.array([None], t).cast(wide).type == wide


# -- widen as a property: whatever two column types, the widened one keeps every value of both -----------

_SCALARS = {
    **{
        f"int{w}": (getattr(pa, f"int{w}")(), st.integers(-(2 ** (w - 1)), 2 ** (w - 1) - 1))
        for w in (8, 16, 32, 64)
    },
    **{f"uint{w}": (getattr(pa, f"uint{w}")(), st.integers(0, 2**w - 1)) for w in (8, 16, 32, 64)},
    "float32": (pa.float32(), st.floats(width=32, allow_nan=False)),
    "float64": (pa.float64(), st.floats(allow_nan=False)),
    "string": (pa.string(), st.text(max_size=5)),
    "large_string": (pa.large_string(), st.text(max_size=5)),
    "binary": (pa.binary(), st.binary(max_size=5)),
    "null": (pa.null(), st.none()),
}


@st.composite
def _typed_values(draw):
    """(Arrow type, python values of it): a scalar type, or a list / fixed-size list / dictionary of one."""
    name = draw(st.sampled_from(sorted(_SCALARS)))
    scalar, values = _SCALARS[name]
    wrap = draw(
        st.sampled_from(["none", "list", "fixed", "large_list"] + (["dict"] if "string" in name else []))
    )
    items = st.none() | values
    if wrap == "none":
        return scalar, draw(st.lists(items, max_size=4))
    if wrap == "dict":
        return pa.dictionary(pa.int8(), scalar), draw(st.lists(items, max_size=4))
    size = draw(st.integers(1, 3))
    lists = st.lists(items, min_size=size, max_size=size if wrap == "fixed" else 4)
    t = {"list": pa.list_(scalar), "fixed": pa.list_(scalar, size), "large_list": pa.large_list(scalar)}[wrap]
    return t, draw(st.lists(st.none() | lists, max_size=3))


@settings(max_examples=20 * settings().max_examples)  # no job runs here: cheap, so many more examples
@given(a=_typed_values(), b=_typed_values())
def test_widened_types_hold_every_value_of_both(a, b):
    (ta, va), (tb, vb) = a, b
    wide = widen(ta, tb)
    assert (wide is None) == (widen(tb, ta) is None)
    if wide is None:
        return
    for t, values in ((ta, va), (tb, vb)):
        column = pa.array(values, t)
        if t != wide:  # as ManifestPlan.conform (pyarrow 26 breaks list<null> cast to itself)
            assert column.cast(wide).to_pylist() == column.to_pylist()


def test_override_columns_of_type_null_are_no_overrides(tmp_path, job_models):
    """A writer that saw only nulls stores a column as type null: such a file has no overrides."""
    data = tmp_path / "data"
    nulls = {name: pa.nulls(2) for name in ("steps", "stop_at_prob", "targets")}
    _write(data / "a.parquet", {"id": pa.array([0, 1]), "z": _z(slice(0, 2), "fixed32"), **nulls})
    _write(
        data / "b.parquet",
        {"id": pa.array([2, 3]), "z": _z(slice(2, 4), "list64"), "steps": pa.array([0, None], pa.int32()),
         "targets": pa.nulls(2)},
    )  # fmt: skip
    out = tmp_path / "job"
    run_job(job_config(data, out, job_models))  # --steps 3, --target attr1
    parts = read_parts(out).sort_by("id")
    assert parts.column("steps_taken").to_pylist() == [3, 3, 0, 3]
    assert parts.schema.field("steps").type == pa.int32() and parts.schema.field("targets").type == pa.null()
    assert parts.schema.field("stop_at_prob").type == pa.null()
    with pytest.raises(ZsteerError, match="--target: give at least one attribute"):  # no row has targets
        run_job(job_config(data, tmp_path / "no-targets", job_models, targets=()))


def test_the_unified_schema_is_identity_and_a_job_json_from_before_it_resumes(tmp_path, job_models):
    data = tmp_path / "data"
    _write(
        data / "a.parquet", {"id": pa.array([0, 1]), "z": _z(slice(0, 2), "fixed32"), "n": pa.array([1, 2])}
    )
    out = tmp_path / "job"
    config = job_config(data, out, job_models, unit_rows=1)
    run_job(config)
    doc = json.loads((out / "job.json").read_text())
    assert doc["identity"]["columns"] == [["id", "int64"], ["n", "int64"]]
    del doc["identity"]["columns"]  # as written before the field existed: the schema was the files' one
    (out / "job.json").write_text(json.dumps(doc))
    (out / "commits" / "commit-000000-000000-000001.json").unlink()
    assert run_job(config).status == "complete"
    assert read_parts(out).sort_by("id").column("n").to_pylist() == [1, 2]
    # Another schema is another job: a resume that would write shards of another schema is refused.
    doc["identity"]["columns"] = [["id", "int64"], ["n", "int32"]]
    (out / "job.json").write_text(json.dumps(doc))
    with pytest.raises(ZsteerError, match=r"other settings \(columns: "):
        run_job(config)


def test_dictionary_encoded_columns_are_read_and_carried_as_their_values(tmp_path, job_models):
    """pandas categoricals and Parquet dictionary columns: ids, per-row targets and carried text."""
    path = _write(
        tmp_path / "m.parquet",
        {"id": pa.array(["a", "b", "c"]).dictionary_encode(), "z": _z(slice(0, 3), "fixed32"),
         "targets": pa.array(['{"attr3": 1}', None, '{"attr3": 1}']).dictionary_encode(),
         "note": pa.array(["x", "x", None]).dictionary_encode()},
        row_group_size=3,
    )  # fmt: skip
    out = tmp_path / "job"
    run_job(job_config(path, out, job_models))
    parts = read_parts(out).sort_by("id")
    assert [parts.schema.field(n).type for n in ("id", "targets", "note")] == [pa.string()] * 3
    assert parts.column("note").to_pylist() == ["x", "x", None]
    own = np.argmax(
        np.array(parts.column("logits_after").to_pylist()) - parts.column("logits_before").to_pylist(), 1
    )
    assert own.tolist() == [3, 1, 3]  # each row moved most along its own target (attr1 is the job's)
