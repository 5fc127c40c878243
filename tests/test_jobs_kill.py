"""Crash safety of `zsteer edit` as a real process: SIGKILL at chosen points, SIGINT / SIGTERM.

After any sequence of kills and resumes, every manifest row must be exactly once in parts/ or
rejects/, with the numbers an uninterrupted run gives. What each kill hits is fixed, only its exact
moment is random (seeded): one kill before the first commit, the others a short random delay after
the k-th commit, so every run but the last is really killed, whatever the machine's speed, and the
kills land in the middle of work (between shards, commits and renames). Two layouts: shards smaller
than a unit (each unit split over two shards, committed once both are in place) and shards larger than
a unit (one shard per unit). The resumed rows must be the uninterrupted run's, bit for bit.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from jobkit import job_config, latents, one_thread, planted_manifests, read_parts, read_rejects, tiny_models

from zsteer.jobs.runner import run_job

ZSTEER = str(Path(sys.executable).with_name("zsteer"))
N_A, N_B = 600, 400  # in row groups (= units) of 50 rows: 20 units
STEPS = 10  # enough work per row that a run outlives a kill's delay after its k-th commit
KILL_DELAY = 0.3  # most seconds between the moment a kill is due and the kill
# rows_per_shard -> the commits after which the runs are killed (the first run is killed before any).
# 48: each 50-row unit is split over two shards; 200: one shard per unit. Both: 20 commits, one per unit.
LAYOUTS = {48: (3, 7, 11), 200: (2, 9, 15)}
BAD = {  # (file, row) -> what is wrong with it
    ("a", 17): "NaN",
    ("a", 333): "length",
    ("a", 555): "null id",
    ("b", 100): "duplicate",  # repeats id 5 of a.parquet
    ("b", 300): "null z",
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    models = tiny_models(root / "models")
    planted_manifests(root / "data", {"a": N_A, "b": N_B}, BAD, row_group_size=50)
    return root, models


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory):
    """Per-row results of the same job run uninterrupted, in this process."""
    root, models = setup
    out = tmp_path_factory.mktemp("reference") / "job"
    with one_thread():
        run_job(job_config(root / "data", out, models, ascent={"steps": STEPS, "lr": 0.5}, batch_size=32))
    return _by_id(read_parts(out))


def _by_id(parts: pa.Table) -> dict[int, dict]:
    columns = ("z_edited", "logits_after", "latent_shift", "steps_taken", "stop_reason")
    values = {c: parts.column(c).to_pylist() for c in columns}
    return {i: {c: values[c][k] for c in columns} for k, i in enumerate(parts.column("id").to_pylist())}


def _command(root: Path, models, out: Path, rows_per_shard: int = 48) -> list[str]:
    return [
        ZSTEER, "edit", "-m", str(root / "data"), "--generator", str(models[0]), "--classifier", str(models[1]),
        "-t", "attr1", "--steps", str(STEPS), "--lr", "0.5", "--batch-size", "32",
        "--rows-per-shard", str(rows_per_shard), "--read-rows", "64", "--images", "png", "--workers", "1",
        "--threads", "1", "--out", str(out),
    ]  # fmt: skip


def _start(cmd: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _commits(out: Path) -> int:
    return len(list((out / "commits").glob("commit-*.json"))) if (out / "commits").exists() else 0


def _wait_until(proc: subprocess.Popen, ready, what: str, timeout: float = 60.0) -> None:
    """Return once ``ready()``; fail if the run ends first (the job is too short for the test)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(
                f"the run ended (rc {proc.returncode}) before {what}; make the job longer\n{err}"
            )
        time.sleep(0.02)
    raise AssertionError(f"the job made no progress towards {what}")


