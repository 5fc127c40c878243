"""run_job end to end on tiny models: outputs, carried columns, batch-size independence, overrides,
rejects, resume checks, the lock, and exactly-once after an injected crash."""

from __future__ import annotations

import dataclasses
import io
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from jobkit import (
    N_ATTR,
    TINY_CLASSIFIER,
    TINY_GENERATOR,
    Z_DIM,
    crash_at_commit,
    job_config,
    latents,
    read_parts,
    read_rejects,
    reasons_by_row,
    tiny_models,
    write_manifest,
)
from modelkit import write_models
from PIL import Image

from zsteer.core.errors import ZsteerError
from zsteer.jobs.backends import BackendConfig
from zsteer.jobs.interpolate_method import InterpolateMethod
from zsteer.jobs.lock import FolderLock
from zsteer.jobs.runner import run_job
from zsteer.pipeline.config import AscentConfig, EngineConfig
from zsteer.pipeline.models import GeneratorSpec

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def models(job_models):
    """conftest's tiny job models, under this module's name for them."""
    return job_models


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """200 rows in row groups of 70, with two extra columns to carry."""
    path = tmp_path_factory.mktemp("manifest") / "m.parquet"
    n = 200
    return write_manifest(
        path,
        {
            "id": np.arange(n, dtype=np.int64),
            "z": latents(n),
            "note": [f"row{i}" for i in range(n)],
            "score": np.linspace(0, 1, n),
        },
        row_group_size=70,
    )


def _by_id(table: pa.Table, column: str) -> dict:
    return dict(zip(table.column("id").to_pylist(), table.column(column).to_pylist(), strict=True))


def test_outputs_carry_columns_and_describe_the_edit(tmp_path, models, manifest):
    out = tmp_path / "job"
    result = run_job(job_config(manifest, out, models, output={"images": "png"}))
    assert result.status == "complete" and result.exit_code == 0
    parts = read_parts(out)
    assert parts.num_rows == 200 and sorted(parts.column("id").to_pylist()) == list(range(200))
    assert parts.schema.names == [
        "id", "note", "score", "z_edited", "logits_before", "logits_after", "latent_shift", "steps_taken",
        "stop_reason", "image",
    ]  # fmt: skip
    assert parts.schema.field("z_edited").type == pa.list_(pa.float32(), Z_DIM)
    assert parts.schema.field("logits_after").type == pa.list_(pa.float32(), N_ATTR)
    assert _by_id(parts, "note") == {i: f"row{i}" for i in range(200)}
    z0 = latents(200)
    ze = np.array(parts.column("z_edited").to_pylist(), np.float32)
    ids = np.array(parts.column("id").to_pylist())
    np.testing.assert_allclose(
        parts.column("latent_shift").to_numpy(), np.linalg.norm(ze - z0[ids], axis=1), 1e-5
    )
    before = np.array(parts.column("logits_before").to_pylist())
    after = np.array(parts.column("logits_after").to_pylist())
    assert (after[:, 1] > before[:, 1]).mean() > 0.9, "the target logit goes up"
    assert set(parts.column("stop_reason").to_pylist()) == {"steps"}
    assert set(parts.column("steps_taken").to_pylist()) == {3}
    image = Image.open(io.BytesIO(parts.column("image")[0].as_py()))
    assert image.size == (64, 64) and image.mode == "RGB"
    # Shards are bounded and every file in the folder comes from the job's own counters.
    assert all(pq.read_metadata(p).num_rows <= 64 for p in (out / "parts").iterdir())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["edited"] == 200 and summary["rejected"] == 0
    assert summary["stop_reasons"] == {"steps": 200}
    assert set(summary["stage_seconds"]) == {"read", "compute", "encode", "write"}
    assert summary["latents_per_second"] > 0 and summary["peak_rss_mb"] > 0
    job = json.loads((out / "job.json").read_text())
    assert job["identity"]["targets"] == [["attr1", 1.0]] and job["identity"]["ascent"]["steps"] == 3
    assert job["identity"]["generator"]["fingerprint"] and job["identity"]["zsteer_version"]


def test_rows_do_not_depend_on_batch_size(tmp_path, models, manifest):
    tables = []
    for bs in (5, 16):
        run_job(job_config(manifest, tmp_path / f"bs{bs}", models, batch_size=bs))
        tables.append(read_parts(tmp_path / f"bs{bs}"))
    a, b = (_by_id(t, "z_edited") for t in tables)
    assert a.keys() == b.keys()
    diff = max(np.abs(np.subtract(a[i], b[i])).max() for i in a)
    assert diff <= 1e-5
    assert max(np.abs(np.subtract(a[i], latents(200)[i])).max() for i in a) > 1e-2, "z moved"


