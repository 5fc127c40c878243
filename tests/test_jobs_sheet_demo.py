"""`zsteer sheet` on a job folder, and `zsteer demo` on the embedded models."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from jobkit import job_config, latents, write_manifest
from PIL import Image
from test_cli import one_line_error

from zsteer.cli.main import main
from zsteer.core.errors import ZsteerError
from zsteer.demo.command import DemoConfig, format_report, run_demo
from zsteer.jobs.runner import run_job
from zsteer.jobs.sheet import SheetConfig, job_sheet
from zsteer.pipeline.engine import AscentConfig

pytestmark = pytest.mark.usefixtures("single_thread")


def test_sheet_shows_before_and_after_of_the_first_rows(tmp_path, job_models):
    z = latents(10)
    manifest = write_manifest(tmp_path / "m.parquet", {"id": np.arange(10, dtype=np.int64), "z": z})
    run_job(job_config([str(manifest)], tmp_path / "job", job_models))
    path = job_sheet(SheetConfig(tmp_path / "job", tmp_path / "sheet.png", rows=4, scale=1))
    image = Image.open(path)
    assert image.height > 4 * 64 and image.width > 2 * 64
    with pytest.raises(ZsteerError, match="not a zsteer job folder"):
        job_sheet(SheetConfig(job_models[0].parent, tmp_path / "x.png"))


def test_demo_gains_the_target_by_the_judge_and_the_penalty_holds_the_rest(tmp_path):
    report = run_demo(
        DemoConfig(
            out=tmp_path / "demo", n=64, ascent=AscentConfig(steps=8, lr=0.5, penalty=1.0, normalize=True)
        )
    )
    judged = report["judge"]
    assert judged["no_penalty"]["gained_target"] > 0
    assert judged["no_penalty"]["target_prob_after"] > judged["no_penalty"]["target_prob_before"]
    assert judged["penalty"]["mean_other_drift"] < judged["no_penalty"]["mean_other_drift"]
    assert json.loads((tmp_path / "demo" / "demo_report.json").read_text())["judge"] == judged
    assert Image.open(tmp_path / "demo" / "sheet.png").width > 3 * 64
    assert "gained" in format_report(report)


def test_demo_reruns_with_other_settings_replace_its_jobs_and_the_same_settings_resume(tmp_path):
    out = tmp_path / "demo"
    # The smallest settings of the test above; the second run changes only --steps.
    small = ["demo", "--out", str(out), "--n", "64", "--lr", "0.5", "--penalty", "1.0"]

    def demo(*extra: str):
        return CliRunner().invoke(main, [*small, *extra])

    first = demo("--steps", "8")
    assert first.exit_code == 0, first.output
    assert "replacing" not in first.stderr
    manifest = (out / "manifest.parquet").read_bytes()

    # A run that cannot start leaves the folder as it was: the manifest is not rewritten first.
    one_line_error(
        demo("--steps", "2", "--n", "32", "--target", "Nope"), "--target: unknown attribute 'Nope'"
    )
    assert (out / "manifest.parquet").read_bytes() == manifest and (out / "edit" / "job.json").is_file()

    second = demo("--steps", "2")
    assert second.exit_code == 0, second.output
    replaced = [line for line in second.stderr.splitlines() if "replacing" in line]
    assert replaced == [
        f"zsteer: demo settings differ from the last run in {out}: replacing edit/ and edit_no_penalty/"
    ]
    assert "other settings" not in second.stderr
    report = json.loads((out / "demo_report.json").read_text())
    assert report["config"]["ascent"]["steps"] == 2
    for job in ("edit", "edit_no_penalty"):
        doc = json.loads((out / job / "job.json").read_text())
        assert doc["identity"]["ascent"]["steps"] == 2

    third = demo("--steps", "2")
    assert third.exit_code == 0, third.output
    assert "replacing" not in third.stderr
    assert third.stderr.count("nothing to do") == 2  # both jobs resumed, already complete
    assert json.loads((out / "demo_report.json").read_text())["judge"] == report["judge"]
