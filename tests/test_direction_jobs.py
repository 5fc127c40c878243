"""Direction edits and interpolation as job methods: exactly once, batch invariance, backends, strips,
--distance, --until-prob, id_to across units, class blending, and the CLI of `zsteer directions`."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pyarrow as pa
import pytest
import torch
from jobkit import (
    Z_DIM,
    crash_at_commit,
    job_config,
    latents,
    read_parts,
    read_rejects,
    tiny_models,
    write_manifest,
)

from zsteer.core.errors import ZsteerError
from zsteer.jobs.backends import BackendConfig
from zsteer.jobs.direction_method import DirectionMethod, parse_alphas
from zsteer.jobs.interpolate_method import InterpolateMethod
from zsteer.jobs.runner import run_job
from zsteer.pipeline.direction_file import load_directions, save_directions
from zsteer.pipeline.direction_fit import FitConfig, fit_directions
from zsteer.pipeline.loading import ModelSource, load_models
from zsteer.pipeline.models import GeneratorSpec

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def directions_file(job_models, tmp_path_factory):
    """Boundaries of the tiny models' attributes (5 directions), fitted once per module."""
    generator, classifier = load_models(ModelSource(*job_models))
    found = fit_directions(generator, classifier, FitConfig(method="boundary", n_samples=2000, fraction=0.1))
    return save_directions(found, tmp_path_factory.mktemp("dirs") / "boundaries")


@pytest.mark.parametrize("method", ["boundary", "gradient"])
def test_fitted_directions_are_the_same_bits_at_any_fit_batch_size(job_models, method):
    """FitConfig.batch_size is memory only: 141 samples in batches of 20 leave a 1-row batch, which a
    course network runs with other bits unless padded to MIN_ROWS (as the engine pads every batch). The
    gradient fit also runs plain autograd through the fast network, which the phase layers once refused."""
    from zsteer.pipeline.direction_fit import judge_directions

    generator, classifier = load_models(ModelSource(*job_models))

    def fit(batch_size):
        config = FitConfig(method=method, n_samples=141, fraction=0.2, batch_size=batch_size)
        return fit_directions(generator, classifier, config).vectors

    want = fit(512)
    for batch_size in (20, 3):
        assert torch.equal(fit(batch_size), want), batch_size
    effects = [judge_directions(generator, classifier, want, n=141, batch=b) for b in (512, 20)]
    assert torch.equal(effects[0], effects[1])


def _table(out):
    parts = read_parts(out)
    keys = [c for c in ("id", "alpha", "frame") if c in parts.column_names]
    return parts.sort_by([(k, "ascending") for k in keys])


def _direction_job(path, out, job_models, method, **kw):
    return run_job(job_config(path, out, job_models, targets=(), method=method, **kw))


def test_a_direction_job_is_exactly_once_after_a_crash_and_the_same_at_any_batch_size(
    tmp_path, job_models, directions_file, monkeypatch
):
    n = 50
    z = latents(n, seed=1)
    z[7] = np.nan
    direction = [None] * n
    direction[3], direction[4] = "attr3", "nope"
    alpha = np.full(n, np.nan)
    alpha[5] = -2.0
    path = write_manifest(
        tmp_path / "m.parquet",
        {"id": np.arange(n), "z": z, "direction": direction, "alpha": pa.array(alpha, from_pandas=True)},
        row_group_size=20,
    )
    method = DirectionMethod(directions=directions_file, direction="attr1", alphas=(-1.0, 0.5, 2.0))
    out = tmp_path / "crashed"
    config = job_config(path, out, job_models, targets=(), method=method, unit_rows=10, batch_size=4)
    crash_at_commit(monkeypatch, 3, config)
    assert run_job(config).status == "complete"
    crashed = _table(out)
    rejects = read_rejects(out)
    assert sorted(rejects.column("row").to_pylist()) == [4, 7]
    assert (
        "direction 'nope' is not in"
        in dict(zip(rejects["row"].to_pylist(), rejects["reason"].to_pylist(), strict=True))[4]
    )
    assert crashed.num_rows == 3 * (n - 2), "one row per (input row, alpha), every input row once"
    assert set(crashed.column("alpha").to_pylist()) == {-1.0, 0.5, 2.0}, "the strip wins over a row's alpha"
    ids = crashed.column("id").to_pylist()
    assert all(ids.count(i) == 3 for i in set(ids))
    names = dict(zip(ids, crashed.column("direction").to_pylist(), strict=True))
    assert names[3] == "attr3" and names[0] == "attr1"
    edited = np.array(crashed.column("z_edited").to_pylist(), np.float32)
    found = load_directions(directions_file)
    expect = (
        z[ids]
        + np.array(crashed.column("alpha").to_pylist(), np.float32)[:, None]
        * found.vectors[[found.index(d) for d in crashed.column("direction").to_pylist()]].numpy()
    )
    np.testing.assert_allclose(edited, expect, atol=1e-6)
    for batch_size in (1, 3, 64):
        other = tmp_path / f"batch{batch_size}"
        run_job(job_config(path, other, job_models, targets=(), method=method, batch_size=batch_size))
        assert _table(other).equals(crashed), f"batch size {batch_size} changed a row"


