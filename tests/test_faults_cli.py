"""Faults of the system around a command: an output folder that cannot be written, a disk that fills up
mid-job, a truncated shard under `zsteer sheet`."""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from jobkit import latents, write_manifest

from zsteer.cli.main import main

pytestmark = pytest.mark.usefixtures("single_thread")
ZSTEER = str(Path(sys.executable).with_name("zsteer"))


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line(result, *fragments):
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def _read_only(monkeypatch, folder: Path) -> None:
    """``folder`` refuses new files: by its mode, and for root (whom modes do not stop) by the probe."""
    folder.chmod(0o555)
    if os.geteuid() == 0:
        real = tempfile.TemporaryFile

        def refused(*args, dir=None, **kw):
            if dir is not None and Path(dir) == folder:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
            return real(*args, dir=dir, **kw)

        monkeypatch.setattr(tempfile, "TemporaryFile", refused)


@pytest.mark.parametrize("target", ["folder", "below"])
def test_export_to_a_folder_it_cannot_write_fails_before_any_work(tmp_path, monkeypatch, target):
    from zsteer.cli import tools

    def no_work(*args, **kw):
        raise AssertionError("models loaded before the output folder was checked")

    monkeypatch.setattr(tools, "load_models", no_work)
    locked = tmp_path / "locked"
    locked.mkdir()
    _read_only(monkeypatch, locked)
    out = locked if target == "folder" else locked / "onnx"
    try:
        one_line(run("export", "--out", out), f"--out {out}: cannot write in {locked}", "Permission denied")
    finally:
        locked.chmod(0o755)


def test_sheet_to_a_folder_it_cannot_write_is_one_line(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    _read_only(monkeypatch, locked)
    try:
        one_line(run("sheet", tmp_path, "--out", locked / "s.png"), f"cannot write in {locked}")
    finally:
        locked.chmod(0o755)


def _limit_file_size():
    """A disk that fills up: writes past 40 kB fail with EFBIG (SIGXFSZ ignored, as a full disk's ENOSPC
    would fail them)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))


def test_a_disk_that_fills_up_mid_job_is_one_line_naming_the_file(tmp_path, job_models):
    manifest = write_manifest(tmp_path / "m.parquet", {"id": np.arange(400), "z": latents(400)}, 100)
    out = tmp_path / "job"
    args = [
        ZSTEER, "edit", "-m", manifest, "--out", out, "--generator", job_models[0], "--classifier",
        job_models[1], "-t", "attr1", "--steps", 1, "--images", "png", "--unit-rows", 100, "--workers", 0,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=_limit_file_size,
        timeout=300,
    )
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr
    assert errors[0].startswith(f"zsteer: error: {out}/parts/part-") and "File too large" in errors[0], errors
    assert run("verify", out).exit_code == 0  # what was committed before is intact


def test_sheet_of_a_job_with_a_truncated_shard_is_one_line_naming_it(tmp_path, job_models):
    manifest = write_manifest(tmp_path / "m.parquet", {"id": np.arange(6), "z": latents(6)})
    job = tmp_path / "job"
    edit = run(
        "edit", "-m", manifest, "--out", job, "--generator", job_models[0], "--classifier", job_models[1],
        "-t", "attr1", "--steps", 1, "--images", "png", "--workers", 0,
    )  # fmt: skip
    assert edit.exit_code == 0, edit.output
    shard = next((job / "parts").glob("part-*.parquet"))
    shard.write_bytes(shard.read_bytes()[:2000])
    one_line(run("sheet", job, "--out", tmp_path / "s.png"), f"{shard}: unreadable", f"zsteer verify {job}")
