"""`-m` and `--out` as pyarrow.fs URIs (jobs/storage.py): the same rows as a local job, bit for bit, with
the object-store protocol (no rename: whole writes, names unique per attempt, create-only markers).

``norename://`` (tests/storekit.py) is the local file system with rename refused, so nothing here can
pass by renaming; ``s3://`` runs against a local S3 (moto's server) when moto is installed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import storekit
from jobkit import crash_at_commit, job_config, planted_manifests, read_parts, read_rejects

from zsteer.core.errors import ZsteerError
from zsteer.jobs.commit import commit_unit
from zsteer.jobs.folder import JobFolder
from zsteer.jobs.lock import LEASE_SECONDS, StoreLease
from zsteer.jobs.reader import UnitReader
from zsteer.jobs.rows import Unit, plan_units
from zsteer.jobs.runner import prepare_job, run_job, unit_plan
from zsteer.jobs.sheet import SheetConfig, job_sheet
from zsteer.jobs.storage import LocalCreateOnly, StorePath, check_writable, locate, storage_of
from zsteer.jobs.unit import UnitOutput, process_unit
from zsteer.jobs.verify import check_commit, verify_folder

pytestmark = pytest.mark.usefixtures("single_thread")

N_A, N_B = 120, 80  # row groups of 40, units of 20: 10 units
BAD = {("a", 17): "NaN", ("b", 10): "duplicate", ("b", 50): "null z"}


@pytest.fixture(autouse=True, scope="module")
def norename():
    storekit.register()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return planted_manifests(tmp_path_factory.mktemp("store") / "data", {"a": N_A, "b": N_B}, BAD, 40)


def _config(manifests, out, models, **kw):
    return job_config(manifests, out, models, unit_rows=20, read_rows=16, **kw)


@pytest.fixture(scope="module")
def local_job(data, job_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "job"
    run_job(_config(data, out, job_models))
    return out


def read_committed(out: str) -> tuple[pa.Table, pa.Table]:
    """(parts, rejects) of a job folder, as a reader should take them: the files its markers name."""
    folder = JobFolder(locate(out, "--out"))
    commits = folder.load_commits()
    tables = {"parts": [], "rejects": []}
    for commit in commits:
        for kind, names in (("parts", commit.parts), ("rejects", commit.rejects)):
            for name in names:
                with folder.storage.parquet_file(folder.root / kind / name) as pf:
                    tables[kind].append(pf.read())
    return tuple(pa.concat_tables(tables[k]) for k in ("parts", "rejects"))


def _assert_local_rows(out: str, local_job: Path) -> None:
    """The local job's rows and rejects, bit for bit (as sets by id / source row), each exactly once."""
    parts, rejects = read_committed(out)
    ids = parts.column("id").to_pylist()
    assert len(ids) == len(set(ids)), "an edited row was written twice"
    assert parts.sort_by("id").equals(read_parts(local_job).sort_by("id"))
    # Rejects name their source file: here by its URI, locally by its path; otherwise the same.
    sources = rejects.column("source").to_pylist()
    assert all(s.startswith(f"{storekit.SCHEME}:///") for s in sources)
    local_paths = pa.array([s.removeprefix(f"{storekit.SCHEME}://") for s in sources], pa.string())
    rejects = rejects.set_column(rejects.schema.get_field_index("source"), "source", local_paths)
    keys = [("source", "ascending"), ("row", "ascending")]
    assert rejects.sort_by(keys).equals(read_rejects(local_job).sort_by(keys))
    assert parts.num_rows + rejects.num_rows == N_A + N_B and rejects.num_rows == len(BAD)


