"""run_job end to end on tiny models: outputs, carried columns, batch-size independence, overrides,
rejects, resume checks, the lock, and exactly-once after an injected crash."""

from __future__ import annotations

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
    job_config,
    latents,
    one_thread,
    read_parts,
    read_rejects,
    reasons_by_row,
    tiny_models,
    write_manifest,
)
from modelkit import write_models
from PIL import Image

from zsteer.jobs import folder as folder_module
from zsteer.jobs.lock import FolderLock
from zsteer.jobs.runner import run_job
from zsteer.pipeline.errors import ZsteerError
from zsteer.pipeline.models import GeneratorSpec


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory.mktemp("models"))


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
        assert rejects.column("reason").to_pylist() == ["duplicate id 'x'"]
        assert rejects.column("source").to_pylist() == [str((data / "b.parquet").resolve())]
        # ids never become file names
        names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
        assert all(
            n.split("/")[0] in ("parts", "rejects", "commits") or n in ("job.json", "summary.json", ".lock")
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


def test_crash_between_shard_and_commit_leaves_no_duplicates(tmp_path, models, manifest, monkeypatch):
    """A crash after a shard is renamed into place but before its commit marker: the resume deletes
    the orphan shard and redoes its units, so every row is still there exactly once."""
    out = tmp_path / "job"
    real_commit = folder_module.JobFolder.commit
    calls = {"n": 0}

    def crashing_commit(self, commit):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")
        real_commit(self, commit)

    monkeypatch.setattr(folder_module.JobFolder, "commit", crashing_commit)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_job(job_config(manifest, out, models, output={"flush_seconds": 0.0}))
    monkeypatch.setattr(folder_module.JobFolder, "commit", real_commit)
    assert len(list((out / "commits").glob("commit-*.json"))) == 1
    run_job(job_config(manifest, out, models, output={"flush_seconds": 0.0}))
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
    assert len(commits) == 1 and len(commits[0]["parts"]) == 5 and commits[0]["units"] == ["0:0:0"]
    assert sorted(read_parts(out).column("id").to_pylist()) == list(range(150))


def test_unreadable_row_group_becomes_rejects(tmp_path, models, monkeypatch):
    """A row group that fails mid-read (a corrupt page) turns its unread rows into rejects."""
    from zsteer.jobs import reader

    path = write_manifest(tmp_path / "m.parquet", {"id": np.arange(30), "z": latents(30)}, row_group_size=10)
    real = reader.pq.ParquetFile

    class Flaky(real):
        def iter_batches(self, *args, row_groups=None, **kw):
            for i, batch in enumerate(super().iter_batches(*args, row_groups=row_groups, **kw)):
                if row_groups == [1] and i == 1:
                    raise pa.ArrowInvalid("Corrupt snappy compressed data.")
                yield batch

    monkeypatch.setattr(reader.pq, "ParquetFile", Flaky)
    run_job(job_config(path, tmp_path / "job", models, read_rows=4))
    reasons = reasons_by_row(tmp_path / "job")
    assert sorted(reasons) == [14, 15, 16, 17, 18, 19]
    assert set(reasons.values()) == {"row group unreadable: Corrupt snappy compressed data."}
    assert sorted(read_parts(tmp_path / "job").column("id").to_pylist()) == list(range(14)) + list(
        range(20, 30)
    )


def test_a_compiled_engine_sees_full_batches_only(tmp_path, models, manifest):
    """The job's last, short batch is padded for a compiled engine (one shape, one compile), and the
    padding rows never reach the output. The factory is also how another backend plugs in."""
    from zsteer.pipeline.engine import make_engine

    sizes = []

    def factory(generator, classifier, ascent, engine_config):
        engine = make_engine(generator, classifier, ascent, engine_config)

        class Recording:
            compiled = True

            def edit(self, z, *args, **kwargs):
                sizes.append(len(z))
                return engine.edit(z, *args, **kwargs)

        return Recording()

    run_job(job_config(manifest, tmp_path / "job", models, batch_size=16), engine_factory=factory)
    assert set(sizes) == {16} and len(sizes) == 13  # 200 rows = 12 full batches + 8 rows padded
    assert sorted(read_parts(tmp_path / "job").column("id").to_pylist()) == list(range(200))
