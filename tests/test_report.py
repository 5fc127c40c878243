"""`zsteer report`: hand-computed numbers, the streamed job report against a direct computation, the
same-classifier refusal, the files written; and `zsteer sheet`'s compact captions and strips."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from jobkit import TINY_CLASSIFIER, TINY_GENERATOR, job_config, latents, write_manifest
from modelkit import write_models
from PIL import Image
from test_cli import one_line_error

from zsteer.cli.main import main
from zsteer.core.errors import ZsteerError
from zsteer.jobs.jobview import ManifestLatents, open_job
from zsteer.jobs.report import (
    REPORT_CSV,
    ReportConfig,
    TargetTally,
    judge_probabilities,
    judged_rows,
    report_job,
    write_report,
)
from zsteer.jobs.runner import run_job
from zsteer.jobs.sheet import SheetConfig, contact_sheet, job_sheet, render_latents
from zsteer.pipeline.checkpoints import load_classifier

pytestmark = pytest.mark.usefixtures("single_thread")
NAMES = ("a", "b", "c")


def test_tally_matches_hand_computed_numbers():
    # 4 rows, 3 attributes; the target is "a" (index 0).
    before = np.array([[0.2, 0.9, 0.1], [0.4, 0.3, 0.6], [0.7, 0.5, 0.2], [0.1, 0.8, 0.8]])
    after = np.array([[0.9, 0.6, 0.1], [0.45, 0.1, 0.4], [0.8, 0.5, 0.7], [0.6, 0.8, 0.9]])
    tally = TargetTally(target=0, sign=1.0, n_attributes=3)
    tally.add(before[:3], after[:3], np.array([1.0, 2.0, 3.0]))  # two batches: sums carry over
    tally.add(before[3:], after[3:], np.array([6.0]))
    got = tally.result(NAMES, others=[1, 2])
    # Rows 0, 1, 3 lacked a (p < 0.5); rows 0 and 3 gained it, row 1 stayed at 0.45.
    assert got["rows"] == 4 and got["rows_lacking_target"] == 3 and got["gained_target"] == 2
    assert got["success_rate"] == pytest.approx(2 / 3)
    assert got["target_prob_before"] == pytest.approx((0.2 + 0.4 + 0.7 + 0.1) / 4)
    assert got["target_prob_after"] == pytest.approx((0.9 + 0.45 + 0.8 + 0.6) / 4)
    # |dp| per attribute: a (0.7, 0.05, 0.1, 0.5), b (0.3, 0.2, 0, 0), c (0, 0.2, 0.5, 0.1).
    expected_dp = {"a": 1.35 / 4, "b": 0.5 / 4, "c": 0.8 / 4}
    assert got["mean_abs_dp"] == pytest.approx(expected_dp)
    # Flips (0.5 crossed): a in rows 0 and 3; b in none (0.9 -> 0.6 stays above); c in rows 1 and 2.
    assert got["flip_rate"] == pytest.approx({"a": 0.5, "b": 0.0, "c": 0.5})
    assert got["mean_other_drift"] == pytest.approx((0.5 / 4 + 0.8 / 4) / 2)
    assert got["mean_other_flip_rate"] == pytest.approx(0.25)
    assert got["latent_shift"] == pytest.approx(3.0)


def test_tally_of_a_removal_counts_rows_that_had_the_target():
    before = np.array([[0.8, 0.5], [0.9, 0.5], [0.3, 0.5]])
    after = np.array([[0.2, 0.5], [0.7, 0.5], [0.1, 0.5]])
    got = TargetTally(target=0, sign=-1.0, n_attributes=2)
    got.add(before, after, np.zeros(3))
    result = got.result(("a", "b"), others=[1])
    assert (result["rows_lacking_target"], result["gained_target"]) == (2, 1)
    assert result["success_rate"] == pytest.approx(0.5)


@pytest.fixture(scope="module")
def judged_job(tmp_path_factory, job_models):
    """A finished tiny job (two row groups, images off), its manifest z, and an independent judge."""
    root = tmp_path_factory.mktemp("report")
    z = latents(23, seed=3)
    ids = np.arange(100, 123, dtype=np.int64)
    manifest = write_manifest(root / "m.parquet", {"id": ids, "z": z}, row_group_size=10)
    run_job(job_config([str(manifest)], root / "job", job_models, output={"rows_per_shard": 7}))
    _, judge = write_models(root / "judge", TINY_GENERATOR, TINY_CLASSIFIER, seed=5)
    return root / "job", z, load_classifier(judge)


def test_report_job_streams_to_the_numbers_of_a_direct_computation(judged_job, tmp_path):
    job, z, judge = judged_job
    view = open_job(job)
    parts = pa.concat_tables([pq.read_table(p) for p in view.committed_parts()])
    z_edited = np.asarray(parts.column("z_edited").to_pylist(), dtype=np.float32)
    order = parts.column("id").to_numpy() - 100
    with torch.no_grad():
        p0 = judge_probabilities(judge, render_latents(view.generator, z[order], None))
        p1 = judge_probabilities(judge, render_latents(view.generator, z_edited, None))
    target = judge.attributes.index("attr1")
    lacked = p0[:, target] < 0.5
    expected_success = (lacked & (p1[:, target] >= 0.5)).sum() / lacked.sum()
    dp = np.abs(p1 - p0).mean(0)

    small = report_job(view, judge, ReportConfig(jobs=(job,), judge=judge.path, out=tmp_path, batch=3))
    large = report_job(view, judge, ReportConfig(jobs=(job,), judge=judge.path, out=tmp_path, batch=256))
    got = small["targets"][0]
    assert got["rows"] == 23 and got["target"] == "attr1"
    assert got["success_rate"] == pytest.approx(expected_success)
    assert list(got["mean_abs_dp"].values()) == pytest.approx(list(dp))
    others = [i for i in range(len(dp)) if i != target]
    assert got["mean_other_drift"] == pytest.approx(dp[others].mean())
    shift = np.linalg.norm(z_edited - z[order], axis=1).mean()
    assert got["latent_shift"] == pytest.approx(shift, rel=1e-5)
    assert got["latent_shift"] > 0
    # The batch sets memory and speed, not the numbers (up to float summation order).
    other = large["targets"][0]
    for key in ("rows", "rows_lacking_target", "gained_target", "flip_rate"):
        assert got[key] == other[key], key
    for key in ("target_prob_after", "mean_other_drift", "latent_shift"):
        assert got[key] == pytest.approx(other[key], rel=1e-6), key


def _judged_at(view, judge, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """(p_before, p_after) of every row of ``view``, judged ``batch`` rows at a time."""
    parts = list(judged_rows(view, judge, batch))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def test_a_rows_judged_bits_do_not_depend_on_the_report_batch(judged_job):
    """torch.sigmoid's bits depend on a value's place in its tensor, which failed this at batch 1 and 3."""
    job, _, judge = judged_job
    view = open_job(job)
    want = _judged_at(view, judge, 256)
    for batch in (1, 3):
        got = _judged_at(view, judge, batch)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_an_imported_judge_runs_row_by_row(judged_job, tmp_path):
    """A graph zsteer did not write may pick kernels by its row count: the report runs it a row at a call."""
    from byokit import POOLED_CARD, pooled_classifier

    from zsteer.pipeline.importer import write_imported

    job, _, _ = judged_job
    write_imported(
        pooled_classifier(), POOLED_CARD, tmp_path / "pooled.pt2", source="byokit:pooled_classifier"
    )
    judge = load_classifier(tmp_path / "pooled.pt2")
    calls = []
    real = judge.module.forward
    judge.module.forward = lambda x: calls.append(len(x)) or real(x)
    view = open_job(job)
    before, after = _judged_at(view, judge, 256)
    assert before.shape == after.shape == (23, len(POOLED_CARD.attributes))
    assert set(calls) == {2} and len(calls) == 2 * 23  # before and after: each row alone, as two copies
    np.testing.assert_array_equal(_judged_at(view, judge, 5)[1], after)


def test_write_report_writes_json_csv_markdown_and_plots(judged_job, tmp_path):
    job, _, judge = judged_job
    report = {
        "judge": {"path": str(judge.path), "fingerprint": judge.fingerprint},
        "attributes": list(judge.attributes),
        "jobs": [report_job(open_job(job), judge, ReportConfig(jobs=(job,), judge=judge.path, out=tmp_path))],
    }
    paths = write_report(report, tmp_path / "out")
    assert json.loads(paths["report.json"].read_text()) == json.loads(json.dumps(report))
    csv_lines = (tmp_path / "out" / REPORT_CSV).read_text().splitlines()
    assert len(csv_lines) == 2 and "success_rate" in csv_lines[0] and "dp_attr0" in csv_lines[0]
    md = paths["report.md"].read_text()
    assert "![Dependency heatmap](dependency.png)" in md and "(pareto.png)" in md
    for png in ("dependency.png", "pareto.png"):
        assert Image.open(tmp_path / "out" / png).width > 200


def test_same_classifier_as_judge_is_refused_unless_allowed(judged_job, tmp_path, job_models, caplog):
    job, _, _ = judged_job
    steering = load_classifier(job_models[1])
    config = ReportConfig(jobs=(job,), judge=steering.path, out=tmp_path)
    with pytest.raises(ZsteerError, match="steered with.*grades its own homework.*--allow-same-classifier"):
        report_job(open_job(job), steering, config)
    allowed = ReportConfig(jobs=(job,), judge=steering.path, out=tmp_path, allow_same_classifier=True)
    with caplog.at_level("WARNING", logger="zsteer.report"):
        assert report_job(open_job(job), steering, allowed)["targets"][0]["rows"] == 23
    assert "grades its own homework" in caplog.text


def test_cli_report_needs_a_judge_off_the_demo_models_and_refuses_self_grading(
    judged_job, tmp_path, job_models
):
    job, _, judge = judged_job
    runner = CliRunner()
    one_line_error(runner.invoke(main, ["report", str(job), "-o", str(tmp_path / "r")]), "--judge: required")
    same = ["report", str(job), "-o", str(tmp_path / "r"), "--judge", str(job_models[1])]
    one_line_error(runner.invoke(main, same), "--allow-same-classifier")
    ok = runner.invoke(main, ["report", str(job), "-o", str(tmp_path / "r"), "--judge", str(judge.path)])
    assert ok.exit_code == 0, ok.output
    assert "attr1 success" in ok.stdout and (tmp_path / "r" / "report.md").is_file()
    other = runner.invoke(main, [*same[:-2], "--judge", str(judge.path), "-t", "nope"])
    one_line_error(other, "nope")


def test_manifest_latents_finds_ids_in_any_order_with_a_small_window(tmp_path):
    z = latents(30, seed=1)
    manifest = write_manifest(tmp_path / "m.parquet", {"id": np.arange(30, dtype=np.int64), "z": z}, 4)
    found, labels = ManifestLatents([str(manifest)], window=2).lookup([29, 0, 13, 14, 2, 29])
    assert labels is None
    np.testing.assert_array_equal(found, z[[29, 0, 13, 14, 2, 29]])
    with pytest.raises(ZsteerError, match="id 99"):
        ManifestLatents([str(manifest)], window=2).lookup([99])


def test_contact_sheet_captions_leave_the_width_to_the_images():
    images = np.zeros((3, 64, 64, 3), np.uint8)
    sheet = contact_sheet([images, images], ["before", "after"], ["id 1: a 0.10->0.90"] * 3, scale=2)
    assert 2 * 128 / sheet.width > 0.95  # images fill the width; captions sit above the rows
    assert sheet.height < 3 * (128 + 30)


ALPHAS = [-1.0, 0.0, 1.0, 2.0]


@pytest.fixture(scope="module")
def strip_job(judged_job, tmp_path_factory):
    """A job folder whose rows carry an ``alpha`` (one row per input row and alpha, written out of alpha
    order): z_edited = z * (1 + alpha), for the first 5 rows of the judged job's manifest."""
    job, z, _ = judged_job
    strip = tmp_path_factory.mktemp("strip") / "strip"
    (strip / "parts").mkdir(parents=True)
    (strip / "commits").mkdir()
    doc = json.loads((job / "job.json").read_text())
    doc["identity"]["direction"] = {"alphas": ALPHAS}  # what makes it a strip job (as --alphas records it)
    (strip / "job.json").write_text(json.dumps(doc))
    order = ALPHAS[::-1] * 5
    ids = [100 + i for i in range(5) for _ in ALPHAS]
    rows = {
        "id": pa.array(ids, pa.int64()),
        "alpha": pa.array(order, pa.float64()),
        "z_edited": pa.array([list(z[i - 100] * (1 + a)) for i, a in zip(ids, order, strict=True)]),
    }
    name = "part-000000-000000-000000-000.parquet"
    pq.write_table(pa.table(rows), strip / "parts" / name)
    marker = {"unit": "0:0:0", "parts": [name], "rejects": [], "rows": 5, "edited": 5, "rejected": 0}
    (strip / "commits" / "commit-000000-000000-000000.json").write_text(json.dumps(marker))
    return strip