def test_per_row_overrides_share_batches(tmp_path, models):
    """Rows asking for other targets / steps / stop probability get exactly what they asked for."""
    n = 48
    z = latents(n, seed=3)
    targets = [
        None if i % 3 == 0 else '{"attr3": -1}' if i % 3 == 1 else '{"attr0": 1, "attr2": 0.5}'
        for i in range(n)
    ]
    steps = [None if i % 4 else 1 for i in range(n)]
    path = write_manifest(
        tmp_path / "m.parquet",
        {"id": np.arange(n), "z": z, "targets": targets, "steps": steps, "stop_at_prob": [None] * n},
        schema=pa.schema(
            [("id", pa.int64()), ("z", pa.list_(pa.float32(), Z_DIM)), ("targets", pa.string()),
             ("steps", pa.int32()), ("stop_at_prob", pa.float64())]
        ),
    )  # fmt: skip
    run_job(job_config(path, tmp_path / "mixed", models))
    mixed = read_parts(tmp_path / "mixed")
    got_z, got_steps = _by_id(mixed, "z_edited"), _by_id(mixed, "steps_taken")
    assert all(got_steps[i] == (1 if i % 4 == 0 else 3) for i in range(n))
    # The same rows edited by jobs whose --target is each row's override, at the job's step count.
    for k, job_targets in ((0, ["attr1"]), (1, ["attr3=-1"]), (2, ["attr0", "attr2=0.5"])):
        rows = [i for i in range(n) if i % 3 == k and i % 4 != 0]
        plain = write_manifest(tmp_path / f"plain{k}.parquet", {"id": np.array(rows), "z": z[rows]})
        run_job(job_config(plain, tmp_path / f"plain{k}", models, targets=job_targets))
        want = _by_id(read_parts(tmp_path / f"plain{k}"), "z_edited")
        for i in rows:
            np.testing.assert_allclose(got_z[i], want[i], atol=1e-5)


def test_stop_at_prob_override_and_map_targets(tmp_path, models):
    n = 8
    schema = pa.schema(
        [("id", pa.string()), ("z", pa.list_(pa.float64())), ("targets", pa.map_(pa.string(), pa.float32())),
         ("stop_at_prob", pa.float32())]
    )  # fmt: skip
    path = write_manifest(
        tmp_path / "m.parquet",
        {
            "id": [f"r{i}" for i in range(n)],
            "z": [list(map(float, row)) for row in latents(n)],
            "targets": [[("attr2", 1.0)]] * n,
            "stop_at_prob": [1e-6] * 4 + [None] * 4,  # the first four are already there at step 0
        },
        schema=schema,
    )
    run_job(job_config(path, tmp_path / "job", models, targets=()))
    parts = read_parts(tmp_path / "job")
    reasons = _by_id(parts, "stop_reason")
    assert [reasons[f"r{i}"] for i in range(n)] == ["target_reached"] * 4 + ["steps"] * 4
    assert parts.schema.field("id").type == pa.string()


def test_bad_rows_are_rejected_with_reasons_and_the_job_goes_on(tmp_path, models):
    good = latents(1)[0].tolist()
    rows = [  # (id, z, targets, steps) -> expected reason fragment (None = edited)
        (0, good, None, None, None),
        (1, [math.nan] + good[1:], None, None, "NaN or Inf"),
        (2, [math.inf] + good[1:], None, None, "NaN or Inf"),
        (3, good[:-1], None, None, "z has 7 values, expected 8"),
        (4, None, None, None, "z is null"),
        (None, good, None, None, "id is null"),
        (0, good, None, None, "duplicate id 0"),
        (7, [None] + good[1:], None, None, "z has null values"),
        (8, good, '{"Smilling": 1}', None, "unknown attribute 'Smilling'"),
        (9, good, '{"attr1": "high"}', None, "weight of 'attr1' is not a number"),
        (10, good, "[1, 2]", None, "expected a JSON object"),
        (11, good, "{not json", None, "not valid JSON"),
        (12, good, None, -2, "steps -2 is negative"),
        (13, [1e39] + good[1:], None, None, "NaN or Inf"),  # finite in float64, not in float32
        (14, good, '{"attr1": 2}', 1, None),
    ]
    schema = pa.schema(
        [("id", pa.int64()), ("z", pa.list_(pa.float64())), ("targets", pa.string()), ("steps", pa.int64())]
    )
    cols = {name: [r[i] for r in rows] for i, name in enumerate(schema.names)}
    path = write_manifest(tmp_path / "bad.parquet", cols, schema=schema, row_group_size=4)
    run_job(job_config(path, tmp_path / "job", models))
    reasons = reasons_by_row(tmp_path / "job")
    for index, row in enumerate(rows):
        expected = row[-1]
        if expected is None:
            assert index not in reasons
        else:
            assert expected in reasons[index], (index, reasons.get(index))
    parts = read_parts(tmp_path / "job")
    assert sorted(parts.column("id").to_pylist()) == [0, 14]
    rejects = read_rejects(tmp_path / "job")
    assert rejects.schema.names == ["source", "row", "id", "reason"]
    assert set(rejects.column("source").to_pylist()) == {str(path.resolve())}
    ids = dict(zip(rejects.column("row").to_pylist(), rejects.column("id").to_pylist(), strict=True))
    assert ids[5] is None and ids[6] == 0 and ids[1] == 1
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert (summary["edited"], summary["rejected"]) == (2, len(rows) - 2)