def test_a_job_on_a_store_without_rename_writes_the_local_rows_bit_for_bit(
    data, job_models, local_job, tmp_path
):
    out = storekit.uri(tmp_path / "job")
    result = run_job(_config(storekit.uri(data), out, job_models))
    assert result.status == "complete" and result.summary["rows_done"] == N_A + N_B
    _assert_local_rows(out, local_job)
    job = json.loads((tmp_path / "job" / "job.json").read_text())
    assert sorted(job["identity"]["inputs"]) == [
        storekit.uri(data / "a.parquet"),
        storekit.uri(data / "b.parquet"),
    ]
    names = [p.name for p in (tmp_path / "job" / "parts").iterdir()]
    assert names and all(len(n.split("-")) == 6 for n in names), names  # part-F-G-C-K-<token>.parquet
    assert not [p for p in (tmp_path / "job").rglob(".tmp-*")]
    assert not (tmp_path / "job" / ".lock").exists(), "the lease is given back at the end"
    report = verify_folder(out)
    assert report.ok and report.units == 10 and not report.strays
    # The contact sheet reads the shards its markers name, through the store: the local job's sheet.
    # An object no marker names (a zombie's) sorts first in parts/ and is not read.
    stray = tmp_path / "job" / "parts" / "part-000000-000000-000000-000-0000000000000000.parquet"
    pq.write_table(read_parts(local_job).slice(100, 5), stray)
    sheets = [
        job_sheet(SheetConfig(job=j, out=tmp_path / f"{i}.png", rows=4))
        for i, j in enumerate((out, local_job))
    ]
    assert sheets[0].read_bytes() == sheets[1].read_bytes()
    stray.unlink()
    # Run again: nothing to do, the output stays.
    assert run_job(_config(storekit.uri(data), out, job_models)).summary["units_done"] == 10
    _assert_local_rows(out, local_job)


def test_file_uris_and_plain_paths_mix_and_a_crash_resumes_to_exactly_once(
    data, job_models, local_job, tmp_path, monkeypatch
):
    """file:// for --out, -m as a plain path and a file:// glob; the 4th marker fails as a crash would;
    the same command finishes, every row exactly once, the local rows bit for bit."""
    out = f"file://{tmp_path / 'job'}"
    manifests = [str(data / "a.parquet"), f"file://{data}/b*.parquet"]
    config = _config(manifests, out, job_models)
    crash_at_commit(monkeypatch, 4, config)
    # The crashed attempt's files are there, named by no marker; a reader never sees them.
    assert len(JobFolder(locate(out, "--out")).load_commits()) == 3
    assert len(list((tmp_path / "job" / "parts").iterdir())) > 3
    assert verify_folder(out).strays
    result = run_job(config)
    assert result.status == "complete"
    parts, rejects = read_committed(out)
    assert parts.sort_by("id").equals(read_parts(local_job).sort_by("id"))
    assert parts.num_rows + rejects.num_rows == N_A + N_B
    assert not verify_folder(out).strays, "a resume removes the objects no marker names"


def test_a_zombie_attempt_after_the_commit_leaves_the_committed_output_unchanged(data, job_models, tmp_path):
    """A worker thought dead finishes unit 0:0:0 after the job committed it: its shards go under names of
    its own, its create-only marker loses, it gets the winner's marker back and removes its files. A
    zombie that dies after writing its shards leaves objects no marker names: readers never see them."""
    out = storekit.uri(tmp_path / "job")
    config = _config(storekit.uri(data), out, job_models)
    run_job(config)
    before = read_committed(out)
    marker = tmp_path / "job" / "commits" / "commit-000000-000000-000000.json"
    marker_bytes = marker.read_bytes()

    prep, unit, output = _another_attempt(config, 0)
    winner = commit_unit(prep.folder, output, config.output.rows_per_shard)
    assert winner == prep.folder.read_marker(prep.folder.marker(unit.key))
    assert marker.read_bytes() == marker_bytes
    assert not verify_folder(out).strays, "the losing attempt removed its own objects"
    # A zombie that dies between its shards and its marker: its objects are there, unnamed.
    prep.folder.storage.write_parquet(
        output.edited, prep.folder.parts / "part-000000-000000-000000-000-00000000deadbeef.parquet"
    )
    after = read_committed(out)
    assert after[0].equals(before[0]) and after[1].equals(before[1])
    report = verify_folder(out)
    assert report.ok and [p.name for p in report.strays] == [
        "part-000000-000000-000000-000-00000000deadbeef.parquet"
    ]


def _another_attempt(config, k: int):
    """(the job's prep, its unit ``k``, that unit's output as another attempt computes it): a worker
    outside the run, such as a zombie, not yet committed."""
    prep = prepare_job(config)
    plan = unit_plan(config, prep, _saved_duplicates(prep))
    unit = plan_units(prep.plan, config.unit_rows)[k]
    editor = config.method.make_editor(prep.generator, prep.classifier, config.engine, config.backend)
    with UnitReader(plan.manifest, plan.read_rows) as reader:
        return prep, unit, process_unit(plan, unit, editor, reader=reader)


def _saved_duplicates(prep):
    from zsteer.jobs.duplicates import DuplicateIndex

    return DuplicateIndex.load(prep.folder.root / "duplicates.npz")


