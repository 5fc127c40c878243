"""`zsteer sheet` on a job folder, and `zsteer demo` on the embedded models."""

from __future__ import annotations

import json

import numpy as np
import pytest
from jobkit import job_config, latents, one_thread, tiny_models, write_manifest
from PIL import Image

from zsteer.demo import demo_paths
from zsteer.jobs.demo import DemoConfig, format_report, run_demo
from zsteer.jobs.runner import run_job
from zsteer.jobs.sheet import SheetConfig, job_sheet
from zsteer.pipeline.engine import AscentConfig
from zsteer.pipeline.errors import ZsteerError


def test_sheet_shows_before_and_after_of_the_first_rows(tmp_path):
    models = tiny_models(tmp_path / "models")
    z = latents(10)
    manifest = write_manifest(tmp_path / "m.parquet", {"id": np.arange(10, dtype=np.int64), "z": z})
    with one_thread():
        run_job(job_config([str(manifest)], tmp_path / "job", models))
        path = job_sheet(SheetConfig(tmp_path / "job", tmp_path / "sheet.png", rows=4, scale=1))
    image = Image.open(path)
    assert image.height > 4 * 64 and image.width > 2 * 64
    with pytest.raises(ZsteerError, match="not a zsteer job folder"):
        job_sheet(SheetConfig(tmp_path / "models", tmp_path / "x.png"))


@pytest.mark.skipif(not demo_paths()["generator"].is_file(), reason="demo weights not present")
def test_demo_gains_the_target_by_the_judge_and_the_penalty_holds_the_rest(tmp_path):
    with one_thread():
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