def test_labels_are_checked_for_a_conditional_generator(tmp_path):
    gspec = GeneratorSpec(
        kind="course_conditional_generator", z_dim=Z_DIM, n_classes=3, hidden_dim=4, im_chan=1
    )
    cond = tiny_models(tmp_path / "cond", gspec)
    path = write_manifest(
        tmp_path / "m.parquet", {"id": np.arange(5), "z": latents(5), "label": [0, 2, 3, -1, None]}
    )
    run_job(job_config(path, tmp_path / "job", cond, output={"images": "png"}))
    reasons = reasons_by_row(tmp_path / "job")
    assert reasons == {
        2: "label 3 out of range [0, 3)",
        3: "label -1 out of range [0, 3)",
        4: "label is null",
    }
    parts = read_parts(tmp_path / "job")
    assert _by_id(parts, "label") == {0: 0, 1: 2}
    assert Image.open(io.BytesIO(parts.column("image")[0].as_py())).mode == "L"


def test_duplicates_across_files_and_a_directory_or_glob_of_files(tmp_path, models):
    data = tmp_path / "data"
    write_manifest(data / "a.parquet", {"id": ["x", "../../x", "/etc/passwd"], "z": latents(3)})
    write_manifest(data / "b.parquet", {"id": ["y", "x"], "z": latents(2, seed=1)})
    (data / "_SUCCESS").write_text("")
    for name, spec in (("dir", data), ("glob", data / "*.parquet")):
        out = tmp_path / name
        run_job(job_config(spec, out, models))
        assert sorted(read_parts(out).column("id").to_pylist()) == ["../../x", "/etc/passwd", "x", "y"]
        rejects = read_rejects(out)
        assert rejects.column("reason").to_pylist() == ["duplicate id 'x' (first in a.parquet, row 0)"]
        assert rejects.column("source").to_pylist() == [str((data / "b.parquet").resolve())]
        # ids never become file names
        names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
        assert all(
            n.split("/")[0] in ("parts", "rejects", "commits")
            or n in ("job.json", "summary.json", ".lock", "duplicates.npz")
            for n in names
        )
        assert not (tmp_path / "x").exists()


def test_resume_refuses_other_settings_naming_them(tmp_path, models, manifest):
    out = tmp_path / "job"
    run_job(job_config(manifest, out, models))
    with pytest.raises(ZsteerError, match=r"ascent\.steps: 3 -> 4"):
        run_job(job_config(manifest, out, models, ascent={"steps": 4}))
    with pytest.raises(ZsteerError, match=r"targets: .*attr1.* -> .*attr2"):
        run_job(job_config(manifest, out, models, targets=["attr2"]))
    # Same settings: resumes (nothing to do) even with another batch size, which is not identity.
    assert run_job(job_config(manifest, out, models, batch_size=7)).status == "complete"


def test_resume_refuses_other_models(tmp_path, models, manifest):
    out = tmp_path / "job"
    run_job(job_config(manifest, out, models))
    other = write_models(tmp_path / "other", TINY_GENERATOR, TINY_CLASSIFIER, seed=7)  # same shapes
    with pytest.raises(ZsteerError, match=r"generator\.fingerprint"):
        run_job(job_config(manifest, out, (other[0], models[1])))


def test_a_second_run_on_a_locked_folder_is_refused(tmp_path, models, manifest):
    out = tmp_path / "job"
    with FolderLock(out), pytest.raises(ZsteerError, match="another zsteer run"):
        run_job(job_config(manifest, out, models))