def test_per_row_alpha_and_distance(tmp_path, job_models, directions_file):
    n = 12
    z = latents(n, seed=2)
    alpha = [None] * n
    alpha[2] = 3.0
    path = write_manifest(tmp_path / "m.parquet", {"id": np.arange(n), "z": z, "alpha": alpha})
    out = tmp_path / "alpha"
    _direction_job(
        path, out, job_models, DirectionMethod(directions=directions_file, direction="attr2", alpha=0.5)
    )
    table = _table(out)
    assert table.column("alpha").to_pylist() == [0.5] * 2 + [3.0] + [0.5] * 9
    shift = np.array(table.column("latent_shift").to_pylist())
    np.testing.assert_allclose(shift, table.column("alpha").to_pylist(), rtol=1e-5)

    found = load_directions(directions_file)
    normal, offset = found.boundary("attr2")
    out = tmp_path / "distance"
    _direction_job(
        path, out, job_models, DirectionMethod(directions=directions_file, direction="attr2", distance=1.5)
    )
    edited = torch.tensor(_table(out).column("z_edited").to_pylist())
    np.testing.assert_allclose((edited @ normal + offset).numpy(), 1.5, atol=1e-4)
    with pytest.raises(ZsteerError, match=r"direction\.distance: 1\.5 -> 2\.0"):  # a resume is refused
        _direction_job(
            path,
            out,
            job_models,
            DirectionMethod(directions=directions_file, direction="attr2", distance=2.0),
        )


def test_without_scores_before_a_direction_job_writes_nan_there_and_the_same_edits(
    tmp_path, job_models, directions_file
):
    n = 9
    path = write_manifest(tmp_path / "m.parquet", {"id": np.arange(n), "z": latents(n, seed=4)})
    tables = {}
    for scores_before in (True, False):
        out = tmp_path / f"scores_before_{scores_before}"
        method = DirectionMethod(
            directions=directions_file, direction="attr1", alpha=1.5, scores_before=scores_before
        )
        _direction_job(path, out, job_models, method, batch_size=4)
        tables[scores_before] = _table(out)
    scored, unscored = tables[True], tables[False]
    assert not np.isnan(np.array(scored.column("logits_before").to_pylist())).any()
    assert np.isnan(np.array(unscored.column("logits_before").to_pylist())).all()
    for column in ("z_edited", "logits_after", "latent_shift", "stop_reason", "alpha"):
        assert unscored.column(column).equals(scored.column(column)), column
    with pytest.raises(ValueError, match="needs scores_before"):
        DirectionMethod(directions=directions_file, until_prob=0.9, scores_before=False)


def test_conditioning_at_edit_time_and_settings_a_direction_cannot_serve(
    tmp_path, job_models, directions_file
):
    n = 6
    z = latents(n, seed=3)
    path = write_manifest(tmp_path / "m.parquet", {"id": np.arange(n), "z": z})
    out = tmp_path / "conditioned"
    method = DirectionMethod(
        directions=directions_file, direction="attr1", alpha=2.0, conditions=("attr0", "attr3")
    )
    _direction_job(path, out, job_models, method)
    moved = np.array(_table(out).column("z_edited").to_pylist(), np.float32) - z
    found = load_directions(directions_file)
    others = found.vectors[[found.index("attr0"), found.index("attr3")]].numpy()
    assert np.abs(moved @ others.T).max() < 1e-5, "the move leaves the conditions' scores alone"
    np.testing.assert_allclose(np.linalg.norm(moved, axis=1), 2.0, rtol=1e-5)
    axes = tmp_path / "axes"
    generator, classifier = load_models(ModelSource(*job_models))
    save_directions(fit_directions(generator, classifier, FitConfig(method="axis")), axes)
    with pytest.raises(ZsteerError, match="--until-prob needs a direction that raises an attribute; 'z0'"):
        _direction_job(
            path, tmp_path / "a", job_models, DirectionMethod(directions=axes, direction="z0", until_prob=0.9)
        )
    with pytest.raises(ZsteerError, match="--distance needs a fitted boundary"):
        _direction_job(
            path, tmp_path / "b", job_models, DirectionMethod(directions=axes, direction="z0", distance=1.0)
        )
    with pytest.raises(ZsteerError, match="no direction 'nope'"):
        _direction_job(
            path, tmp_path / "c", job_models, DirectionMethod(directions=axes, conditions=("nope",))
        )


