"""The job's small parts on their own: id set, rebatching, units, the reader, manifest discovery, targets,
identity diffs, summary totals."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from jobkit import ATTRS, latents, write_manifest

from zsteer.jobs import idset
from zsteer.jobs.batcher import Batcher, UnitEnd
from zsteer.jobs.identity import differences
from zsteer.jobs.manifest import ModelShape, plan_manifest
from zsteer.jobs.reader import read_units
from zsteer.jobs.rows import RowChunk, Unit, plan_units
from zsteer.jobs.sources import resolve_manifests
from zsteer.jobs.summary import run_totals
from zsteer.jobs.targets import TargetParser, resolve_job_targets
from zsteer.core.errors import ZsteerError


def test_idset_finds_repeats_within_and_across_calls_through_merges(monkeypatch):
    monkeypatch.setattr(idset, "MERGE_MIN", 8)
    ids = idset.IdSet()
    rng = np.random.default_rng(0)
    seen: set[int] = set()
    for _ in range(50):
        keys = rng.integers(-500, 500, 20)
        new = ids.add_new(keys)
        expected = []
        for k in keys.tolist():
            expected.append(k not in seen)
            seen.add(k)
        assert new.tolist() == expected
    assert len(ids) == len(seen)


def test_string_ids_hash_to_stable_keys():
    a = idset.id_keys(pa.array(["x", "y", "x"]))
    assert a[0] == a[2] != a[1] and a.dtype == np.int64
    np.testing.assert_array_equal(idset.id_keys(pa.array([3, 7], pa.int32())), [3, 7])


def _chunk(unit: Unit, n_edit: int, n_rows: int, last: bool) -> RowChunk:
    return RowChunk(
        unit=unit, n_rows=n_rows, last=last, carried=pa.table({"id": np.arange(n_edit)}), z=latents(n_edit),
        weights=np.zeros((n_edit, 5), np.float32), preserve=np.zeros((n_edit, 5), np.float32), labels=None,
        max_steps=np.zeros(n_edit, np.int32), stop_prob=np.zeros(n_edit, np.float32), rejects=None,
    )  # fmt: skip


def test_batcher_cuts_full_batches_across_units_and_ends_units_after_their_last_row():
    u0, u1, u2 = Unit(0, 0), Unit(0, 1), Unit(1, 0)
    b = Batcher(4)
    b.add(_chunk(u0, 3, 3, False))
    b.add(_chunk(u0, 2, 4, True))  # two rows of this chunk were rejected
    assert b.finished() == () and b.full()
    first = b.take()
    assert [(s.chunk.unit, s.start, s.stop, s.ends) for s in first] == [(u0, 0, 3, ()), (u0, 0, 1, ())]
    b.add(_chunk(u1, 0, 6, True))  # every row rejected: ends once u0 is out
    b.add(_chunk(u2, 5, 5, True))
    second = b.take()
    assert [(s.chunk.unit, s.stop - s.start) for s in second] == [(u0, 1), (u2, 3)]
    assert second[0].ends == (UnitEnd(u0, 7), UnitEnd(u1, 6)) and second[1].ends == ()
    last = b.take()
    assert [(s.stop - s.start, s.ends) for s in last] == [(2, (UnitEnd(u2, 5),))]
    assert b.buffered == 0 and b.finished() == ()


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
        1: "targets: weight of 'attr2' is not finite"
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
