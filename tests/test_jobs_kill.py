"""Crash safety of `zsteer edit` as a real process: SIGKILL at random points, SIGINT / SIGTERM.

After any sequence of kills and resumes, every manifest row must be exactly once in parts/ or
rejects/. The kills are seeded; each one waits for the run to commit something first, so every run
makes progress and the kill lands in the middle of work (between shards, commits and renames).
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
from jobkit import latents, read_parts, read_rejects, tiny_models, write_manifest

ZSTEER = str(Path(sys.executable).with_name("zsteer"))
N_A, N_B = 600, 400
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
    schema = pa.schema([("id", pa.int64()), ("z", pa.list_(pa.float32())), ("tag", pa.string())])
    for name, start, n in (("a", 0, N_A), ("b", N_A, N_B)):
        z = [list(map(float, row)) for row in latents(n, seed=start)]
        ids: list = list(range(start, start + n))
        for (file, row), fault in BAD.items():
            if file != name:
                continue
            if fault == "NaN":
                z[row][3] = math.nan
            elif fault == "length":
                z[row] = z[row][:-1]
            elif fault == "null id":
                ids[row] = None
            elif fault == "duplicate":
                ids[row] = 5
            else:
                z[row] = None
        cols = {"id": ids, "z": z, "tag": [f"{name}{i}" for i in range(n)]}
        write_manifest(root / "data" / f"{name}.parquet", cols, row_group_size=50, schema=schema)
    return root, models


def _command(root: Path, models, out: Path) -> list[str]:
    return [
        ZSTEER, "edit", "-m", str(root / "data"), "--generator", str(models[0]), "--classifier", str(models[1]),
        "-t", "attr1", "--steps", "2", "--lr", "0.5", "--batch-size", "32", "--rows-per-shard", "48",
        "--read-rows", "64", "--images", "png", "--workers", "1", "--threads", "1", "--out", str(out),
    ]  # fmt: skip


def _start(cmd: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _commits(out: Path) -> int:
    return len(list((out / "commits").glob("commit-*.json"))) if (out / "commits").exists() else 0


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


def test_sigkill_at_random_points_then_resume_is_exactly_once(setup, tmp_path):
    root, models = setup
    out = tmp_path / "job"
    cmd = _command(root, models, out)
    rng = random.Random(20261123)
    kills = 0
    for _ in range(3):
        proc = _start(cmd)
        if not _wait_for_commit(proc, out):
            break
        time.sleep(rng.uniform(0.0, 1.0))
        children = _children(proc.pid)
        proc.kill()
        proc.communicate()
        kills += proc.returncode == -signal.SIGKILL
        # The PNG encoder processes notice their parent is gone and leave.
        deadline = time.monotonic() + 10
        while any(_alive(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(c) for c in children), "orphaned encoder processes"
    assert kills >= 2, "the job finished before it could be killed; make it longer"
    proc = _start(cmd)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "resuming" in err
    _check_exactly_once(root, out)


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