def test_a_second_run_is_refused_while_the_lease_is_held_and_a_dead_drivers_lease_runs_out(tmp_path):
    root = locate(storekit.uri(tmp_path / "job"), "--out")
    root.store.make_folder(root)
    with StoreLease(root):
        with pytest.raises(ZsteerError) as info, StoreLease(root):
            pass
        assert "\n" not in str(info.value) and "holds its lease" in str(info.value)
    assert not (tmp_path / "job" / ".lock").exists()
    # A driver killed with its lease held: the lease stays until it runs out, then the next run takes it.
    (tmp_path / "job" / ".lock").write_text('{"host": "gone", "pid": 1}\n')
    old = time.time() - LEASE_SECONDS - 5
    os.utime(tmp_path / "job" / ".lock", (old, old))
    with StoreLease(root):
        assert json.loads((tmp_path / "job" / ".lock").read_text())["pid"] == os.getpid()


@pytest.mark.parametrize(
    ("field", "text", "expected"),
    [
        ("--out", "foo://bucket/x", "--out foo://bucket/x: not a location zsteer can open (Unrecognized"),
        ("--out", "s3:///prefix", "--out s3:///prefix: "),
        ("--manifest", "nope://a/b.parquet", "--manifest nope://a/b.parquet: not a location zsteer can open"),
    ],
)
def test_a_bad_uri_is_one_line_naming_the_field(field, text, expected):
    with pytest.raises(ZsteerError) as info:
        locate(text, field)
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)


def test_bad_locations_stop_the_job_in_one_line_before_anything_is_written(data, job_models, tmp_path):
    for out, expected in (
        ("foo://bucket/job", "--out foo://bucket/job: not a location"),
        ("s3://", "--out s3://: "),
        ("mock:///job", "--out mock://job: zsteer commits job folders only to"),  # readable, not committable
    ):
        with pytest.raises(ZsteerError) as info:
            run_job(_config(data, out, job_models))
        assert str(info.value).startswith(expected) and "\n" not in str(info.value), str(info.value)
    with pytest.raises(ZsteerError, match=r"^--manifest file:///nowhere/x\.parquet: no such file or prefix$"):
        run_job(_config("file:///nowhere/x.parquet", tmp_path / "job", job_models))
    assert not (tmp_path / "job").exists()


def test_s3_without_boto3_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 raises ImportError
    root = locate("s3://bucket/job?endpoint_override=127.0.0.1:9&scheme=http&region=us-east-1", "--out")
    with pytest.raises(ZsteerError) as info:
        check_writable(root)
    message = str(info.value)
    assert "\n" not in message and "the 's3' extra" in message and "pip install 'zsteer[s3]'" in message


# -- a real S3 protocol: moto's server -------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3(data):
    """(URI of the manifests on a local S3, the query that reaches it)."""
    pytest.importorskip("moto.server", reason="moto[server] (the test extra) is not installed")
    pytest.importorskip("boto3", reason="boto3 (the s3 extra) is not installed")
    import pyarrow.fs as pafs

    with storekit.s3_server() as query:
        data_uri = f"s3://{storekit.BUCKET}/data"  # the endpoint from AWS_ENDPOINT_URL
        fs = locate(data_uri, "--manifest").store.fs
        pafs.copy_files(str(data), f"{storekit.BUCKET}/data", destination_filesystem=fs)
        yield data_uri, query


def test_s3_keeps_the_first_create_and_refuses_the_second(s3):
    _, query = s3
    marker = locate(f"s3://{storekit.BUCKET}/race/commit.json?{query}", "--out")
    assert marker.store.create_only(marker, b"first") is True
    assert marker.store.create_only(marker, b"second") is False
    assert marker.store.read_bytes(marker) == b"first"


def test_a_job_from_s3_to_s3_writes_the_local_rows_and_resumes_after_a_crash(
    s3, job_models, local_job, monkeypatch, tmp_path
):
    data_uri, _ = s3
    out = f"s3://{storekit.BUCKET}/job"
    config = _config(data_uri, out, job_models)
    crash_at_commit(monkeypatch, 3, config)
    root = locate(out, "--out")
    assert root.store.stat(root / ".lock") is None, "a run that failed gives its lease back"
    assert run_job(config).status == "complete"
    parts, rejects = read_committed(out)
    assert parts.sort_by("id").equals(read_parts(local_job).sort_by("id"))
    assert parts.num_rows + rejects.num_rows == N_A + N_B
    assert all(s.startswith(f"s3://{storekit.BUCKET}/data/") for s in rejects.column("source").to_pylist())
    report = verify_folder(out)
    assert report.ok and report.units == 10 and not report.strays
    summary = json.loads(root.store.read_bytes(root / "summary.json"))
    assert summary["complete"] and summary["rows_done"] == N_A + N_B
    # Read back by the URIs job.json recorded (the endpoint from the environment): the local job's sheet.
    sheets = [
        job_sheet(SheetConfig(job=j, out=tmp_path / f"{i}.png", rows=4))
        for i, j in enumerate((out, local_job))
    ]
    assert sheets[0].read_bytes() == sheets[1].read_bytes()


