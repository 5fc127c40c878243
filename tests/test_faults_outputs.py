"""Fault injection on a job's outputs: committed shards deleted, truncated or altered after the fact,
markers that name paths outside the folder, markers of older versions, and `zsteer verify`."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from jobkit import crash_at_commit, job_config, latents, read_parts, read_rejects, write_manifest

from zsteer.cli.main import main
from zsteer.jobs.runner import run_job

pytestmark = pytest.mark.usefixtures("single_thread")
N = 300


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """300 rows in row groups of 100, two of them rejected (null z), as in the issue's repro."""
    z = list(latents(N))
    z[7] = z[201] = None
    return write_manifest(tmp_path_factory.mktemp("m") / "m.parquet", {"id": np.arange(N), "z": z}, 100)


def edit_args(manifest, models, out):
    return [
        "edit", "-m", manifest, "--out", out, "--generator", models[0], "--classifier", models[1],
        "-t", "attr1", "--steps", 2, "--images", "none", "--unit-rows", 50, "--rows-per-shard", 50,
        "--workers", 0,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def finished(tmp_path_factory, manifest, job_models):
    """A finished job of the manifest (copy it before damaging it)."""
    out = tmp_path_factory.mktemp("done") / "job"
    result = run(*edit_args(manifest, job_models, out))
    assert result.exit_code == 0, result.output
    return out


def copy_job(finished, tmp_path):
    out = tmp_path / "job"
    shutil.copytree(finished, out)
    return out


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {"deleted": lambda p: p.unlink(), "truncated": truncate, "altered": flip_byte}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("where", ["parts", "rejects"])
def test_a_damaged_committed_file_is_found_by_verify_and_redone_by_a_resume(
    tmp_path, manifest, job_models, finished, damage, where
):
    out = copy_job(finished, tmp_path)
    victim = sorted((out / where).glob("*.parquet"))[1 if where == "parts" else 0]
    DAMAGE[damage](victim)
    checked = run("verify", out)
    assert checked.exit_code == 1, checked.output
    bad = [line for line in checked.stderr.splitlines() if line.startswith("zsteer: bad:")]
    assert len(bad) == 1 and str(victim) in bad[0], checked.stderr
    assert "Traceback" not in checked.output

    result = run(*edit_args(manifest, job_models, out))
    assert result.exit_code == 0, result.output
    said = [line for line in result.stderr.splitlines() if str(victim) in line]
    assert len(said) == 1 and "done again" in said[0], result.stderr
    assert read_parts(out).equals(read_parts(finished))  # the same rows, bit for bit
    assert read_rejects(out).equals(read_rejects(finished))
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["rows_done"], summary["edited"], summary["rejected"]) == (N, N - 2, 2)
    assert run("verify", out).exit_code == 0


def test_verify_says_an_intact_job_is_intact_and_a_summary_that_counts_lost_rows(tmp_path, finished):
    out = copy_job(finished, tmp_path)
    result = run("verify", out)
    assert result.exit_code == 0, result.output
    assert "6 unit(s)" in result.stderr and "all intact" in result.stderr
    marker = sorted((out / "commits").glob("commit-*.json"))[2]
    marker.unlink()  # the unit is simply not done; summary.json still counts it
    result = run("verify", out)
    assert result.exit_code == 1
    assert f"{out / 'summary.json'}: counts rows that are not in the output" in result.stderr
    assert "e.g." in result.stderr  # its files are now strays, said as such


def test_verify_of_a_folder_that_is_not_a_job_is_a_one_line_error(tmp_path):
    result = run("verify", tmp_path)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert f"{tmp_path}: not a zsteer job folder" in result.stderr


def test_a_truncated_shard_of_an_unfinished_job_is_redone_on_resume(
    tmp_path, manifest, job_models, monkeypatch, finished
):
    out = tmp_path / "job"
    config = job_config(
        manifest, out, job_models, unit_rows=50, ascent={"steps": 2}, output={"rows_per_shard": 50}
    )
    crash_at_commit(monkeypatch, 4, config)
    truncate(sorted((out / "parts").glob("*.parquet"))[0])
    assert run_job(config).status == "complete"
    assert sorted(read_parts(out).column("id").to_pylist()) == sorted(set(range(N)) - {7, 201})


@pytest.mark.parametrize(
    "name",
    [
        "../../../etc/passwd",
        "/etc/passwd",
        "part-000000-000000-000000-000.parquet/../../x",
        "part-000000-000001-000000-000.parquet",
    ],
)
def test_a_marker_naming_anything_but_its_own_shards_is_refused(
    tmp_path, manifest, job_models, finished, name
):
    """Only plain names of the unit's own shards are read: nothing outside parts/ is opened or deleted."""
    out = copy_job(finished, tmp_path)
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    marker = sorted((out / "commits").glob("commit-*.json"))[0]
    doc = json.loads(marker.read_text())
    doc["parts"][0] = name.replace("/etc/passwd", str(outside))
    marker.write_text(json.dumps(doc))
    result = run(*edit_args(manifest, job_models, out))
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and str(marker) in result.stderr
    assert "delete this marker" in result.stderr
    assert outside.read_text() == "keep me"
    checked = run("verify", out)
    assert checked.exit_code == 1 and f"bad: {marker}" in checked.stderr


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.update(rows="50"),
        lambda d: d.update(edited=d["edited"] + 1),
        lambda d: d.update(unit="0:0:3"),
        lambda d: d.update(parts=5),
        lambda d: d.update(stop_reasons=[1]),
        lambda d: d["files"].popitem(),
        lambda d: next(iter(d["files"].values())).update(sha256="x"),
    ],
)
def test_a_marker_with_fields_zsteer_never_writes_is_a_one_line_error(
    tmp_path, finished, job_models, manifest, edit
):
    out = copy_job(finished, tmp_path)
    marker = sorted((out / "commits").glob("commit-*.json"))[0]
    doc = json.loads(marker.read_text())
    edit(doc)
    marker.write_text(json.dumps(doc))
    result = run(*edit_args(manifest, job_models, out))
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert result.stderr.startswith(f"zsteer: error: {marker}: "), result.stderr