def test_a_folder_that_is_not_a_job_is_refused(tmp_path, models, manifest):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ZsteerError, match="not a zsteer job folder"):
        run_job(job_config(manifest, out, models))
    assert (out / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("method", ["ascent", "interpolate"])
def test_settings_a_backend_refuses_leave_no_job_behind(tmp_path, models, method):
    """onnxruntime refuses bf16 when the editor is built, after job.json (and the interpolation's id_to
    lookup) were written: the refusal takes them back, so the corrected command starts afresh in the same
    folder instead of being refused as a resume with other settings."""
    z = latents(8)
    columns = {"id": np.arange(8), "z": z} | (
        {"id_to": np.arange(8)[::-1].copy()} if method == "interpolate" else {}
    )
    path = write_manifest(tmp_path / "m.parquet", columns)
    out = tmp_path / "job"
    extra = {"method": InterpolateMethod(frames=2), "targets": ()} if method == "interpolate" else {}
    refused = dataclasses.replace(
        job_config(path, out, models, **extra),
        engine=EngineConfig(batch_size=16, precision="bf16"),
        backend=BackendConfig(name="onnxruntime"),
    )
    with pytest.raises(ZsteerError, match=r"^--precision bf16: the onnxruntime backend runs fp32 only$"):
        run_job(refused)
    assert not (out / "job.json").exists()
    assert sorted(p.name for p in out.iterdir()) == [".lock", "commits", "parts", "rejects"]
    assert run_job(job_config(path, out, models, **extra)).status == "complete"


def test_crash_between_shard_and_commit_leaves_no_duplicates(tmp_path, models, manifest, monkeypatch):
    """A crash after a shard is renamed into place but before its commit marker: the resume deletes
    the orphan shard and redoes its units, so every row is still there exactly once."""
    out = tmp_path / "job"
    crash_at_commit(monkeypatch, 2, job_config(manifest, out, models))
    markers = len(list((out / "commits").glob("commit-*.json")))
    assert 1 <= markers < 3, "the crash left units (of 70, 70, 60 rows) without a marker"
    assert len(list((out / "parts").glob("part-*.parquet"))) > markers, "and a shard without one"
    run_job(job_config(manifest, out, models))
    ids = read_parts(out).column("id").to_pylist()
    assert sorted(ids) == list(range(200))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and [r["status"] for r in summary["runs"]] == ["complete"]


def test_big_row_groups_are_split_into_bounded_shards(tmp_path, models):
    path = write_manifest(
        tmp_path / "m.parquet", {"id": np.arange(150), "z": latents(150)}, row_group_size=150
    )
    out = tmp_path / "job"
    run_job(job_config(path, out, models, read_rows=40, output={"rows_per_shard": 32}))
    commits = [json.loads(p.read_text()) for p in (out / "commits").glob("commit-*.json")]
    assert len(commits) == 1 and len(commits[0]["parts"]) == 5 and commits[0]["unit"] == "0:0:0"
    assert sorted(read_parts(out).column("id").to_pylist()) == list(range(150))


@pytest.mark.parametrize("read_rows", [1, 4, 7, 4096])
@pytest.mark.parametrize("unit_rows", [4096, 3])
def test_unreadable_row_group_becomes_rejects(tmp_path, models, monkeypatch, unit_rows, read_rows):
    """A row group that fails mid-read (a corrupt page in its second block of 4 decoded rows) turns its
    rows from that block on into rejects, in every unit of the row group still to come (with 3-row units:
    the rest of 13-15, then 16-18 and 19), whatever the read size: blocks are counted from the row
    group's start, so where it stops does not depend on --read-rows (read in batches of 7 rows, the
    rows 14-16 were rejected or not with them)."""
    from zsteer.jobs import reader

    monkeypatch.setattr(reader, "DECODE_ROWS", 4)
    path = write_manifest(tmp_path / "m.parquet", {"id": np.arange(30), "z": latents(30)}, row_group_size=10)
    real = reader.pq.ParquetFile

    class Flaky(real):
        def iter_batches(self, *args, row_groups=None, **kw):
            for i, batch in enumerate(super().iter_batches(*args, row_groups=row_groups, **kw)):
                if row_groups == [1] and i == 1:
                    raise pa.ArrowInvalid("Corrupt snappy compressed data.")
                yield batch

    monkeypatch.setattr(reader.pq, "ParquetFile", Flaky)
    run_job(job_config(path, tmp_path / "job", models, read_rows=read_rows, unit_rows=unit_rows))
    reasons = reasons_by_row(tmp_path / "job")
    assert sorted(reasons) == [14, 15, 16, 17, 18, 19]
    assert set(reasons.values()) == {"row group unreadable: Corrupt snappy compressed data."}
    assert sorted(read_parts(tmp_path / "job").column("id").to_pylist()) == list(range(14)) + list(
        range(20, 30)
    )


def test_a_fixed_shape_engine_sees_full_batches_only_and_gives_the_same_rows(tmp_path, models, manifest):
    """A compiled engine (fixed_batch) runs every step on batch_size rows: the short batch at the end of
    each unit is padded inside the editor, the padding never reaches the output, and the rows are the
    same bits as an eager run's."""
    from zsteer.pipeline.engine import make_engine

    sizes = []

    def factory(generator, classifier):
        engine = make_engine(
            generator, classifier, AscentConfig(steps=3, lr=0.5), EngineConfig(batch_size=16)
        )
        engine.fixed_batch, step = True, engine._step

        def recording(z_in, *args):
            sizes.append(len(z_in))
            return step(z_in, *args)

        engine._step = recording
        return engine

    run_job(job_config(manifest, tmp_path / "fixed", models, batch_size=16), editor_factory=factory)
    run_job(job_config(manifest, tmp_path / "eager", models, batch_size=16))
    assert set(sizes) == {16} and 15 <= len(sizes) <= 3 * 15  # units of 70, 70, 60 rows: 5 batches each
    fixed, eager = read_parts(tmp_path / "fixed"), read_parts(tmp_path / "eager")
    assert sorted(fixed.column("id").to_pylist()) == list(range(200))
    for column in ("z_edited", "logits_before", "logits_after", "steps_taken"):
        assert _by_id(fixed, column) == _by_id(eager, column), column


# -- units: bounded runs of rows of a row group --------------------------------------------------------


def _commit_docs(out) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "commits").glob("commit-*.json"))]