def test_until_prob_reaches_p_or_says_not_reached_within_its_budget(tmp_path, job_models, directions_file):
    n, target, budget = 24, 0.8, 10
    z = latents(n, seed=4)
    path = write_manifest(tmp_path / "m.parquet", {"id": np.arange(n), "z": z})
    method = DirectionMethod(
        directions=directions_file, direction="attr1", until_prob=target, max_alpha=6.0, max_evals=budget,
        tolerance=0.01,
    )  # fmt: skip
    out = tmp_path / "until"
    _direction_job(path, out, job_models, method)
    table = _table(out)
    reasons = table.column("stop_reason").to_pylist()
    assert set(reasons) <= {"target_reached", "not_reached"} and "target_reached" in reasons
    before = torch.sigmoid(torch.tensor(table.column("logits_before").to_pylist())[:, 1])
    after = torch.sigmoid(torch.tensor(table.column("logits_after").to_pylist())[:, 1])
    alpha = torch.tensor(table.column("alpha").to_pylist())
    evals = table.column("steps_taken").to_pylist()
    assert max(evals) <= budget
    for i, reason in enumerate(reasons):
        if reason == "target_reached":
            assert after[i] >= target - 1e-6 and alpha[i] >= 0
            assert (alpha[i] == 0) == (before[i] >= target), "a row already there does not move"
        else:
            assert 0 < alpha[i] <= 6.0 and after[i] < target


class _LinearRenderer:
    """An Editor stand-in whose logits are linear in z (so P rises monotonically along a direction)."""

    def __init__(self, weights: torch.Tensor):
        self.weights = weights  # [D, A]
        self.calls = 0
        self.rendered = 0  # rows whose images were made

    def render(self, z, labels=None):
        self.rendered += z.shape[0]
        return torch.zeros(z.shape[0], 1, 1, 3, dtype=torch.uint8), self.scores(z, labels)

    def scores(self, z, labels=None):
        self.calls += 1
        return torch.as_tensor(z, dtype=torch.float32) @ self.weights


def test_until_prob_finds_the_smallest_alpha_within_the_tolerance(directions_file):
    from zsteer.jobs.direction_method import DirectionEditor
    from zsteer.pipeline.editor import EditBatch

    found = load_directions(directions_file)
    method = DirectionMethod(
        directions=directions_file, direction="attr1", until_prob=0.9, max_alpha=16.0, max_evals=40,
        tolerance=0.01,
    )  # fmt: skip
    weights = torch.zeros(Z_DIM, 5)
    weights[:, 1] = found.vectors[1] * 0.7  # logit of attr1 = 0.7 * (z . d)
    renderer = _LinearRenderer(weights)
    editor = DirectionEditor(method, renderer, tuple(f"attr{i}" for i in range(5)))
    z = torch.tensor(latents(64, seed=8))
    z[:4] = -found.vectors[1] * 30  # needs alpha 33: beyond max_alpha
    result = editor.edit_batch(EditBatch(z=z, weights=torch.zeros(64, 5), preserve=torch.zeros(64, 5)))
    logit_p = float(torch.logit(torch.tensor(0.9)))
    start = 0.7 * (z @ found.vectors[1])
    exact = ((logit_p - start) / 0.7).clamp_min(0)  # the smallest alpha that reaches P
    reasons = result.status.tolist()
    from zsteer.core.status import NOT_REACHED, TARGET_REACHED

    assert reasons[:4] == [NOT_REACHED] * 4 and (result.alpha[:4] == 16.0).all()
    ok = torch.tensor(reasons) == TARGET_REACHED
    assert ok[4:].all()
    gap = result.alpha[ok] - exact[ok]
    assert (gap >= -1e-4).all() and (gap <= 0.01 + 1e-4).all(), (
        "within the tolerance above the smallest alpha"
    )
    assert int(result.steps_taken.max()) <= 40
    assert renderer.calls <= 2 + 40, "every round is one batched forward of the rows still searching"
    assert renderer.rendered == 64, "images only of the edited latents: the start and the search are scored"
    lower = DirectionEditor(DirectionMethod(directions=directions_file, direction="attr1", until_prob=0.1), renderer,
                            tuple(f"attr{i}" for i in range(5)))  # fmt: skip
    result = lower.edit_batch(EditBatch(z=z[4:], weights=torch.zeros(60, 5), preserve=torch.zeros(60, 5)))
    assert (result.alpha <= 0).all() and (torch.sigmoid(result.logits_after[:, 1]) <= 0.1 + 1e-6).all()