def test_report_of_a_strip_job_has_one_entry_per_alpha(strip_job, judged_job, tmp_path):
    _, _, judge = judged_job
    got = report_job(
        open_job(strip_job), judge, ReportConfig(jobs=(strip_job,), judge=judge.path, out=tmp_path)
    )
    entries = got["targets"]
    assert [e["strip"] for e in entries] == [{"column": "alpha", "value": a} for a in ALPHAS]
    assert all(e["rows"] == 5 for e in entries)
    still = entries[ALPHAS.index(0.0)]  # alpha 0 is z itself: nothing moves
    assert still["latent_shift"] == 0 and not any(still["mean_abs_dp"].values())
    assert entries[ALPHAS.index(2.0)]["latent_shift"] > entries[ALPHAS.index(1.0)]["latent_shift"] > 0


def test_sheet_draws_strips_as_rows(strip_job, tmp_path):
    """One sheet row per input row: before, then its strip in alpha order."""
    out = job_sheet(SheetConfig(strip_job, tmp_path / "sheet.png", rows=3, scale=1))
    sheet = np.asarray(Image.open(out))
    pad = 2
    assert sheet.shape[1] == (1 + len(ALPHAS)) * (64 + pad) + pad  # before + one column per alpha
    band = 11 + 64 + pad
    assert sheet.shape[0] == 11 + pad + 3 * band + pad  # three strips (rows=3), not three output rows
    # The columns are in alpha order: alpha 0 is z itself, so its tile equals the "before" tile.
    y = 11 + pad + 11
    before = sheet[y : y + 64, pad : pad + 64]
    alpha0 = sheet[y : y + 64, pad + 2 * (64 + pad) : pad + 2 * (64 + pad) + 64]
    alpha1 = sheet[y : y + 64, pad + 3 * (64 + pad) : pad + 3 * (64 + pad) + 64]
    np.testing.assert_array_equal(before, alpha0)
    assert not np.array_equal(before, alpha1)


