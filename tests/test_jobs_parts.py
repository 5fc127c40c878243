"""The job's small parts on their own: the duplicate index, units, the reader, manifest discovery, targets,
identity diffs, summary totals."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from jobkit import ATTRS, latents, write_manifest

from zsteer.core.errors import ZsteerError
from zsteer.jobs import duplicates
from zsteer.jobs.identity import differences
from zsteer.jobs.manifest import ModelShape, plan_manifest
from zsteer.jobs.reader import read_units
from zsteer.jobs.rows import plan_units
from zsteer.jobs.sources import resolve_manifests
from zsteer.jobs.summary import run_totals
from zsteer.jobs.targets import TargetParser, resolve_job_targets


def _reference_duplicates(files: list[list]) -> dict:
    """{key: (file, row) of its first row} for every id that occurs more than once, the slow way."""
    first, count = {}, {}
    for f, ids in enumerate(files):
        for row, value in enumerate(ids):
            if value is None:
                continue
            first.setdefault(value, (f, row))
            count[value] = count.get(value, 0) + 1
    return {value: first[value] for value, c in count.items() if c > 1}


@pytest.mark.parametrize("partition_rows", [1 << 22, 7])  # all in memory; spilled to 18+ partitions
def test_duplicate_index_finds_later_copies_across_files(tmp_path, monkeypatch, partition_rows):
    monkeypatch.setattr(duplicates, "PARTITION_ROWS", partition_rows)
    rng = np.random.default_rng(0)
    files = [rng.integers(-40, 40, 50).tolist() for _ in range(3)]
    files[1][3] = None  # null ids are nobody's duplicate
    paths = [
        write_manifest(
            tmp_path / f"{i}.parquet", {"id": pa.array(ids, pa.int64()), "z": latents(len(ids))}, 20
        )
        for i, ids in enumerate(files)
    ]
    plan = plan_manifest(paths, ModelShape(8, 0, ATTRS))
    index = duplicates.find_duplicates(plan, tmp_path / "scratch")
    want = _reference_duplicates(files)
    assert (
        dict(zip(index.keys.tolist(), (index.first_of(k) for k in index.keys.tolist()), strict=True)) == want
    )
    for f, ids in enumerate(files):
        rows = [r for r, v in enumerate(ids) if v is not None]
        keys = np.array([ids[r] for r in rows], np.int64)
        later = index.later_rows(keys, duplicates.position(f, np.array(rows)))
        expected = [ids[r] in want and want[ids[r]] != (f, r) for r in rows]
        assert later.tolist() == expected
    index.save(tmp_path / "dup.npz")
    again = duplicates.DuplicateIndex.load(tmp_path / "dup.npz")
    assert np.array_equal(again.keys, index.keys) and np.array_equal(again.first, index.first)
    assert not list((tmp_path / "scratch").glob("*")), "spill files are removed"


def test_string_ids_hash_to_stable_keys():
    a = duplicates.id_keys(pa.array(["x", "y", "x"]))
    assert a[0] == a[2] != a[1] and a.dtype == np.int64
    np.testing.assert_array_equal(duplicates.id_keys(pa.array([3, 7], pa.int32())), [3, 7])


def test_manifests_from_files_directories_and_globs(tmp_path):
    a = write_manifest(tmp_path / "d" / "a.parquet", {"id": [1], "z": latents(1)})
    b = write_manifest(tmp_path / "d" / "sub" / "b.parquet", {"id": [2], "z": latents(1)})
    write_manifest(tmp_path / "d" / ".hidden" / "c.parquet", {"id": [3], "z": latents(1)})
    write_manifest(tmp_path / "d" / "_tmp.parquet", {"id": [3], "z": latents(1)})
    assert resolve_manifests([str(tmp_path / "d")]) == [a.resolve(), b.resolve()]
    assert resolve_manifests([str(tmp_path / "d" / "**" / "*.parquet"), str(a)]) == [a.resolve(), b.resolve()]
    # An output folder inside a directory or a glob: what the job wrote there is not read back (so a
    # resume sees the same inputs); a file in it named on its own is refused.
    out = tmp_path / "d" / "sub"
    assert resolve_manifests([str(tmp_path / "d")], exclude=out) == [a.resolve()]
    assert resolve_manifests([str(tmp_path / "d" / "**" / "*.parquet")], exclude=out) == [a.resolve()]
    with pytest.raises(ZsteerError, match="inside the output folder"):
        resolve_manifests([str(tmp_path / "d"), str(b)], exclude=out)


def test_per_row_targets_in_every_supported_form():
    parser = TargetParser(ATTRS)
    structs = pa.array(
        [[{"name": "attr1", "weight": 2.0}], None, [{"name": "attr9", "weight": 1.0}], []],
        pa.list_(pa.struct([("name", pa.string()), ("weight", pa.float64())])),
    )
    weights, has, errors = parser.parse_column(structs)
    assert has.tolist() == [True, False, False, False]
    assert weights[0].tolist() == [0, 2, 0, 0, 0]
    assert "unknown attribute 'attr9'" in errors[2] and "no attribute with a non-zero weight" in errors[3]
    maps = pa.array([[("attr0", 1), ("attr4", -1)]], pa.map_(pa.string(), pa.int64()))
    assert parser.parse_column(maps)[0][0].tolist() == [1, 0, 0, 0, -1]
    strings = pa.array(['{"ATTR2": 0.5}', '{"attr2": NaN}'])
    weights, has, errors = parser.parse_column(strings)
    assert weights[0].tolist() == [0, 0, 0.5, 0, 0] and errors == {
        1: "targets: weight of 'attr2' is not a finite float32 (nan)"
    }


def test_job_targets_and_preserve_resolve_to_canonical_names():
    job = resolve_job_targets(("attr1", "ATTR2=-0.5"), ("attr0",), ATTRS, per_row=False)
    assert job.targets == (("attr1", 1.0), ("attr2", -0.5)) and job.preserve == ("attr0",)
    assert job.weights.tolist() == [0, 1, -0.5, 0, 0] and job.preserve_mask.tolist() == [1, 0, 0, 0, 0]
    assert resolve_job_targets((), None, ATTRS, per_row=True).weights.tolist() == [0] * 5


def test_identity_differences_name_the_field_and_the_file():
    old = {"ascent": {"steps": 3, "lr": None}, "inputs": {"/d/a.parquet": {"rows": 10}}}
    new = {"ascent": {"steps": 4, "lr": None}, "inputs": {"/d/a.parquet": {"rows": 12}}}
    assert differences(old, new) == ["ascent.steps: 3 -> 4", "inputs./d/a.parquet.rows: 10 -> 12"]
    assert differences(old, old) == []


def test_progress_prints_plain_lines_when_not_on_a_terminal(caplog):
    import io
    import logging

    from zsteer.jobs.progress import Progress

    with caplog.at_level(logging.INFO, logger="zsteer.jobs"):
        progress = Progress(total=200, done=50, every_seconds=0.0, stream=io.StringIO())
        progress.update(50)
        progress.close()
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("100/200 rows (50.0%), ") and "rows/s, ETA " in line


def test_units_cut_row_groups_into_bounded_runs_of_rows(tmp_path):
    path = write_manifest(tmp_path / "m.parquet", {"id": np.arange(25), "z": latents(25)}, row_group_size=10)
    plan = plan_manifest([path], ModelShape(8, 0, ATTRS))
    units = plan_units(plan, 4)
    assert [(u.key, u.start, u.n_rows) for u in units] == [
        ("0:0:0", 0, 4), ("0:0:1", 4, 4), ("0:0:2", 8, 2),
        ("0:1:0", 10, 4), ("0:1:1", 14, 4), ("0:1:2", 18, 2),
        ("0:2:0", 20, 4), ("0:2:1", 24, 1),
    ]  # fmt: skip
    assert [u.key for u in plan_units(plan, 100)] == ["0:0:0", "0:1:0", "0:2:0"]


def test_reader_streams_units_of_a_huge_row_group_in_bounded_memory(tmp_path):
    """One 120k-row row group (31 MB of z): pieces of at most read_rows rows, the right rows for units
    that start inside the row group (a resume), and Arrow memory far below the row group's size."""
    n, z_dim = 120_000, 64
    z = latents(n, z_dim=z_dim)
    path = write_manifest(tmp_path / "big.parquet", {"id": np.arange(n), "z": z})
    plan = plan_manifest([path], ModelShape(z_dim, 0, ATTRS))
    units = plan_units(plan, 25_000)
    todo = [units[1], units[3], units[4]]  # a resume: units 0 and 2 are done
    base, peak, seen = pa.total_allocated_bytes(), 0, {}
    for piece in read_units(plan, todo, read_rows=3000):
        peak = max(peak, pa.total_allocated_bytes() - base)
        assert piece.fault is None and piece.n_rows <= 3000 and piece.batch.num_rows == piece.n_rows
        ids = piece.batch.column("id").to_numpy()
        np.testing.assert_array_equal(ids, np.arange(piece.offset, piece.offset + piece.n_rows))
        got = piece.batch.column("z").flatten().to_numpy().reshape(-1, z_dim)
        np.testing.assert_array_equal(got, z[ids])
        seen[piece.unit.key] = seen.get(piece.unit.key, 0) + piece.n_rows
        if piece.last:
            assert seen[piece.unit.key] == piece.unit.n_rows
    assert seen == {"0:0:1": 25_000, "0:0:3": 25_000, "0:0:4": 20_000}
    assert peak < 12 * 2**20, f"{peak / 2**20:.1f} MiB of Arrow memory for a 31 MB row group"


def test_summary_totals_add_up_every_run():
    runs = [
        {"wall_seconds": 4.0, "edited": 300, "peak_rss_mb": 500.0,
         "stage_seconds": {"read": 1.0, "compute": 2.0, "encode": 0.5, "write": 0.5}},
        {"wall_seconds": 1.0, "edited": 0, "peak_rss_mb": 400.0,
         "stage_seconds": {"read": 0.0, "compute": 0.0, "encode": 0.0, "write": 0.0}},
    ]  # fmt: skip
    assert run_totals(runs) == {
        "wall_seconds": 5.0,
        "stage_seconds": {"read": 1.0, "compute": 2.0, "encode": 0.5, "write": 0.5},
        "latents_per_second": 60.0,
        "peak_rss_mb": 500.0,
    }