def test_torch_and_onnxruntime_agree_on_a_direction_job(tmp_path, job_models, directions_file):
    pytest.importorskip("onnxruntime")
    n = 10
    path = write_manifest(tmp_path / "m.parquet", {"id": np.arange(n), "z": latents(n, seed=5)})
    method = DirectionMethod(directions=directions_file, direction="attr0", alphas=(-1.0, 1.0))
    _direction_job(path, tmp_path / "torch", job_models, method)
    _direction_job(path, tmp_path / "ort", job_models, method, backend=BackendConfig("onnxruntime"))
    a, b = _table(tmp_path / "torch"), _table(tmp_path / "ort")
    assert a.column("z_edited").equals(b.column("z_edited")), "the latents are the same arithmetic"
    for column in ("logits_before", "logits_after"):
        np.testing.assert_allclose(
            np.array(a.column(column).to_pylist()), np.array(b.column(column).to_pylist()), atol=1e-4
        )


def test_directions_that_do_not_fit_the_models_are_refused_before_anything_is_written(
    tmp_path, job_models, directions_file
):
    """Another z length, or --until-prob towards an attribute the classifier lacks: one line, no job folder."""
    found = load_directions(directions_file)
    manifest = write_manifest(tmp_path / "m.parquet", {"id": np.arange(4), "z": latents(4)})
    longer = dataclasses.replace(found, vectors=torch.nn.functional.pad(found.vectors, (0, 2)), normals=None)
    renamed = dataclasses.replace(found, attributes=tuple(f"other{i}" for i in range(len(found.names))))
    cases = [
        (longer, {}, rf"directions of length {Z_DIM + 2}, the generator takes z_dim={Z_DIM}$"),
        (renamed, {"until_prob": 0.9}, r"^direction 'attr0' raises 'other0', which the classifier lacks$"),
    ]
    for i, (directions, settings, message) in enumerate(cases):
        path = save_directions(directions, tmp_path / f"dirs{i}")
        out = tmp_path / f"out{i}"
        method = DirectionMethod(directions=path, direction="attr1", **settings)
        with pytest.raises(ZsteerError, match=message):
            _direction_job(manifest, out, job_models, method)
        assert not out.exists()


def test_an_id_to_column_that_names_no_ids_is_refused_before_anything_is_written(tmp_path, job_models):
    """One line naming the column, no job folder left behind, so the same command runs once it is fixed."""
    z = latents(4, seed=2)
    path = write_manifest(tmp_path / "m.parquet", {"id": np.arange(4), "z": z, "id_to": ["1", "0", "3", "2"]})
    out = tmp_path / "interp"
    config = job_config(path, out, job_models, targets=(), method=InterpolateMethod(frames=2))
    with pytest.raises(
        ZsteerError, match=r"m\.parquet: column 'id_to' is string but the ids are int64: it must name ids$"
    ):
        run_job(config)
    assert not out.exists()
    write_manifest(path, {"id": np.arange(4), "z": z, "id_to": [1, 0, 3, 2]})
    assert run_job(config).status == "complete"


def test_interpolation_frames_endpoints_id_to_across_units_and_rejects(tmp_path, job_models, monkeypatch):
    n, frames = 30, 4
    z = latents(n, seed=6)
    id_to = [None] * n
    for i in range(12):
        id_to[i] = (i + 17) % n  # other units, other row groups
    id_to[2] = 999  # no such row
    z_to = [None] * n
    for i in range(12, 20):
        z_to[i] = latents(1, seed=100 + i)[0].tolist()
    z_to[19] = [1.0, 2.0]  # too short
    path = write_manifest(
        tmp_path / "m.parquet", {"id": np.arange(n), "z": z, "id_to": id_to, "z_to": z_to}, row_group_size=8
    )
    method = InterpolateMethod(frames=frames, path="slerp")
    out = tmp_path / "interp"
    config = job_config(path, out, job_models, targets=(), method=method, unit_rows=5, batch_size=3)
    crash_at_commit(monkeypatch, 2, config)
    assert run_job(config).status == "complete"
    table = _table(out)
    rejects = dict(
        zip(read_rejects(out)["row"].to_pylist(), read_rejects(out)["reason"].to_pylist(), strict=True)
    )
    assert rejects[2] == "id_to 999 names no row with a usable z"
    assert rejects[19] == f"z_to must hold {Z_DIM} finite values"
    assert set(rejects) == {2, 19} | set(range(20, 30))
    assert table.num_rows == frames * (n - 12)
    edited = np.array(table.column("z_edited").to_pylist(), np.float32).reshape(-1, frames, Z_DIM)
    ids = table.column("id").to_pylist()[::frames]
    assert table.column("frame").to_pylist()[:frames] == list(range(frames))
    for row, i in zip(edited, ids, strict=True):
        end = z[id_to[i]] if i < 12 else np.asarray(z_to[i], np.float32)
        np.testing.assert_array_equal(row[0], z[i])  # endpoints bit for bit
        np.testing.assert_array_equal(row[-1], end)
        t = np.linspace(0, 1, frames)
        norms = (1 - t) * np.linalg.norm(z[i]) + t * np.linalg.norm(end)
        np.testing.assert_allclose(np.linalg.norm(row, axis=1), norms, rtol=1e-5)  # slerp keeps norms
    again = tmp_path / "again"
    run_job(job_config(path, again, job_models, targets=(), method=method, unit_rows=5, batch_size=16))
    assert _table(again).equals(table)