def test_markers_without_checksums_are_checked_by_row_counts(tmp_path, manifest, job_models, finished):
    """Markers of a zsteer before checksums: intact units are kept (said once), a lost file is redone."""
    out = copy_job(finished, tmp_path)
    for marker in (out / "commits").glob("commit-*.json"):
        doc = json.loads(marker.read_text())
        del doc["files"]
        marker.write_text(json.dumps(doc))
    checked = run("verify", out)
    assert checked.exit_code == 0 and "6 unit(s) have no checksums" in checked.stderr
    victim = sorted((out / "parts").glob("*.parquet"))[3]
    victim.unlink()
    result = run(*edit_args(manifest, job_models, out))
    assert result.exit_code == 0, result.output
    assert f"{victim}: missing" in result.stderr and "without checksums" in result.stderr
    assert read_parts(out).equals(read_parts(finished))
    assert pq.read_metadata(victim).num_rows == 50


def test_a_lost_parts_folder_is_redone_with_a_bounded_number_of_lines(
    tmp_path, manifest, job_models, finished
):
    out = copy_job(finished, tmp_path)
    shutil.rmtree(out / "parts")
    result = run(*edit_args(manifest, job_models, out))
    assert result.exit_code == 0, result.output
    said = [line for line in result.stderr.splitlines() if "done again" in line]
    assert len(said) == 6 and all(": missing: rows that unit " in line for line in said[:5]), said
    assert "and 1 more unit(s) with damaged files" in said[5]
    assert read_parts(out).equals(read_parts(finished))


def test_a_committed_name_that_is_not_a_regular_file_is_redone_without_opening_it(
    tmp_path, manifest, job_models, finished
):
    """A FIFO (whose read would block forever) or a link where a committed shard was."""
    out = copy_job(finished, tmp_path)
    parts = sorted((out / "parts").glob("*.parquet"))
    parts[0].unlink()
    os.mkfifo(parts[0])
    parts[1].unlink()
    parts[1].symlink_to(parts[2])
    checked = run("verify", out)
    assert checked.exit_code == 1 and checked.stderr.count("not a regular file") == 2, checked.stderr
    result = run(*edit_args(manifest, job_models, out))
    assert result.exit_code == 0, result.output
    assert read_parts(out).equals(read_parts(finished))
    assert not parts[1].is_symlink()


def test_a_marker_of_a_unit_this_job_does_not_have_is_withdrawn(tmp_path, manifest, job_models, finished):
    """Markers copied in from another job: a unit key the plan does not have, or another row count."""
    out = copy_job(finished, tmp_path)
    markers = sorted((out / "commits").glob("commit-*.json"))
    doc = json.loads(markers[0].read_text())
    stranger = out / "commits" / "commit-000007-000000-000000.json"
    stranger.write_text(json.dumps(doc | {"unit": "7:0:0", "parts": [], "rejects": [], "files": {}}))
    doc = json.loads(markers[1].read_text())
    markers[1].write_text(json.dumps(doc | {"rows": doc["rows"] + 1, "edited": doc["edited"] + 1}))
    result = run(*edit_args(manifest, job_models, out))
    assert result.exit_code == 0, result.output
    assert f"{stranger}: names a unit this job does not have" in result.stderr
    assert f"{markers[1]}: counts 51 rows, the unit has 50" in result.stderr
    assert not stranger.exists() and read_parts(out).equals(read_parts(finished))
    assert json.loads((out / "summary.json").read_text())["rows_done"] == N


@pytest.mark.parametrize(
    "damage, fragment",
    [
        (lambda out: (out / "job.json").write_text("[" * 100_000), "job.json: unreadable"),
        (lambda out: (out / "summary.json").write_text('{"runs": "x"}'), None),
        (lambda out: (out / "summary.json").write_text("{" * 100_000), None),
        (lambda out: (out / "summary.json").write_text('{"runs": [{"wall_seconds": "x"}]}'), None),
        (
            lambda out: (out / "parts" / "part-000000-000009-000000-000.parquet").mkdir(),
            "a folder where the job",
        ),
        (
            lambda out: (shutil.rmtree(out / "rejects"), (out / "rejects").symlink_to(out.parent)),
            "rejects: a link to",
        ),
        (
            lambda out: (shutil.rmtree(out / "rejects"), (out / "rejects").write_text("x")),
            "rejects: expected a folder",
        ),
    ],
)
def test_damaged_job_files_are_one_line_or_ignored_where_only_reported(
    tmp_path, manifest, job_models, finished, damage, fragment
):
    out = copy_job(finished, tmp_path)
    damage(out)
    result = run(*edit_args(manifest, job_models, out))
    assert "Traceback" not in result.output
    if fragment is None:  # summary.json only reports: the job goes on and writes a new one
        assert result.exit_code == 0, result.output
        assert json.loads((out / "summary.json").read_text())["rows_done"] == N
    else:
        assert result.exit_code == 2 and result.stderr.count("\n") == 1 and fragment in result.stderr, (
            result.output
        )
