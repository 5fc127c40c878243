"""Fault injection on a job's inputs while it runs: a manifest overwritten in place mid-job, Parquet pages
whose checksums fail, and hostile values in the rows."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from jobkit import job_config, latents, read_parts, read_rejects, reasons_by_row, write_manifest

from zsteer.core.errors import ZsteerError
from zsteer.jobs import commit
from zsteer.jobs.runner import run_job

pytestmark = pytest.mark.usefixtures("single_thread")
N = 300


def _config(manifest, out, models, **kw):
    return job_config(manifest, out, models, unit_rows=50, output={"rows_per_shard": 50}, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, job_models):
    """An uninterrupted job over the original manifest: (manifest, saved copy, job folder)."""
    folder = tmp_path_factory.mktemp("ref")
    manifest = write_manifest(folder / "m.parquet", {"id": np.arange(N), "z": latents(N)}, 100)
    saved = folder / "m.saved"
    shutil.copy2(manifest, saved)
    out = folder / "job"
    assert run_job(_config(manifest, out, job_models)).status == "complete"
    return manifest, saved, out


@pytest.mark.parametrize("layout", ["same", "other"])
def test_a_manifest_overwritten_in_place_mid_job_stops_it_and_nothing_of_it_is_committed(
    tmp_path, job_models, reference, monkeypatch, layout
):
    """`cp other.parquet m.parquet` while the job runs: the readers already have the file open and would
    read the new bytes under the old footer (other z under the original ids, or whole row groups as
    "unreadable" rejects). The job stops with one line; with the original back it resumes to the same
    rows as an uninterrupted run."""
    original, saved, ref = reference
    manifest = tmp_path / "m.parquet"
    shutil.copy2(saved, manifest)
    other = write_manifest(
        tmp_path / "other.parquet", {"id": np.arange(N), "z": latents(N, 9)}, 100 if layout == "same" else 64
    )
    real, started, lock = commit.process_unit, [], threading.Lock()

    def overwrite_at_the_third_unit(plan, unit, editor, **kw):
        with lock:
            started.append(unit.key)
            if len(started) == 3:  # both readers have the file open by now
                with open(manifest, "r+b") as fh:  # in place, as cp does: same inode
                    fh.write(other.read_bytes())
                    fh.truncate()
        return real(plan, unit, editor, **kw)

    monkeypatch.setattr(commit, "process_unit", overwrite_at_the_third_unit)  # as run_and_commit calls it
    out = tmp_path / "job"
    config = _config(manifest, out, job_models)
    with pytest.raises(ZsteerError, match=r"m\.parquet: changed since the job started") as info:
        run_job(config)
    assert "\n" not in str(info.value)
    assert read_rejects(out) is None, "rows read from the changed file were rejected and committed"
    monkeypatch.undo()
    shutil.copy2(saved, manifest)
    assert run_job(config).status == "complete"
    assert read_parts(out).equals(read_parts(ref))


def _flip_in_column_chunk(path, row_group: int, column: str) -> None:
    """Flip one byte near the end of a column chunk (in its values, past the page header)."""
    meta = pq.ParquetFile(path).metadata
    names = [meta.schema.column(j).path for j in range(meta.num_columns)]
    chunk = meta.row_group(row_group).column(
        next(j for j, n in enumerate(names) if n.split(".")[0] == column)
    )
    data = bytearray(path.read_bytes())
    data[chunk.data_page_offset + chunk.total_compressed_size - 9] ^= 0x40
    path.write_bytes(bytes(data))


def test_a_page_failing_its_checksum_makes_its_row_group_rejects(tmp_path, job_models, reference):
    """A manifest written with page CRCs, one byte of a z page flipped: without verification the altered
    row is edited as valid; with it, the rows of that row group are rejects that say why."""
    _, saved, ref = reference
    manifest = tmp_path / "m.parquet"
    table = pq.read_table(saved)
    pq.write_table(
        table,
        manifest,
        row_group_size=100,
        write_page_checksum=True,
        compression="none",
        use_dictionary=False,
    )
    _flip_in_column_chunk(manifest, 1, "z")
    assert not pq.read_table(manifest).equals(table)  # read without verification: silently other values
    out = tmp_path / "job"
    assert run_job(_config(manifest, out, job_models)).status == "complete"
    reasons = reasons_by_row(out)
    assert sorted(reasons) == list(range(100, 200))
    assert all("row group unreadable" in r and "CRC" in r for r in reasons.values()), set(reasons.values())
    kept = read_parts(ref).filter(
        pc.invert(pc.is_in(read_parts(ref).column("id"), pa.array(range(100, 200))))
    )
    assert read_parts(out).equals(kept)


def test_a_page_of_ids_failing_its_checksum_is_rejected_not_a_crash_of_the_duplicate_scan(
    tmp_path, job_models, reference
):
    _, saved, _ = reference
    manifest = tmp_path / "m.parquet"
    pq.write_table(
        pq.read_table(saved), manifest, row_group_size=100, write_page_checksum=True, compression="none",
        use_dictionary=False,
    )  # fmt: skip
    _flip_in_column_chunk(manifest, 2, "id")
    out = tmp_path / "job"
    assert run_job(_config(manifest, out, job_models)).status == "complete"
    assert sorted(reasons_by_row(out)) == list(range(200, 300))
    assert sorted(read_parts(out).column("id").to_pylist()) == list(range(200))


def _as_text(values: list[bytes | None]) -> pa.Array:
    """A string array holding exactly these bytes (pyarrow does not check UTF-8 when building one)."""
    raw = pa.array(values, pa.binary())
    return pa.Array.from_buffers(pa.string(), len(raw), raw.buffers(), raw.null_count)


TARGET_TYPE = pa.list_(pa.struct([("name", pa.string()), ("weight", pa.float64())]))


@pytest.mark.parametrize(
    "targets, type_, fragment",
    [
        ([{"name": "attr1", "weight": 1.0}, None], TARGET_TYPE, "an element of the list is null"),
        ([None], TARGET_TYPE, "an element of the list is null"),
        ([], TARGET_TYPE, "no attribute with a non-zero weight"),
        ("[" * 30_000 + "]" * 30_000, pa.string(), "nested too deeply"),
        ('{"attr1": ' + "[" * 60_000, pa.string(), "targets:"),
        ("[" * 100_000 + "]" * 100_000, pa.string(), "more than 65536"),
        ('{"attr1": 1e39}', pa.string(), "not a finite float32"),
        ('{"attr1": 1' + "0" * 400 + "}", pa.string(), "not a finite float32 (inf)"),
        ('{"attr1": NaN}', pa.string(), "not a finite float32 (nan)"),
        ([("attr1", 3e38), ("attr1", 3e38)], pa.map_(pa.string(), pa.float64()), "past float32's range"),
        ('{"attr1": 1, "x": "' + "a" * 70_000 + '"}', pa.string(), "more than 65536"),
    ],
)
def test_hostile_targets_values_are_rejects_and_the_job_finishes(
    tmp_path, job_models, targets, type_, fragment
):
    n = 6
    column = [None] * n
    column[3] = targets
    manifest = tmp_path / "m.parquet"
    pq.write_table(
        pa.table({"id": pa.array(range(n), pa.int64()), "z": pa.array(list(latents(n)), pa.list_(pa.float32())),
                  "targets": pa.array(column, type_)}),
        manifest,
    )  # fmt: skip
    out = tmp_path / "job"
    assert run_job(_config(manifest, out, job_models)).status == "complete"
    reasons = reasons_by_row(out)
    assert list(reasons) == [3] and fragment in reasons[3], reasons
    assert len(reasons[3]) < 300
    assert sorted(read_parts(out).column("id").to_pylist()) == [0, 1, 2, 4, 5]


def test_text_that_is_not_utf8_is_rejected_naming_the_column(tmp_path, job_models):
    """String ids, carried text and JSON targets with bytes that are not UTF-8: those rows are rejects
    (id null where the id itself is the bad value), every other row is edited, shards read back."""
    n = 8
    ids = [f"row{i}".encode() for i in range(n)]
    ids[2] = b"bad\xff\xfeid"
    notes = [b"fine"] * n
    notes[5] = b"\xc3\x28"
    targets = [None] * n
    targets[6] = b'{"attr1\xff": 1}'
    nested = [b"ok"] * n
    nested[7] = b"\xed\xa0\x80"  # a surrogate, inside a struct: only its own row is rejected
    manifest = tmp_path / "m.parquet"
    pq.write_table(
        pa.table({"id": _as_text(ids), "z": pa.array(list(latents(n)), pa.list_(pa.float32())),
                  "note": _as_text(notes), "targets": _as_text(targets),
                  "meta": pa.StructArray.from_arrays([_as_text(nested)], ["tag"])}),
        manifest,
    )  # fmt: skip
    out = tmp_path / "job"
    assert run_job(_config(manifest, out, job_models)).status == "complete"
    rejects = read_rejects(out)  # reads back: nothing invalid was written
    got = dict(zip(rejects.column("row").to_pylist(), rejects.column("reason").to_pylist(), strict=True))
    assert got == {
        2: "column 'id' holds text that is not valid UTF-8",
        5: "column 'note' holds text that is not valid UTF-8",
        6: "column 'targets' holds text that is not valid UTF-8",
        7: "column 'meta' holds text that is not valid UTF-8",
    }
    assert rejects.column("id").to_pylist() == [None, "row5", "row6", "row7"]
    assert read_parts(out).column("id").to_pylist() == ["row0", "row1", "row3", "row4"]


def test_latents_far_outside_the_prior_are_rejected_with_their_magnitude(tmp_path, job_models):
    """z ~ N(0, I): a value of 1e30 (or anything past MAX_ABS_Z) is not a latent, it is rejected; a
    latent that drifted some way out is still edited."""
    from zsteer.jobs.rows import MAX_ABS_Z

    z = latents(6)
    z[1, 3] = 1e30
    z[2, 0] = -(MAX_ABS_Z + 1)
    z[3, 7] = MAX_ABS_Z  # at the limit: kept
    z[4] *= 20  # twenty sigma out: kept
    out = tmp_path / "job"
    manifest = write_manifest(tmp_path / "m.parquet", {"id": np.arange(6), "z": z})
    assert run_job(_config(manifest, out, job_models)).status == "complete"
    assert reasons_by_row(out) == {
        1: "z has a value of magnitude 1e+30, above the 1000 a latent may have (z ~ N(0, I) stays within about 6)",
        2: "z has a value of magnitude 1001, above the 1000 a latent may have (z ~ N(0, I) stays within about 6)",
    }
    assert read_parts(out).column("id").to_pylist() == [0, 3, 4, 5]


def test_a_manifest_overwritten_while_its_ids_are_scanned_stops_the_job(
    tmp_path, job_models, reference, monkeypatch
):
    """The duplicate index is built once and kept for the job: ids read from a file being rewritten
    would make it wrong for good, so the scan checks the file after reading it."""
    from zsteer.jobs import duplicates

    _, saved, _ = reference
    manifest = tmp_path / "m.parquet"
    shutil.copy2(saved, manifest)
    other = write_manifest(tmp_path / "other.parquet", {"id": np.arange(N), "z": latents(N, 9)}, 100)
    real = duplicates.id_keys

    def overwrite_then_key(ids):
        if manifest.read_bytes() != other.read_bytes():
            with open(manifest, "r+b") as fh:
                fh.write(other.read_bytes())
                fh.truncate()
        return real(ids)

    monkeypatch.setattr(duplicates, "id_keys", overwrite_then_key)
    out = tmp_path / "job"
    with pytest.raises(ZsteerError, match=r"m\.parquet: changed while its ids were read"):
        run_job(_config(manifest, out, job_models))
    assert not (out / "duplicates.npz").exists()


def test_an_input_gone_before_a_resume_is_said_as_missing_with_the_next_step(tmp_path, job_models):
    data = tmp_path / "data"
    write_manifest(data / "a.parquet", {"id": np.arange(40), "z": latents(40)}, 20)
    b = write_manifest(data / "b.parquet", {"id": np.arange(40, 80), "z": latents(40, 1)}, 20)
    out = tmp_path / "job"
    assert run_job(_config(data, out, job_models)).status == "complete"
    b.unlink()
    with pytest.raises(ZsteerError) as info:
        run_job(_config(data, out, job_models))
    message = str(info.value)
    assert message.startswith(f"{b.resolve()}: an input of the job in {out} is missing (moved or deleted)")
    assert "put it back at that path to resume" in message and "\n" not in message


def test_a_row_whose_validation_raises_is_rejected_alone_and_the_job_finishes(
    tmp_path, job_models, monkeypatch
):
    """A value no check foresaw makes validation raise: without a net the job would stop at the same row
    on every resume. Only that row is rejected, with the error; the rows around it are edited."""
    from zsteer.jobs import rows

    z = latents(30)
    z[11, 2] = 7.25  # the value the planted fault trips on
    manifest = write_manifest(tmp_path / "m.parquet", {"id": np.arange(30), "z": z})
    real = rows._check_z

    def tripping(column, z_dim, reasons):
        block = real(column, z_dim, reasons)
        if (block == np.float32(7.25)).any():
            raise RuntimeError("unforeseen value")
        return block

    monkeypatch.setattr(rows, "_check_z", tripping)
    out = tmp_path / "job"
    assert run_job(_config(manifest, out, job_models)).status == "complete"
    assert reasons_by_row(out) == {11: "the row could not be validated (RuntimeError: unforeseen value)"}
    assert sorted(read_parts(out).column("id").to_pylist()) == sorted(set(range(30)) - {11})
