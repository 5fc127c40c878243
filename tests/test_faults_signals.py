"""SIGTERM during a long batch, as a real process: the stop flag reaches the ascent loop between steps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from jobkit import latents, write_manifest

ZSTEER = str(Path(sys.executable).with_name("zsteer"))
LONG = 1_000_000  # steps of the slow rows: hours, if the flag were asked only between batches


def test_sigterm_during_a_long_batch_stops_between_steps_keeping_the_finished_units(tmp_path, job_models):
    n = 200
    steps = [1] * 100 + [None] * 100  # units 0 and 1 finish at once; units 2 and 3 take LONG steps
    manifest = write_manifest(
        tmp_path / "m.parquet",
        {"id": np.arange(n), "z": latents(n), "steps": steps},
        row_group_size=100,
        schema=pa.schema([("id", pa.int64()), ("z", pa.list_(pa.float32(), 8)), ("steps", pa.int64())]),
    )
    out = tmp_path / "job"
    args = [
        ZSTEER, "edit", "-m", manifest, "--out", out, "--generator", job_models[0], "--classifier",
        job_models[1], "-t", "attr1", "--steps", LONG, "--lr", 1e-6, "--images", "none", "--unit-rows", 50,
        "--batch-size", 50, "--workers", 0,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([str(a) for a in args], stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while len(list((out / "commits").glob("commit-*.json"))) < 2:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the quick units never committed: {proc.stderr.read()}")
            time.sleep(0.1)
        time.sleep(1.0)  # the slow units are now deep in their steps
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)  # one step, not a million
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr
    assert "stopped by SIGTERM: 2 of 4 units committed; run the same command again to resume" in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["units_done"], summary["rows_done"], summary["complete"]) == (2, 100, False)