def test_the_command_line_takes_uris_for_manifests_out_and_verify(data, job_models, local_job, tmp_path):
    """`zsteer edit -m file://... --out file://...` (click.Path would have made `file:/...` of them), then
    `zsteer verify` by URI; a bad --out URI is exit 2 with one line."""
    from click.testing import CliRunner

    from zsteer.cli.main import main

    def run(*args):
        return CliRunner().invoke(main, [str(a) for a in args])

    out = f"file://{tmp_path / 'job'}"
    edit = ["edit", "-m", f"file://{data}", "--generator", job_models[0], "--classifier", job_models[1]]
    edit += [
        "-t",
        "attr1",
        "--steps",
        3,
        "--lr",
        0.5,
        "--images",
        "none",
        "--unit-rows",
        20,
        "--read-rows",
        16,
    ]
    edit += ["--rows-per-shard", 64, "--workers", 0, "--batch-size", 16]
    result = run(*edit, "--out", out)
    assert result.exit_code == 0, (result.output, result.exception)
    parts, _ = read_committed(out)
    assert parts.sort_by("id").equals(read_parts(local_job).sort_by("id"))
    assert run("verify", out).exit_code == 0
    bad = run(*edit, "--out", "nope://bucket/job")
    lines = bad.stderr.strip().splitlines()
    assert bad.exit_code == 2 and len(lines) == 1 and "--out nope://bucket/job: not a location" in lines[0]


def test_a_path_pyarrow_reads_as_a_uri_is_refused_before_the_job_folder(
    data, job_models, tmp_path, monkeypatch
):
    """`--out file:uri3` (click makes a Path of it) was a local folder to zsteer and a relative file: URI to
    pyarrow's writers: the job computed its rows, then failed at the first commit, leaving `file:uri3/`."""
    from click.testing import CliRunner

    from zsteer.cli.main import main

    monkeypatch.chdir(tmp_path)
    edit = ["edit", "-m", str(data), "--generator", str(job_models[0]), "--classifier", str(job_models[1])]
    edit += ["-t", "attr1", "--steps", "1", "--images", "none", "--workers", "0"]
    for out, reason in (
        ("file:uri3", "File URI cannot be relative"),
        ("ab:c/job", "Unrecognized filesystem"),
    ):
        result = CliRunner().invoke(main, [*edit, "--out", out])
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert lines[0].startswith(f"zsteer: error: --out {out}: not a location zsteer can open ({reason}")
        assert "give an absolute path" in lines[0]
    assert not any(tmp_path.iterdir())
    with pytest.raises(
        ZsteerError, match=r"^--manifest file:x\.parquet: not a location .*cannot be relative"
    ):
        locate(Path("file:x.parquet"), "--manifest")
    assert locate(Path(tmp_path / "a:b"), "--out") == tmp_path / "a:b"  # absolute: a path to pyarrow too
    assert locate(Path("out/a:b"), "--out") == Path("out/a:b")
    where = locate(f"file:{tmp_path / 'job'}", "--out")  # file:/abs is pyarrow's file:///abs
    assert isinstance(where, StorePath) and str(where) == f"file://{tmp_path / 'job'}"
    (tmp_path / "latents:v2.parquet").write_bytes(b"")  # a file that is there is read where it is
    assert locate("latents:v2.parquet", "--manifest") == Path("latents:v2.parquet")