def test_a_huge_row_group_commits_unit_by_unit_and_a_resume_redoes_only_the_rest(
    tmp_path, models, monkeypatch
):
    """One 150-row row group in units of 40 rows: each unit commits on its own, so a crash loses one
    unit's work, not the row group's, and the resume reads only the units no commit names."""
    from zsteer.jobs import reader

    path = write_manifest(tmp_path / "m.parquet", {"id": np.arange(150), "z": latents(150)})
    out = tmp_path / "job"
    config = job_config(path, out, models, unit_rows=40, read_rows=16)
    crash_at_commit(monkeypatch, 3, config)
    committed = [c["unit"] for c in _commit_docs(out)]
    assert committed[:2] == ["0:0:0", "0:0:1"] and len(committed) < 4  # two threads: unit 2 or 3 crashed
    asked = []
    real_pieces = reader.UnitReader.pieces

    def recording(self, unit):
        asked.append(unit.key)
        return real_pieces(self, unit)

    monkeypatch.setattr(reader.UnitReader, "pieces", recording)
    assert run_job(config).status == "complete"
    assert sorted(asked) == sorted({"0:0:0", "0:0:1", "0:0:2", "0:0:3"} - set(committed))
    assert [c["unit"] for c in _commit_docs(out)] == ["0:0:0", "0:0:1", "0:0:2", "0:0:3"]
    assert [c["rows"] for c in _commit_docs(out)] == [40, 40, 40, 30]
    assert sorted(read_parts(out).column("id").to_pylist()) == list(range(150))
    with pytest.raises(ZsteerError, match=r"unit_rows: 40 -> 64"):
        run_job(job_config(path, out, models, unit_rows=64, read_rows=16))


def _engine_doing_at(n: int, action, after: bool = False):
    """An editor factory whose editors (job_config's settings) call ``action()`` as their ``n``-th batch
    starts, then edit it (``after``: once it is edited)."""
    from zsteer.pipeline.engine import make_engine

    def factory(generator, classifier):
        engine = make_engine(
            generator, classifier, AscentConfig(steps=3, lr=0.5), EngineConfig(batch_size=16)
        )
        calls = {"n": 0}

        class Acting:
            def edit_batch(self, batch, render=True):
                calls["n"] += 1
                if calls["n"] == n and not after:
                    action()
                result = engine.edit_batch(batch, render)
                if calls["n"] == n and after:
                    action()
                return result

            def render(self, z, labels=None):
                return engine.render(z, labels)

        return Acting()

    return factory


def test_a_stop_inside_a_huge_row_group_keeps_the_units_already_done(tmp_path, models):
    """A signal part way through a one-row-group manifest commits the finished units; the resume
    finishes the rest and every row is there once."""
    path = write_manifest(tmp_path / "m.parquet", {"id": np.arange(120), "z": latents(120)})
    out = tmp_path / "job"
    config = job_config(path, out, models, unit_rows=32, batch_size=16)
    # As SIGINT would, from the main thread, in the middle of the fourth batch.
    factory = _engine_doing_at(4, lambda: stop["flag"].stop(2))

    from zsteer.jobs import runner

    stop = {}
    real_flag = runner.StopFlag

    def capture(install):
        stop["flag"] = real_flag(install)
        return stop["flag"]

    runner.StopFlag, saved = capture, runner.StopFlag
    try:
        result = run_job(config, editor_factory=factory)
    finally:
        runner.StopFlag = saved
    assert result.status == "interrupted" and result.exit_code == 130
    # Units of two batches of 16 rows on two threads: any three batches finish one unit, which is
    # committed; the stop came as the fourth batch started, and the editor asks the flag between steps,
    # so that batch and the other unit are dropped.
    committed = [c["unit"] for c in _commit_docs(out)]
    assert committed in (["0:0:0"], ["0:0:1"])
    assert run_job(config).status == "complete"
    assert sorted(read_parts(out).column("id").to_pylist()) == list(range(120))


# -- faults: the data's (rejects) and the system's (fatal, resumable) ----------------------------------


def _route_reader_opens(monkeypatch, open_file) -> None:
    """The job's reader (jobs/reader.py), and it only, opens its Parquet files with
    ``open_file(path, **options)``."""
    from zsteer.jobs import reader
    from zsteer.jobs.storage import LocalStorage

    class Routed(LocalStorage):
        def parquet_file(self, path, **options):
            return open_file(path, **options)

    monkeypatch.setattr(reader, "storage_of", lambda path: Routed())


@pytest.mark.parametrize("where", ["open", "read"])
def test_os_errors_are_fatal_one_line_errors_and_the_job_resumes(tmp_path, models, monkeypatch, where):
    """File gone, permission denied, EIO: nothing about the rows, so nothing is rejected; the job stops
    with one line naming the file, keeps what it committed, and the same command finishes it."""
    import errno

    from zsteer.jobs import reader

    data = tmp_path / "data"
    write_manifest(data / "a.parquet", {"id": np.arange(40), "z": latents(40)}, row_group_size=20)
    b = write_manifest(data / "b.parquet", {"id": np.arange(40, 80), "z": latents(40, 1)}, row_group_size=20)
    real = reader.pq.ParquetFile

    class Failing(real):
        def __init__(self, source, **kw):
            if where == "open" and str(source) == str(b.resolve()):
                raise PermissionError(errno.EACCES, "Permission denied", str(source))
            super().__init__(source, **kw)
            self.source = str(source)

        def iter_batches(self, *args, row_groups=None, **kw):
            for batch in super().iter_batches(*args, row_groups=row_groups, **kw):
                if where == "read" and self.source == str(b.resolve()) and row_groups == [1]:
                    raise OSError(errno.EIO, "Input/output error")
                yield batch

    _route_reader_opens(monkeypatch, Failing)
    out = tmp_path / "job"
    config = job_config(data, out, models)
    with pytest.raises(ZsteerError) as info:
        run_job(config)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{b.resolve()}: cannot ")
    assert ("Permission denied" if where == "open" else "Input/output error") in message
    assert "run the same command again to resume" in message
    assert read_rejects(out) is None, "an OS error must not reject rows"
    assert "1:1:0" not in {c["unit"] for c in _commit_docs(out)}
    monkeypatch.undo()  # the file is readable again
    assert run_job(config).status == "complete"
    assert sorted(read_parts(out).column("id").to_pylist()) == list(range(80))
    assert read_rejects(out) is None


