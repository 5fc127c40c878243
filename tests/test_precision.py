"""EngineConfig.precision: the opt-in bf16 network (fp32 stays the default) and where it is refused."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from exportkit import gain_models
from jobkit import job_config, latents, write_manifest

from zsteer.core.errors import ZsteerError
from zsteer.jobs.backends import BackendConfig, backend_factory
from zsteer.jobs.runner import run_job
from zsteer.pipeline.config import AscentConfig, EngineConfig
from zsteer.pipeline.engine import default_preserve, make_engine


@pytest.fixture(scope="module")
def models():
    return gain_models(z_dim=8, hidden_dim=8, n_attributes=5, seed=1)


def _rows(n: int = 12):
    z = torch.randn(n, 8, generator=torch.Generator().manual_seed(0))
    weights = torch.zeros(n, 5)
    weights[:, 1] = 1.0
    return z, weights, default_preserve(weights)


def test_fp32_is_the_default_and_other_names_are_refused():
    assert EngineConfig().precision == "fp32"
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, got 'fp16'"):
        EngineConfig(precision="fp16")


def test_bf16_runs_the_network_in_bf16_and_hands_back_fp32(models):
    fp32 = make_engine(*models, AscentConfig(steps=5, lr=0.1), EngineConfig(batch_size=16, impl="torch"))
    bf16 = make_engine(
        *models, AscentConfig(steps=5, lr=0.1), EngineConfig(batch_size=16, impl="torch", precision="bf16")
    )
    assert {p.dtype for p in fp32.net.parameters()} == {torch.float32}
    assert {p.dtype for p in bf16.net.parameters()} == {torch.bfloat16}
    a, b = fp32.edit(*_rows()), bf16.edit(*_rows())
    for result in (a, b):
        assert result.z_edited.dtype == result.logits_after.dtype == torch.float32
        assert bool((result.logits_after[:, 1] > result.logits_before[:, 1]).all())  # the target rises
    # bf16 is not fp32: the logits differ by more than fp32 rounding, and by less than the edit moves them.
    diff = (a.logits_after - b.logits_after).abs().max()
    moved = (a.logits_after[:, 1] - a.logits_before[:, 1]).abs().min()
    assert 1e-5 < diff < moved


def test_bf16_is_refused_where_it_would_not_be_honoured(models):
    bf16 = EngineConfig(batch_size=8, precision="bf16")
    with pytest.raises(ZsteerError, match="lab-compatible mode reproduces the notebook in fp32"):
        make_engine(*models, AscentConfig(lab_compat=True), bf16)
    pytest.importorskip("onnxruntime")
    with pytest.raises(ZsteerError, match="the onnxruntime backend runs fp32 only"):
        backend_factory("onnxruntime")(*models, AscentConfig(), bf16, BackendConfig("onnxruntime"))


def test_precision_is_part_of_a_jobs_identity(tmp_path, job_models):
    manifest = write_manifest(tmp_path / "m.parquet", {"id": np.arange(20), "z": latents(20)})
    out = tmp_path / "job"
    bf16 = replace(
        job_config(manifest, out, job_models), engine=EngineConfig(batch_size=16, precision="bf16")
    )
    assert run_job(bf16).status == "complete"
    with pytest.raises(ZsteerError, match=r"precision: \"bf16\" -> \"fp32\""):
        run_job(job_config(manifest, out, job_models))
    # An fp32 job's job.json has no precision field: jobs written before it existed resume.
    plain = tmp_path / "plain"
    run_job(job_config(manifest, plain, job_models))
    assert "precision" not in json.loads((plain / "job.json").read_text())["identity"]
    assert run_job(job_config(manifest, plain, job_models)).status == "complete"
    # The absent field reads as the fp32 it stands for, not as null.
    with pytest.raises(ZsteerError, match=r"precision: \"fp32\" -> \"bf16\""):
        run_job(replace(job_config(manifest, plain, job_models), engine=bf16.engine))


def test_zsteer_edit_takes_precision_from_the_command_line(tmp_path, job_models):
    from click.testing import CliRunner

    from zsteer.cli.main import main

    manifest = write_manifest(tmp_path / "m.parquet", {"id": np.arange(6), "z": latents(6)})
    args = ["edit", "-m", manifest, "-o", tmp_path / "job", "--generator", job_models[0],
            "--classifier", job_models[1], "-t", "attr1", "--steps", "1", "--images", "none",
            "--workers", "0", "--threads", "1", "--precision", "bf16"]  # fmt: skip
    run = CliRunner().invoke(main, [str(a) for a in args])
    assert run.exit_code == 0, (run.output, run.exception)
    assert json.loads((tmp_path / "job" / "job.json").read_text())["identity"]["precision"] == "bf16"