@pytest.mark.parametrize(("second", "created"), [("PreconditionFailed", False), (None, True)])
def test_s3_retries_a_create_that_met_a_concurrent_conditional_write(second, created, monkeypatch):
    """S3 answers 409 ConditionalRequestConflict while another conditional write of the key is in flight;
    the retry then loses (412: the other one created it) or wins (the other one failed)."""
    boto3 = pytest.importorskip("boto3", reason="boto3 (the s3 extra) is not installed")
    from botocore.stub import Stubber

    from zsteer.jobs import storage

    creator = storage.S3CreateOnly(endpoint_url="http://stubbed.invalid", region="us-east-1")
    client = boto3.client("s3", endpoint_url=creator.endpoint_url, region_name="us-east-1",
                          aws_access_key_id="x", aws_secret_access_key="x")  # fmt: skip
    monkeypatch.setitem(storage._S3_CLIENTS, creator, client)
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    with Stubber(client) as stub:
        stub.add_client_error("put_object", "ConditionalRequestConflict", http_status_code=409)
        if second is None:
            stub.add_response("put_object", {})
        else:
            stub.add_client_error("put_object", second, http_status_code=412)
        assert creator(None, "bucket/commits/commit-000000-000000-000000.json", b"{}") is created
        stub.assert_no_pending_responses()


def test_interpolation_by_id_to_on_a_uri_out_is_one_line(job_models, tmp_path):
    """Its lookup is memory-mapped in the job folder, which an object store cannot hold: refused in one line
    naming --out (docs/SCALING.md, "Object storage", what is not supported)."""
    import numpy as np
    from jobkit import latents, write_manifest

    from zsteer.jobs.interpolate_method import InterpolateMethod

    manifest = write_manifest(
        tmp_path / "m.parquet", {"id": np.arange(8), "z": latents(8), "id_to": np.arange(8)[::-1].copy()}
    )
    out = storekit.uri(tmp_path / "job")
    with pytest.raises(ZsteerError) as info:
        run_job(_config(manifest, out, job_models, method=InterpolateMethod(frames=2), targets=()))
    assert str(info.value).startswith(f"--out {out}: interpolation with id_to") and "\n" not in str(
        info.value
    )
    assert not (tmp_path / "job").exists(), "refused before the job folder is written"


# ---------------------------------------------------------------------------------------------------------
# A create-only write whose response was lost: botocore retries the PUT, which meets its own object (412)


class StoredThenLost:
    """A create-only write that stores the object, then reports False, as a PUT that succeeded, lost its
    response and was retried by botocore does (the retry gets 412 from the object it wrote itself)."""

    def __call__(self, fs, path, data):
        LocalCreateOnly()(fs, path, data)
        return False


def _lossy_root(tmp_path, name="job"):
    import dataclasses

    root = locate(storekit.uri(tmp_path / name), "--out")
    root.store.make_folder(root)
    return StorePath(root.path, dataclasses.replace(root.store, create=StoredThenLost()))


def _unit_output(n_rows: int = 3) -> UnitOutput:
    edited = pa.table({"id": [f"r{i}" for i in range(n_rows)]})
    return UnitOutput(Unit(0, 0, 0, 0, n_rows), edited, pa.table({"row": pa.array([], pa.int64())}), {})


def test_a_marker_whose_create_response_was_lost_is_the_attempts_own_commit(tmp_path):
    folder = JobFolder(_lossy_root(tmp_path))
    folder.make()
    commit = commit_unit(folder, _unit_output(), rows_per_shard=2)
    assert commit == folder.read_marker(folder.marker("0:0:0"))
    assert len(commit.parts) == 2
    assert all((tmp_path / "job" / "parts" / n).exists() for n in commit.parts), "its shards were kept"
    assert check_commit(folder, commit) == []


def test_a_lease_whose_create_response_was_lost_is_the_runs_own(tmp_path):
    root = _lossy_root(tmp_path)
    with StoreLease(root):
        assert json.loads((tmp_path / "job" / ".lock").read_text())["pid"] == os.getpid()
    assert not (tmp_path / "job" / ".lock").exists()
    # Another run's lease, fresh, is still refused.
    (tmp_path / "job" / ".lock").write_text('{"host": "other", "pid": 1}\n')
    with pytest.raises(ZsteerError, match="holds its lease"), StoreLease(root):
        pass