def _wait_for_commit(proc: subprocess.Popen, out: Path, timeout: float = 60.0) -> bool:
    """True once the run has committed something new; False if it ended first."""
    before, deadline = _commits(out), time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if _commits(out) > before:
            return True
        time.sleep(0.05)
    raise AssertionError("the job made no progress")


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the run, which must still be running; its PNG encoder processes must leave too."""
    children = _children(proc.pid)
    assert proc.poll() is None, "the run finished before it could be killed; make the job longer"
    proc.kill()
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 10  # the encoders notice their parent is gone and leave
    while any(_alive(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(c) for c in children), "orphaned encoder processes"


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _check_exactly_once(root: Path, out: Path) -> None:
    parts, rejects = read_parts(out), read_rejects(out)
    edited = parts.column("id").to_pylist()
    assert len(edited) == len(set(edited)), "an edited row was written twice"
    expected_ids = set(range(N_A + N_B)) - {N_A + 100} - {555} - {17, 333} - {N_A + 300}
    assert set(edited) == expected_ids
    data = root / "data"
    rejected = list(zip(rejects.column("source").to_pylist(), rejects.column("row").to_pylist(), strict=True))
    assert len(rejected) == len(set(rejected)), "a rejected row was written twice"
    assert set(rejected) == {(str((data / f"{f}.parquet").resolve()), row) for f, row in BAD}
    # Carried columns came along with the right rows.
    tags = dict(zip(edited, parts.column("tag").to_pylist(), strict=True))
    assert tags[3] == "a3" and tags[N_A + 3] == "b3"
    # Nothing but committed files is left.
    commits = [json.loads(p.read_text()) for p in (out / "commits").iterdir()]
    named = {n for c in commits for n in c["parts"]} | {n for c in commits for n in c["rejects"]}
    on_disk = {p.name for p in (out / "parts").iterdir()} | {p.name for p in (out / "rejects").iterdir()}
    assert on_disk == named
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["rows_done"] == N_A + N_B and summary["rejected"] == len(BAD)


@pytest.mark.parametrize("rows_per_shard", sorted(LAYOUTS))
def test_sigkill_at_random_points_then_resume_is_exactly_once(setup, reference, tmp_path, rows_per_shard):
    root, models = setup
    out = tmp_path / "job"
    cmd = _command(root, models, out, rows_per_shard)
    rng = random.Random(20261123 + rows_per_shard)
    # Before the first commit: job.json is written, the run is starting its engine and encoders.
    proc = _start(cmd)
    _wait_until(proc, (out / "job.json").exists, "job.json was written")
    time.sleep(rng.uniform(0.0, KILL_DELAY / 2))
    _kill(proc)
    assert _commits(out) == 0, "the first kill was meant to land before the first commit"
    for k in LAYOUTS[rows_per_shard]:  # then each run a little after the job's k-th commit
        proc = _start(cmd)
        _wait_until(proc, lambda k=k: _commits(out) >= k, f"commit {k}")
        time.sleep(rng.uniform(0.0, KILL_DELAY))
        _kill(proc)
    commits = [json.loads(p.read_text()) for p in (out / "commits").iterdir()]
    assert {len(c["parts"]) for c in commits} == ({2} if rows_per_shard < 50 else {1})
    proc = _start(cmd)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "resuming" in err
    _check_exactly_once(root, out)
    got = _by_id(read_parts(out))
    assert got.keys() == reference.keys()
    for i, want in reference.items():
        assert (got[i]["steps_taken"], got[i]["stop_reason"]) == (want["steps_taken"], want["stop_reason"])
        for column in ("z_edited", "logits_after", "latent_shift"):  # bit for bit: rows depend on no layout
            np.testing.assert_array_equal(got[i][column], want[column], err_msg=f"id {i} {column}")
    assert np.abs(np.subtract(got[3]["z_edited"], latents(N_A, seed=0)[3])).max() > 1e-2, "z moved"


def test_sigterm_and_sigint_stop_after_the_batch_and_resume(setup, tmp_path):
    root, models = setup
    out = tmp_path / "job"
    cmd = _command(root, models, out)
    for signum in (signal.SIGTERM, signal.SIGINT):
        proc = _start(cmd)
        assert _wait_for_commit(proc, out), "finished before the signal"
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 128 + signum, err
        assert f"to resume, run: zsteer edit -m {root / 'data'}" in err
        assert "Traceback" not in err
        summary = json.loads((out / "summary.json").read_text())
        assert not summary["complete"] and summary["runs"][-1]["status"] == "interrupted"
    proc = _start(cmd)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    _check_exactly_once(root, out)
    assert [r["status"] for r in json.loads((out / "summary.json").read_text())["runs"]] == [
        "interrupted", "interrupted", "complete",
    ]  # fmt: skip