def test_cli_report_on_the_demo_models_defaults_to_the_demo_judge_and_shows_the_data_correlation(tmp_path):
    manifest = write_manifest(
        tmp_path / "m.parquet", {"id": np.arange(6, dtype=np.int64), "z": latents(6, z_dim=64)}
    )
    runner = CliRunner()
    edit = [
        "edit",
        "-m",
        str(manifest),
        "-o",
        str(tmp_path / "job"),
        "-t",
        "Smiling",
        "--steps",
        "2",
        "--lr",
        "0.5",
    ]
    assert runner.invoke(main, [*edit, "--normalize", "--images", "none"]).exit_code == 0
    result = runner.invoke(main, ["report", str(tmp_path / "job"), "-o", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["judge"]["path"].endswith("judge.safetensors")
    smiling, mouth = 0, 1  # the procedural data set plants MouthOpen with Smiling
    assert report["demo_correlation"]["data"][smiling][mouth] > 0.4
    assert "Attribute correlation" in (tmp_path / "r" / "report.md").read_text()


def test_an_alpha_column_without_a_strip_is_one_entry(strip_job, judged_job, tmp_path):
    """A direction job writes each row's alpha (--until-prob, --alpha): not a strip unless --alphas."""
    _, _, judge = judged_job
    plain = tmp_path / "plain"
    shutil.copytree(strip_job, plain)
    doc = json.loads((plain / "job.json").read_text())
    doc["identity"]["direction"] = {"until_prob": 0.9}
    (plain / "job.json").write_text(json.dumps(doc))
    got = report_job(open_job(plain), judge, ReportConfig(jobs=(plain,), judge=judge.path, out=tmp_path))
    assert len(got["targets"]) == 1 and got["targets"][0]["rows"] == 5 * len(ALPHAS)
    assert "strip" not in got["targets"][0]


def test_a_strip_renders_and_judges_each_input_rows_before_once(strip_job, judged_job, monkeypatch):
    """5 input rows x 4 alphas: 5 "before" renders and 20 "after" ones (was 20 and 20), the same bits."""
    from zsteer.jobs import report

    _, _, judge = judged_job
    rendered = []
    real = report.render_latents
    monkeypatch.setattr(
        report, "render_latents", lambda gen, z, labels: rendered.append(len(z)) or real(gen, z, labels)
    )
    (before, after, _, _), *more = report.judged_rows(open_job(strip_job), judge, batch=256)
    assert not more and rendered == [5, 20]
    assert before.shape == after.shape == (20, len(judge.attributes))
    still = np.asarray(pq.read_table(strip_job / "parts").column("alpha").to_pylist()) == 0.0
    np.testing.assert_array_equal(before[still], after[still])  # alpha 0 is z: the same bits either way


def test_a_label_to_interpolation_is_judged_at_each_frames_blended_class(tmp_path, judged_job):
    from zsteer.jobs.interpolate_method import InterpolateMethod
    from zsteer.jobs.report import judged_rows
    from zsteer.pipeline.checkpoints import load_generator
    from zsteer.pipeline.models import GeneratorSpec

    _, _, judge = judged_job
    gspec = GeneratorSpec(
        kind="course_conditional_generator", z_dim=TINY_GENERATOR.z_dim, n_classes=3, hidden_dim=4
    )
    models = write_models(tmp_path / "models", gspec, TINY_CLASSIFIER)
    z = latents(2, seed=7)
    manifest = write_manifest(
        tmp_path / "m.parquet", {"id": np.arange(2), "z": z, "label": [0, 2], "label_to": [1, 2]}
    )
    run_job(job_config(manifest, tmp_path / "job", models, targets=(), method=InterpolateMethod(frames=3)))
    (_, after, _, _), *more = judged_rows(open_job(tmp_path / "job"), judge, batch=256)
    assert not more and after.shape[0] == 6
    generator = load_generator(models[0])
    classes = torch.tensor(
        [[1.0, 0, 0], [0.5, 0.5, 0], [0, 1, 0]] + [[0, 0, 1.0]] * 3
    )  # row 1 stays in class 2
    frames = torch.from_numpy(
        np.asarray(
            pq.read_table(tmp_path / "job" / "parts")
            .sort_by([("id", "ascending"), ("frame", "ascending")])
            .column("z_edited")
            .to_pylist(),
            np.float32,
        )
    )
    with torch.no_grad():
        images = generator.module(torch.cat([frames, classes], dim=1))
        want = judge_probabilities(
            judge, ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        )
    np.testing.assert_array_equal(after, want)


def test_the_sheet_draws_an_image_less_label_to_frame_at_its_blended_class(tmp_path):
    from zsteer.jobs.interpolate_method import InterpolateMethod
    from zsteer.pipeline.checkpoints import load_generator
    from zsteer.pipeline.models import GeneratorSpec

    gspec = GeneratorSpec(
        kind="course_conditional_generator", z_dim=TINY_GENERATOR.z_dim, n_classes=3, hidden_dim=4
    )
    models = write_models(tmp_path / "models", gspec, TINY_CLASSIFIER)
    manifest = write_manifest(
        tmp_path / "m.parquet", {"id": np.arange(1), "z": latents(1, seed=7), "label": [0], "label_to": [1]}
    )
    run_job(job_config(manifest, tmp_path / "job", models, targets=(), method=InterpolateMethod(frames=3)))
    sheet = np.asarray(
        Image.open(job_sheet(SheetConfig(tmp_path / "job", tmp_path / "s.png", rows=1, scale=1)))
    )
    z = np.asarray(pq.read_table(tmp_path / "job" / "parts").column("z_edited").to_pylist(), np.float32)
    want = render_latents(load_generator(models[0]), z[1:2], np.array([[0.5, 0.5, 0.0]], np.float32))[0]
    size, pad, y = want.shape[0], 2, 11 + 2 + 11  # below the headers and the caption
    x = pad + 2 * (size + pad)  # before, frame 0, frame 1
    np.testing.assert_array_equal(sheet[y : y + size, x : x + size], want)