def test_an_input_rewritten_during_the_job_stops_it_and_the_original_resumes(tmp_path, models, monkeypatch):
    """b.parquet is written again (other row groups) after the job planned it: its rows are not the ones
    job.json names, so the job stops with one line instead of reading or rejecting them; with the
    original back (modification time included), the same command finishes."""
    import os
    import shutil
    import threading

    from zsteer.jobs import reader

    data = tmp_path / "data"
    write_manifest(data / "a.parquet", {"id": np.arange(40), "z": latents(40)}, row_group_size=20)
    b = write_manifest(data / "b.parquet", {"id": np.arange(40, 80), "z": latents(40, 1)}, row_group_size=20)
    saved = tmp_path / "b.saved"
    shutil.copy2(b, saved)
    real, rewritten, lock = reader.pq.ParquetFile, [], threading.Lock()

    def rewrite_then_open(source, **kw):
        with lock:  # two unit threads may open b at once: it is rewritten once, before either reads it
            if str(source) == str(b.resolve()) and not rewritten:
                write_manifest(b, {"id": np.arange(40, 80), "z": latents(40, 2)}, row_group_size=8)
                rewritten.append(True)
        return real(source, **kw)

    _route_reader_opens(monkeypatch, rewrite_then_open)
    out = tmp_path / "job"
    config = job_config(data, out, models)
    with pytest.raises(ZsteerError, match=r"b\.parquet: changed since the job started") as info:
        run_job(config)
    assert "\n" not in str(info.value) and read_rejects(out) is None
    monkeypatch.undo()
    shutil.copy2(saved, b)  # contents and modification time
    assert os.stat(b).st_mtime_ns == os.stat(saved).st_mtime_ns
    assert run_job(config).status == "complete"
    assert sorted(read_parts(out).column("id").to_pylist()) == list(range(80))


def test_a_failing_commit_stops_the_job_instead_of_hanging(tmp_path, models, monkeypatch):
    """A worker's commit fails (a full disk) while the other worker is busy: the job stops with that
    error, and it does not wait for units that will never be handed out."""
    import threading

    from zsteer.jobs import commit

    n = 160  # every row rejected (null z): the commits are all the work there is
    path = write_manifest(
        tmp_path / "m.parquet", {"id": np.arange(n), "z": [None] * n},
        schema=pa.schema([("id", pa.int64()), ("z", pa.list_(pa.float32()))]), row_group_size=20,
    )  # fmt: skip

    def failing(folder, output, rows_per_shard):
        raise OSError("No space left on device")

    monkeypatch.setattr(commit, "commit_unit", failing)  # what every executor's worker calls
    outcome = {}

    def run():
        try:
            run_job(job_config(path, tmp_path / "job", models, read_rows=8))
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive(), "the job hung after a commit failed"
    assert "No space left on device" in str(outcome.get("error"))
    assert not list((tmp_path / "job" / "commits").glob("commit-*.json"))


def test_a_failed_run_stops_its_workers_before_releasing_the_folder(tmp_path, models, manifest, monkeypatch):
    """The editor fails while another worker is still committing: run_job returns only once every worker
    is gone, so nothing writes into the folder after its lock is released."""
    import threading
    import time

    from zsteer.jobs import commit

    real_commit = commit.commit_unit

    def slow_commit(folder, output, rows_per_shard):
        time.sleep(0.3)
        return real_commit(folder, output, rows_per_shard)

    def device_lost():
        raise RuntimeError("device lost")

    monkeypatch.setattr(commit, "commit_unit", slow_commit)
    with pytest.raises(RuntimeError, match="device lost"):
        run_job(
            job_config(manifest, tmp_path / "job", models), editor_factory=_engine_doing_at(6, device_lost)
        )
    assert not [t for t in threading.enumerate() if t.name.startswith("zsteer-unit") and t.is_alive()]
    with FolderLock(tmp_path / "job"):  # free
        pass


# -- resume checks: inputs -----------------------------------------------------------------------------


def test_a_regenerated_input_of_the_same_size_is_refused(tmp_path, models):
    import os

    def write(seed):  # plain encoding, no compression: the same rows always make the same file size
        table = pa.table(
            {
                "id": np.arange(50),
                "z": pa.FixedSizeListArray.from_arrays(pa.array(latents(50, seed).ravel()), Z_DIM),
            }
        )
        pq.write_table(table, path, compression="none", use_dictionary=False)

    path = tmp_path / "m.parquet"
    write(0)
    out = tmp_path / "job"
    run_job(job_config(path, out, models))
    stat = path.stat()
    write(1)  # other latents, same size; the mtime put back as it was
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    with pytest.raises(ZsteerError, match=rf"inputs\.{path.resolve()}\.footer_blake2b: "):
        run_job(job_config(path, out, models))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(ZsteerError, match=r"\.mtime_ns: "):
        run_job(job_config(path, out, models))


