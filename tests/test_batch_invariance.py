"""A row's result depends on that row alone, bit for bit: any batch size, compaction, resume.

Close is not enough: the objective goes through ReLU / LeakyReLU units, and a unit within an ulp of zero
flips with the rounding, so a row's bits must be the same whatever batch it runs in. The mechanism is
in pipeline/ascent_loop.py (a step never runs fewer than MIN_ROWS rows, compacted batches are padded
with copies of real rows) and docs/ARCHITECTURE.md, "Batch invariance", says which guarantees hold where.
All comparisons here are equality, on course-architecture models with real gain.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from exportkit import gain_models
from jobkit import crash_at_commit, job_config, read_parts, torch_threads, write_manifest

from zsteer.core.status import TARGET_REACHED
from zsteer.jobs.runner import run_job
from zsteer.pipeline.checkpoints import save_model
from zsteer.pipeline.config import AscentConfig, EngineConfig
from zsteer.pipeline.engine import default_preserve, make_engine

N_ROWS, Z_DIM, N_ATTR = 16, 16, 5
BATCH_SIZES = [*range(1, 10), 64]


@pytest.fixture(scope="module")
def models():
    return gain_models(z_dim=Z_DIM, hidden_dim=8, n_attributes=N_ATTR, seed=3)


def _rows(seed: int = 0):
    z = torch.randn(N_ROWS, Z_DIM, generator=torch.Generator().manual_seed(seed))
    weights = torch.zeros(N_ROWS, N_ATTR)
    weights[:, 1] = 1.0
    weights[::3, 2] = -1.0
    return z, weights, default_preserve(weights)


def _edit(models, batch_size: int, precision: str = "fp32", **ascent):
    engine = make_engine(
        *models,
        AscentConfig(**ascent),
        EngineConfig(batch_size=batch_size, impl="torch", precision=precision),
    )
    z, w, p = _rows()
    return engine.edit(z, w, p, render=True)


def _assert_same(a, b, label: str) -> None:
    for field in (
        "z_edited",
        "logits_before",
        "logits_after",
        "latent_shift",
        "steps_taken",
        "status",
        "images",
    ):
        assert torch.equal(getattr(a, field), getattr(b, field)), f"{label}: {field} differs"


@pytest.mark.parametrize(("penalty", "precision"), [(0.0, "fp32"), (1.0, "fp32"), (1.0, "bf16")])
def test_every_batch_size_gives_the_same_bits(models, penalty, precision):
    ref = _edit(models, 16, precision, steps=10, lr=0.05, penalty=penalty)
    moved = (ref.z_edited - _rows()[0]).abs().amax(dim=1)
    assert float(moved.min()) > 1e-3, "the edit moves every row (real gain)"
    for batch_size in BATCH_SIZES:
        _assert_same(
            _edit(models, batch_size, precision, steps=10, lr=0.05, penalty=penalty),
            ref,
            f"batch {batch_size} {precision}",
        )


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_thread_count_leaves_the_bits_alone(precision):
    """``--threads`` and a Ray actor's CPU share do not change a row. Course-size models (hidden 64): their
    wide layers' GEMMs sum over K >= 2048, which a 2-thread sgemm splits between threads
    (pipeline/wide_conv.py, MIN_BLOCKS); oneDNN's convolutions gave the same bits at 1 and 2 threads."""
    course = gain_models(z_dim=Z_DIM, hidden_dim=64, n_attributes=N_ATTR, seed=5)
    edits = {}
    for threads in (1, 2):
        with torch_threads(threads):
            edits[threads] = _edit(course, 4, precision, steps=3, lr=0.05, penalty=1.0)
    _assert_same(edits[2], edits[1], f"2 threads against 1, {precision}")


def test_rows_that_stop_at_different_steps_leave_the_others_unchanged(models):
    """With --stop-at-prob, rows leave the batch at different steps (compaction); a row that runs on
    alone, or with others, gets the bits it gets in a batch where nobody stops."""
    free = _edit(models, 16, steps=10, lr=0.05)
    threshold = float(torch.sigmoid(free.logits_after[:, 1]).median())
    stopping = _edit(models, 16, steps=10, lr=0.05, stop_at_prob=threshold)
    steps = stopping.steps_taken
    assert (stopping.status == TARGET_REACHED).any() and len(set(steps.tolist())) >= 3, steps
    for batch_size in (1, 2, 3, 7):
        _assert_same(
            _edit(models, batch_size, steps=10, lr=0.05, stop_at_prob=threshold),
            stopping,
            f"batch {batch_size}",
        )
    # The rows that never stop ran in ever smaller compacted batches: the bits of the run where nobody stops.
    still = stopping.status != TARGET_REACHED
    assert torch.equal(stopping.z_edited[still], free.z_edited[still])


def test_a_resumed_job_writes_the_bits_of_an_uninterrupted_one(tmp_path, models, monkeypatch):
    gen, cls = models
    paths = tmp_path / "g.safetensors", tmp_path / "c.safetensors"
    save_model(gen.module, gen.spec, paths[0])
    save_model(cls.module, cls.spec, paths[1], attributes=tuple(f"attr{i}" for i in range(N_ATTR)))
    n = 50
    z = np.random.default_rng(1).standard_normal((n, Z_DIM)).astype(np.float32)
    manifest = write_manifest(tmp_path / "m.parquet", {"id": np.arange(n), "z": z}, row_group_size=10)
    settings = {"ascent": {"steps": 10, "lr": 0.05, "penalty": 1.0}, "unit_rows": 7}
    run_job(job_config(manifest, tmp_path / "whole", paths, batch_size=16, **settings))

    crash_at_commit(
        monkeypatch, 4, job_config(manifest, tmp_path / "resumed", paths, batch_size=3, **settings)
    )
    run_job(
        job_config(manifest, tmp_path / "resumed", paths, batch_size=5, **settings)
    )  # other sizes: speed only

    whole, resumed = read_parts(tmp_path / "whole"), read_parts(tmp_path / "resumed")
    for column in ("z_edited", "logits_before", "logits_after", "latent_shift", "steps_taken"):
        a = dict(zip(whole.column("id").to_pylist(), whole.column(column).to_pylist(), strict=True))
        b = dict(zip(resumed.column("id").to_pylist(), resumed.column(column).to_pylist(), strict=True))
        assert a == b, column