def test_an_end_point_beyond_max_abs_z_is_a_row_reject(tmp_path, job_models):
    """z_to, or the z an id_to names, with a value beyond MAX_ABS_Z: the row is rejected with a reason,
    as a row's own z is (jobs/rows.py)."""
    z = latents(4, seed=9)
    z[3, 1] = 5000.0  # row 3: its own z is too large, so row 0 (id_to 3) has no usable end point
    far = latents(1, seed=10)[0]
    far[2] = -2e4
    path = write_manifest(
        tmp_path / "m.parquet",
        {"id": np.arange(4), "z": z, "id_to": [3, None, 0, None], "z_to": [None, far.tolist(), None, None]},
    )
    out = tmp_path / "interp"
    assert (
        run_job(job_config(path, out, job_models, targets=(), method=InterpolateMethod(frames=2))).status
        == "complete"
    )
    rejects = dict(
        zip(read_rejects(out)["row"].to_pylist(), read_rejects(out)["reason"].to_pylist(), strict=True)
    )
    assert rejects[0] == "id_to 3 names no row with a usable z"
    assert (
        rejects[1]
        == "z_to has a value of magnitude 2e+04, above the 1000 a latent may have (z ~ N(0, I) stays within about 6)"
    )
    assert rejects[3].startswith("z has a value of magnitude 5000")
    assert set(rejects) == {0, 1, 3} and _table(out).column("id").to_pylist() == [2, 2]


def test_class_interpolation_blends_one_hot_vectors(tmp_path):
    from zsteer.pipeline.network import EditNet

    gspec = GeneratorSpec(kind="course_conditional_generator", z_dim=Z_DIM, n_classes=3, hidden_dim=4)
    models = tiny_models(tmp_path / "models", gspec)
    z = latents(4, seed=7)
    path = write_manifest(
        tmp_path / "m.parquet",
        {"id": np.arange(4), "z": z, "label": [0, 1, 2, 0], "label_to": [1, 2, None, 5]},
    )
    out = tmp_path / "blend"
    run_job(job_config(path, out, models, targets=(), method=InterpolateMethod(frames=3)))
    table = _table(out)
    assert read_rejects(out).column("reason").to_pylist() == [
        "nothing to interpolate to: give z_to, id_to or label_to",
        "label_to 5 out of range [0, 3)",
    ]
    net = EditNet(*load_models(ModelSource(*models)))
    logits = np.array(table.column("logits_after").to_pylist(), np.float32)
    row0 = torch.tensor(z[0]).expand(3, -1)
    soft = torch.tensor([[1.0, 0, 0], [0.5, 0.5, 0], [0, 0, 0]])
    soft[2, 1] = 1.0
    expect = net.classify(net.generate(torch.cat([row0, soft], dim=1)))
    np.testing.assert_allclose(logits[:3], expect.numpy(), atol=1e-5)
    with pytest.raises(ZsteerError, match="--backend torch"):
        run_job(
            job_config(path, tmp_path / "ort", models, targets=(), method=InterpolateMethod(frames=3),
                       backend=BackendConfig("onnxruntime"))
        )  # fmt: skip


def test_alpha_strips_parse():
    assert parse_alphas("-3:3:7") == (-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0)
    assert parse_alphas("0.5,2") == (0.5, 2.0)
    with pytest.raises(ZsteerError, match="START:STOP:COUNT"):
        parse_alphas("1:2")