def test_resume_with_the_output_folder_inside_the_manifest_directory(tmp_path, models):
    data = tmp_path / "data"
    write_manifest(data / "a.parquet", {"id": np.arange(30), "z": latents(30)}, row_group_size=10)
    out = data / "run"
    for _ in range(2):  # the second run finds parts/ under data/ and must not read them
        assert run_job(job_config(data, out, models)).status == "complete"
    assert sorted(read_parts(out).column("id").to_pylist()) == list(range(30))
    with pytest.raises(ZsteerError, match="inside the output folder"):
        run_job(job_config([data, sorted((out / "parts").glob("part-*.parquet"))[0]], out, models))


# -- the manifest contract -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("columns", "fragment"),
    [
        ({"id": pa.array([1, 2], pa.uint64())}, "column 'id' must be int64 or string, found uint64"),
        ({"label": pa.array(["a", "b"])}, "column 'label' must be integers, found string"),
        ({"steps": pa.array([1.5, 2.0])}, "column 'steps' must be integers, found double"),
        ({"stop_at_prob": pa.array([1, 2])}, "column 'stop_at_prob' must be floats, found int64"),
        ({"targets": pa.array([1, 2])}, "column 'targets' must be map<string, number>"),
    ],
)
def test_mistyped_columns_are_refused_naming_file_and_column(tmp_path, columns, fragment):
    gspec = GeneratorSpec(kind="course_conditional_generator", z_dim=Z_DIM, n_classes=3, hidden_dim=4)
    cond = tiny_models(tmp_path / "cond", gspec) if "label" in columns else tiny_models(tmp_path / "m")
    base = {"id": pa.array([1, 2]), "z": pa.array([latents(1)[0].tolist()] * 2), "label": pa.array([0, 1])}
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table(base | columns), path)
    with pytest.raises(ZsteerError) as info:
        run_job(job_config(path, tmp_path / "job", cond))
    assert str(info.value).startswith(f"{path.resolve()}: ") and fragment in str(info.value)
    assert not (tmp_path / "job").exists()


@pytest.mark.parametrize(
    ("b_columns", "fragment"),
    [
        (
            {"id": np.arange(3, 5), "z": latents(2), "note": [1.5, 2.5]},
            "column 'note' is double but string in",
        ),
        ({"id": np.arange(3, 5), "z": latents(2), "note": [1, 2]}, "column 'note' is int64 but string in"),
        (
            {"id": ["p", "q"], "z": latents(2), "note": ["x", "y"]},
            "column 'id' holds strings but integers in",
        ),
    ],
)
def test_files_of_one_job_must_not_conflict(tmp_path, models, b_columns, fragment):
    """Conflicts only: columns that unify are tests/test_manifest_union.py's."""
    data = tmp_path / "data"
    write_manifest(data / "a.parquet", {"id": np.arange(3), "z": latents(3), "note": ["a", "b", "c"]})
    b = write_manifest(data / "b.parquet", b_columns)
    with pytest.raises(ZsteerError) as info:
        run_job(job_config(data, tmp_path / "job", models))
    assert str(info.value).startswith(f"{b.resolve()}: ") and fragment in str(info.value)


def test_per_row_steps_and_stop_at_prob_out_of_range_are_rejected(tmp_path, models):
    from zsteer.jobs.manifest import MAX_ROW_STEPS

    rows = [  # (steps, stop_at_prob) -> reason fragment (None = edited)
        (None, None, None),
        (5, None, None),
        (MAX_ROW_STEPS + 1, None, f"steps {MAX_ROW_STEPS + 1} is above the most a row may ask for"),
        (2_000_000_000, None, "steps 2000000000 is above"),
        (None, math.nan, None),  # NaN: never stop early
        (None, 0.5, None),
        (None, 1.0, "stop_at_prob 1.0 is not in (0, 1)"),
        (None, 0.0, "stop_at_prob 0.0 is not in (0, 1)"),
        (None, -0.1, "stop_at_prob -0.1 is not in (0, 1)"),
        (None, 1.5, "stop_at_prob 1.5 is not in (0, 1)"),
        (None, math.inf, "stop_at_prob inf is not in (0, 1)"),
    ]
    n = len(rows)
    path = write_manifest(
        tmp_path / "m.parquet",
        {"id": np.arange(n), "z": latents(n), "steps": [r[0] for r in rows], "stop_at_prob": [r[1] for r in rows]},
        schema=pa.schema(
            [("id", pa.int64()), ("z", pa.list_(pa.float32(), Z_DIM)), ("steps", pa.int64()),
             ("stop_at_prob", pa.float64())]
        ),
    )  # fmt: skip
    run_job(job_config(path, tmp_path / "job", models))
    reasons = reasons_by_row(tmp_path / "job")
    for i, (_, _, fragment) in enumerate(rows):
        if fragment is None:
            assert i not in reasons
        else:
            assert fragment in reasons[i], (i, reasons.get(i))
    steps = _by_id(read_parts(tmp_path / "job"), "steps_taken")
    assert steps[0] == 3 and steps[1] == 5