def test_a_resume_keeps_the_objects_of_a_zombie_that_then_wins_its_unit(
    data, job_models, local_job, tmp_path, monkeypatch
):
    """D1 is killed (at its 4th marker); its worker W, still alive, has written the shards of unit 5 but
    not its marker; D2 resumes and cleans up; W's marker is created; D2's attempt at unit 5 loses. W's
    shards must still be there: a resume removes only strays of units that have a marker. The strays
    of the crashed unit 3 go once D2 commits it."""
    from zsteer.jobs import folder as folder_module

    out = storekit.uri(tmp_path / "job")
    config = _config(storekit.uri(data), out, job_models)
    crash_at_commit(monkeypatch, 4, config)
    prep, unit, output = _another_attempt(config, 5)
    real_commit, real_cleanup = folder_module.JobFolder.commit, folder_module.JobFolder.remove_orphans
    paused = []  # W's marker, not yet created

    def pause(self, commit):
        paused.append(commit)
        raise RuntimeError("W stops before its marker")

    monkeypatch.setattr(folder_module.JobFolder, "commit", pause)
    with pytest.raises(RuntimeError, match="W stops"):
        commit_unit(prep.folder, output, config.output.rows_per_shard)
    monkeypatch.setattr(folder_module.JobFolder, "commit", real_commit)

    def cleanup_then_w_commits(self, commits):
        removed = real_cleanup(self, commits)
        if paused:
            real_commit(self, paused.pop())  # W wakes up after D2's cleanup and wins unit 5
        return removed

    monkeypatch.setattr(folder_module.JobFolder, "remove_orphans", cleanup_then_w_commits)
    assert run_job(config).status == "complete" and not paused
    w_marker = JobFolder(locate(out, "--out")).read_marker(prep.folder.marker(unit.key))
    assert w_marker.parts == [n for n in w_marker.files if n.startswith("part-")]
    report = verify_folder(out)
    assert report.ok, [p.line() for p in report.problems]
    assert not report.strays, "the crashed attempt's strays go once its unit has a marker"
    _assert_local_rows(out, local_job)


def test_listing_a_store_folder_gives_each_entrys_stat_with_no_request_more(tmp_path, monkeypatch):
    """An S3 listing returns each object's size and type: cleanup and `zsteer verify` use them rather than
    stat each entry again (one request per object)."""
    from zsteer.jobs.storage import ObjectStorage

    folder = JobFolder(locate(storekit.uri(tmp_path / "job"), "--out"))
    folder.make()
    folder.write_job({"identity": {}})
    commit_unit(folder, _unit_output(), rows_per_shard=2)
    stats = []
    real_stat = ObjectStorage.stat
    monkeypatch.setattr(
        ObjectStorage, "stat", lambda self, *a, **k: stats.append(a) or real_stat(self, *a, **k)
    )
    listed = folder.storage.list_folder(folder.parts)
    assert [(p.name, s.kind, s.size) for p, s in listed] == sorted(
        (p.name, "file", p.stat().st_size) for p in (tmp_path / "job" / "parts").iterdir()
    )
    assert not stats
    verify_folder(folder.root)
    asked = len(stats)
    for k in range(3):  # objects no marker names, of a unit with none and of the committed one
        (
            tmp_path / "job" / "parts" / f"part-000000-000000-00000{k}-000-00000000deadbeef.parquet"
        ).write_bytes(b"x")
    stats.clear()
    assert len(verify_folder(folder.root).strays) == 3 and len(stats) == asked
    commits = folder.load_commits()
    stats.clear()
    assert folder.remove_orphans(commits) == 1 and not stats  # the committed unit's stray only


def test_listing_a_local_folder_stats_each_entry_as_stat_does(tmp_path):
    from zsteer.jobs.storage import LOCAL

    (tmp_path / "f").write_bytes(b"abc")
    (tmp_path / "d").mkdir()
    (tmp_path / "to-f").symlink_to(tmp_path / "f")
    (tmp_path / "to-nothing").symlink_to(tmp_path / "gone")
    for follow in (True, False):
        assert LOCAL.list_folder(tmp_path, follow) == [
            (p, LOCAL.stat(p, follow)) for p in sorted(tmp_path.iterdir())
        ]
    assert LOCAL.list_folder(tmp_path / "none") == []


@pytest.mark.parametrize("where", ["path", "uri"])
def test_is_file_and_a_stat_that_must_find_its_file(where, tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    (tmp_path / "d").mkdir()
    root = locate(tmp_path if where == "path" else storekit.uri(tmp_path), "--out")
    storage = storage_of(root)
    assert [storage.is_file(root / n) for n in ("f", "d", "none")] == [True, False, False]
    assert storage.stat(root / "f", missing_ok=False).size == 3 and storage.stat(root / "none") is None
    with pytest.raises(FileNotFoundError) as info:
        storage.stat(root / "none", missing_ok=False)
    assert info.value.filename == str(root / "none") and info.value.strerror == os.strerror(2)