def test_directions_cli_fits_and_shows(tmp_path, job_models):
    from click.testing import CliRunner

    from zsteer.cli.main import main

    gen, cls = job_models
    models = ["--generator", str(gen), "--classifier", str(cls)]
    out = tmp_path / "sefa"
    result = CliRunner().invoke(
        main, ["directions", "fit", "--out", str(out), "--method", "sefa", "--k", "3", *models]
    )
    assert result.exit_code == 0, result.output
    assert "sefa0" in result.output and (tmp_path / "sefa.json").exists()
    shown = CliRunner().invoke(
        main, ["directions", "show", str(out), "--judge", str(cls), "--samples", "8", *models]
    )
    assert shown.exit_code == 0, shown.output
    assert shown.output.count("moves:") == 3
    bad = CliRunner().invoke(main, ["directions", "show", str(tmp_path / "missing")])
    assert bad.exit_code == 2 and "missing: not a directions file" in bad.output


def test_a_direction_strip_is_exactly_once_after_sigkill(tmp_path, job_models, directions_file):
    """`zsteer edit --method direction` as a real process, killed by SIGKILL before its first commit and
    after one, then resumed: the output equals an uninterrupted run's, every (id, alpha) once."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    n = 240
    z = latents(n, seed=9)
    z[11] = np.nan
    path = write_manifest(tmp_path / "m.parquet", {"id": np.arange(n), "z": z}, row_group_size=20)
    gen, cls = job_models
    zsteer = str(Path(sys.executable).with_name("zsteer"))

    def command(out):
        return [
            zsteer, "edit", "-m", str(path), "--generator", str(gen), "--classifier", str(cls), "--method",
            "direction", "--directions", str(directions_file), "--direction", "attr2", "--alphas=-2:2:9",
            "--images", "png", "--workers", "0", "--threads", "1", "--batch-size", "16", "--out", str(out),
        ]  # fmt: skip

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "killed"
    commits = out / "commits"
    for wait_for in (0, 1):  # kill before any commit, then right after the first new one
        proc = subprocess.Popen(command(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        before = len(list(commits.glob("*.json"))) if commits.exists() else 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            done = len(list(commits.glob("*.json"))) if commits.exists() else 0
            if (out / "job.json").exists() and done >= before + wait_for:
                break
            time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert subprocess.run(command(out), env=env, capture_output=True).returncode == 0
    reference = tmp_path / "reference"
    assert subprocess.run(command(reference), env=env, capture_output=True).returncode == 0
    killed, clean = _table(out), _table(reference)
    assert killed.num_rows == 9 * (n - 1) and read_rejects(out).column("row").to_pylist() == [11]
    assert killed.drop_columns(["image"]).equals(clean.drop_columns(["image"]))
    assert killed.column("image").equals(clean.column("image"))


# ---- refused settings: one line, exit 2, before anything is written --------------------------------------


def test_a_strip_longer_than_max_strip_is_refused():
    """--alphas 1:2:100000000 once grew to 23 GB and --frames 1e8 died in the allocator: both are bounded
    by MAX_STRIP, in the parser (before any allocation) and in the methods themselves."""
    from zsteer.cli.method_options import METHOD_PARSERS
    from zsteer.jobs.direction_method import MAX_STRIP

    assert len(parse_alphas(f"0:1:{MAX_STRIP}")) == MAX_STRIP
    with pytest.raises(
        ZsteerError, match=rf"^--alphas 1:2:100000000: 100000000 values, at most {MAX_STRIP} "
    ):
        parse_alphas("1:2:100000000")
    with pytest.raises(ValueError, match="at most"):
        DirectionMethod(alphas=(0.0,) * (MAX_STRIP + 1))
    InterpolateMethod(frames=MAX_STRIP)
    with pytest.raises(ZsteerError, match=rf"^--method interpolate: frames must be in \[2, {MAX_STRIP}\]"):
        METHOD_PARSERS["interpolate"]({"frames": 100_000_000})


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"distance": float("nan")}, "distance nan"),
        ({"distance": 1e30}, "distance 1e+30"),
        ({"alpha": 1e30}, "alpha 1e+30"),
        ({"alpha": 1e300}, "alpha 1e+300"),
        ({"alpha": float("-inf")}, "alpha -inf"),
        ({"alphas": "0,nan"}, "alphas nan"),
        ({"alphas": "-2e3:0:3"}, "alphas -2000.0"),
        ({"until_prob": 0.9, "max_alpha": float("inf")}, "max_alpha inf"),
        ({"until_prob": 0.9, "max_alpha": float("nan")}, "max_alpha nan"),
    ],
)
def test_non_finite_or_huge_strengths_are_refused(settings, message):
    """A strength past MAX_ABS_Z moves z past any latent of the prior (1e30 gave z ~1e29, 1e300 a float32
    overflow traceback, NaN a job of NaN rows): one line naming the flag."""
    from zsteer.cli.method_options import METHOD_PARSERS

    opt = {"directions": "d", "direction": "attr0", **settings}
    with pytest.raises(
        ZsteerError, match=rf"^--method direction: {re.escape(message)}: expected a finite number "
    ):
        METHOD_PARSERS["direction"](opt)
    DirectionMethod(alpha=-1000.0, direction="attr0")  # at the bound: kept


def test_a_direction_conditioned_on_itself_is_refused(tmp_path, job_models, directions_file):
    """--direction X --condition X used to be ignored silently: refused. With other conditions beside X
    (InterFaceGAN's "each orthogonal to the others") X is made orthogonal to those: every row is edited,
    a row's own direction among the conditions included. The only direction of a file conditioned on
    itself is refused."""
    with pytest.raises(ValueError, match="cannot be made orthogonal to itself, and there is no other"):
        DirectionMethod(direction="attr1", conditions=("attr1",))
    DirectionMethod(direction="attr1", conditions=("attr0", "attr1"))  # attr1 orthogonal to attr0
    n = 3
    z = latents(n, seed=4)
    path = write_manifest(
        tmp_path / "m.parquet", {"id": np.arange(n), "z": z, "direction": ["attr1", "attr0", None]}
    )
    out = tmp_path / "rows"
    method = DirectionMethod(directions=directions_file, direction="attr1", conditions=("attr0", "attr1"))
    _direction_job(path, out, job_models, method)
    assert read_rejects(out) is None and len(_table(out)) == n
    found = load_directions(directions_file)
    only = save_directions(dataclasses.replace(
        found, names=found.names[:1], vectors=found.vectors[:1], intercepts=found.intercepts[:1],
        attributes=found.attributes[:1], stats=found.stats[:1], normals=None,
    ), tmp_path / "only")  # fmt: skip
    plain = write_manifest(tmp_path / "plain.parquet", {"id": np.arange(n), "z": z})
    with pytest.raises(
        ZsteerError, match=r"^--condition attr0: the direction moved \(the file's only direction\)"
    ):
        _direction_job(
            plain, tmp_path / "only_out", job_models, DirectionMethod(directions=only, conditions=("attr0",))
        )
    assert not (tmp_path / "only_out").exists()


def test_a_per_row_alpha_beyond_max_abs_z_is_a_row_reject(tmp_path, job_models, directions_file):
    n = 4
    path = write_manifest(
        tmp_path / "m.parquet",
        {"id": np.arange(n), "z": latents(n, seed=5), "alpha": [1.0, 1e30, None, -2e3]},
    )
    out = tmp_path / "alpha"
    _direction_job(path, out, job_models, DirectionMethod(directions=directions_file, direction="attr2"))
    rejects = read_rejects(out)
    reasons = dict(zip(rejects["row"].to_pylist(), rejects["reason"].to_pylist(), strict=True))
    assert set(reasons) == {1, 3}
    assert reasons[1] == "alpha 1e+30 is beyond 1000 in magnitude (it moves z past any latent of the prior)"
    assert _table(out).column("id").to_pylist() == [0, 2]


def test_several_directions_with_none_chosen_are_refused_before_the_job(
    tmp_path, job_models, directions_file
):
    """No --direction and no 'direction' column over a file of 5 directions: one line, no job folder (every
    row used to be rejected, exit 0). With the column, a row's null is that row's reject."""
    n = 3
    z = latents(n, seed=7)
    path = write_manifest(tmp_path / "m.parquet", {"id": np.arange(n), "z": z})
    out = tmp_path / "none"
    with pytest.raises(ZsteerError, match=r"5 directions \(attr0, attr1, .*\); give --direction NAME or a"):
        _direction_job(path, out, job_models, DirectionMethod(directions=directions_file))
    assert not out.exists()
    path = write_manifest(
        tmp_path / "m.parquet", {"id": np.arange(n), "z": z, "direction": ["attr0", None, "attr1"]}
    )
    _direction_job(path, out, job_models, DirectionMethod(directions=directions_file))
    rejects = read_rejects(out)
    assert rejects["row"].to_pylist() == [1] and rejects["reason"][0].as_py().startswith("no direction")
    assert _table(out).column("direction").to_pylist() == ["attr0", "attr1"]


def test_an_interpolation_without_end_point_columns_is_refused_before_the_job(tmp_path, job_models):
    path = write_manifest(tmp_path / "m.parquet", {"id": np.arange(3), "z": latents(3, seed=8)})
    out = tmp_path / "interp"
    config = job_config(path, out, job_models, targets=(), method=InterpolateMethod(frames=4))
    with pytest.raises(
        ZsteerError, match=r"^--method interpolate: the manifest has none of the columns z_to, id_to"
    ):
        run_job(config)
    assert not out.exists()


@pytest.mark.parametrize(
    ("column", "values", "expected"),
    [
        ("label_to", [1.0, 0.0, 2.0], "column 'label_to' must be integers (classes), found double"),
        ("z_to", ["a", "b", "c"], f"column 'z_to' must be lists of {Z_DIM} floats, found string"),
        ("z_to", pa.array([[1, 2]] * 3, pa.list_(pa.int64())), "column 'z_to' must be lists of"),
        (
            "z_to",
            pa.array([[0.5] * 3] * 3, pa.list_(pa.float32(), 3)),
            "column 'z_to' holds 3 values per row",
        ),
    ],
)
def test_an_end_point_column_of_the_wrong_type_is_refused_naming_the_file(
    tmp_path, job_models, column, values, expected
):
    """It used to make every row a reject with exit 0, where a float `label` is a whole-file error."""
    good = write_manifest(tmp_path / "a.parquet", {"id": np.arange(3), "z": latents(3, seed=1)})
    bad = write_manifest(
        tmp_path / "b.parquet", {"id": np.arange(3, 6), "z": latents(3, seed=2), column: values}
    )
    out = tmp_path / "interp"
    config = job_config([good, bad], out, job_models, targets=(), method=InterpolateMethod(frames=2))
    with pytest.raises(ZsteerError) as info:
        run_job(config)
    message = str(info.value)
    assert message.startswith(f"{bad}: {expected}") and "\n" not in message, message
    assert not out.exists()


def test_directions_of_another_generator_are_used_with_a_warning(
    tmp_path, job_models, directions_file, caplog
):
    """Related generators may share directions: used, but one warning names the file and both generators."""
    found = load_directions(directions_file)
    fitted = found.generator_fingerprint
    models = found.info["models"] | {
        "generator": found.info["models"]["generator"] | {"fingerprint": "0123456789abcdef"}
    }
    moved = save_directions(
        dataclasses.replace(found, info=found.info | {"models": models}), tmp_path / "other"
    )
    path = write_manifest(tmp_path / "m.parquet", {"id": np.arange(2), "z": latents(2, seed=1)})
    with caplog.at_level("WARNING", logger="zsteer.jobs"):
        _direction_job(
            path,
            tmp_path / "same",
            job_models,
            DirectionMethod(directions=directions_file, direction="attr0"),
        )
    assert not [r for r in caplog.records if "fitted on generator" in r.getMessage()]
    with caplog.at_level("WARNING", logger="zsteer.jobs"):
        result = _direction_job(
            path, tmp_path / "out", job_models, DirectionMethod(directions=moved, direction="attr0")
        )
    assert result.status == "complete"
    warned = [r.getMessage() for r in caplog.records if "fitted on generator" in r.getMessage()]
    assert warned == [
        f"{moved}: directions fitted on generator 0123456789abcdef, editing with generator {fitted}"
    ]


def test_directions_cli_refuses_what_it_used_to_ignore(tmp_path, job_models):
    """show --alpha nan printed NaNs; fit --k beyond z_dim wrote (pca) or capped (sefa) silently; a fit's
    only direction conditioned on itself recorded a condition that did nothing."""
    from click.testing import CliRunner

    from zsteer.cli.main import main

    gen, cls = job_models
    models = ["--generator", str(gen), "--classifier", str(cls)]
    out = tmp_path / "dirs"

    def run(*args):
        result = CliRunner().invoke(main, ["directions", *args, *models])
        assert result.exit_code == 2, result.output
        return result.output.strip().splitlines()[-1]

    for method in ("sefa", "pca"):
        line = run("fit", "--out", str(out), "--method", method, "--k", str(Z_DIM + 1))
        assert (
            line
            == f"zsteer: error: --k {Z_DIM + 1}: at most z_dim={Z_DIM} directions in a {Z_DIM}-dimensional z-space"
        )
    line = run("fit", "--out", str(out), "--method", "gradient", "--n-samples", "8", "--attribute", "attr0",
               "--condition", "attr0")  # fmt: skip
    assert "cannot be made orthogonal to itself" in line
    assert not (tmp_path / "dirs.json").exists()
    with pytest.raises(ValueError, match="orthogonal to itself"):  # refused before the fit's minutes
        FitConfig(attributes=("attr0",), conditions=("attr0",))
    FitConfig(attributes=("attr0", "attr1"), conditions=("attr0",))  # attr1 is made orthogonal to attr0
    fitted = CliRunner().invoke(main, ["directions", "fit", "--out", str(out), "--method", "axis", *models])
    assert fitted.exit_code == 0, fitted.output
    for alpha in ("nan", "1e300"):
        line = run("show", str(out), "--judge", str(cls), "--alpha", alpha)
        assert line.startswith(f"zsteer: error: --alpha {float(alpha)}: expected a finite number"), line