# -- summaries and rejects -----------------------------------------------------------------------------


def test_a_signal_after_the_last_batch_reports_the_job_complete(tmp_path, models, manifest):
    import dataclasses
    import os
    import signal

    # Units of 70, 70 and 60 rows in batches of 16: 5 + 5 + 4 batches, the 14th is the last: the signal
    # comes once it is edited (a signal during a batch stops it at its next step).
    factory = _engine_doing_at(14, lambda: os.kill(os.getpid(), signal.SIGINT), after=True)

    config = dataclasses.replace(job_config(manifest, tmp_path / "job", models), handle_signals=True)
    result = run_job(config, editor_factory=factory)
    assert (result.status, result.exit_code) == ("complete", 0)
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert summary["complete"] and summary["runs"][-1]["status"] == "complete"


def test_a_rerun_with_nothing_left_keeps_the_jobs_totals(tmp_path, models, manifest):
    out = tmp_path / "job"
    run_job(job_config(manifest, out, models))
    first = json.loads((out / "summary.json").read_text())
    assert run_job(job_config(manifest, out, models)).status == "complete"
    again = json.loads((out / "summary.json").read_text())
    assert len(again["runs"]) == 2 and again["runs"][1]["edited"] == 0
    assert again["stage_seconds"] == first["stage_seconds"] and again["stage_seconds"]["compute"] > 0
    assert 0 < again["latents_per_second"] <= first["latents_per_second"]
    assert again["edited"] == 200 and again["peak_rss_mb"] >= first["peak_rss_mb"]


def test_rejects_are_written_in_bounded_files(tmp_path, models):
    n = 150  # every row rejected: the commits hold rejects only
    path = write_manifest(
        tmp_path / "m.parquet", {"id": np.arange(n), "z": [None] * n},
        schema=pa.schema([("id", pa.int64()), ("z", pa.list_(pa.float32()))]), row_group_size=100,
    )  # fmt: skip
    out = tmp_path / "job"
    run_job(job_config(path, out, models, unit_rows=50, output={"rows_per_shard": 32}))
    sizes = [pq.read_metadata(p).num_rows for p in sorted((out / "rejects").iterdir())]
    assert max(sizes) <= 32 and sum(sizes) == n
    assert sorted(read_rejects(out).column("row").to_pylist()) == list(range(n))
    assert read_parts(out) is None


# -- a row's result depends on that row and the settings only ------------------------------------------


def test_rows_do_not_depend_on_reading_sharding_units_or_row_groups(tmp_path, models):
    n = 180
    z = latents(n, seed=5)
    bad = {
        7: "z has NaN or Inf (as float32)",
        64: "z is null",
        150: "duplicate id 3 (first in m.parquet, row 3)",
    }
    zs = [None if i == 64 else [math.nan] * Z_DIM if i == 7 else z[i].tolist() for i in range(n)]
    ids = [3 if i == 150 else i for i in range(n)]
    steps = [1 + i % 5 if i % 3 == 0 else None for i in range(n)]  # per-row budgets vary in a batch
    schema = pa.schema([("id", pa.int64()), ("z", pa.list_(pa.float32())), ("steps", pa.int64())])
    layouts = [  # (row_group_size, batch_size, read_rows, rows_per_shard, unit_rows)
        (180, 16, 4096, 64, 4096),
        (180, 7, 5, 11, 13),
        (33, 16, 9, 200, 20),
        (50, 32, 50, 50, 50),
        (1, 16, 4096, 3, 4096),
    ]
    results = []
    for k, (group, batch, read, shard, unit) in enumerate(layouts):
        path = write_manifest(
            tmp_path / f"m{k}" / "m.parquet", {"id": ids, "z": zs, "steps": steps}, row_group_size=group,
            schema=schema,
        )  # fmt: skip
        out = tmp_path / f"job{k}"
        config = job_config(
            path, out, models, batch_size=batch, read_rows=read, unit_rows=unit,
            output={"rows_per_shard": shard},
        )  # fmt: skip
        run_job(config)
        parts = read_parts(out)
        rejects = read_rejects(out)
        results.append((
            {c: _by_id(parts, c) for c in ("z_edited", "logits_before", "logits_after", "latent_shift")},
            {c: _by_id(parts, c) for c in ("steps_taken", "stop_reason")},
            sorted(zip(rejects.column("row").to_pylist(), rejects.column("reason").to_pylist(), strict=True)),
        ))  # fmt: skip
    want_floats, want_exact, want_rejects = results[0]
    assert [(row, reason) for row, reason in want_rejects] == [(i, bad[i]) for i in sorted(bad)]
    assert len(want_exact["steps_taken"]) == n - len(bad)
    for floats, exact, rejected in results[1:]:
        assert exact == want_exact and rejected == want_rejects
        for column, values in floats.items():
            assert values.keys() == want_floats[column].keys()
            diff = max(np.abs(np.subtract(values[i], want_floats[column][i])).max() for i in values)
            assert diff <= 1e-5, (column, diff)
