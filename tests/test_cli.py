"""The `zsteer` command line: `sample` determinism, and every user error as one line with exit code 2."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from jobkit import Z_DIM, latents, read_parts, write_manifest

from zsteer.cli.main import main

pytestmark = pytest.mark.usefixtures("single_thread")


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, *fragments: str) -> str:
    """Assert exit code 2 and a single stderr line holding every fragment; no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in result.output
    return lines[0]


def test_sample_is_deterministic_and_independent_of_row_group_size(tmp_path):
    tables = {}
    for name, extra in (("a", ["--row-group-size", 7]), ("b", []), ("c", ["--row-group-size", 1000])):
        result = run(
            "sample",
            "--n",
            300,
            "--seed",
            5,
            "--z-dim",
            16,
            "--labels",
            3,
            "--out",
            tmp_path / f"{name}.parquet",
            *extra,
        )
        assert result.exit_code == 0, result.output
        tables[name] = pq.read_table(tmp_path / f"{name}.parquet")
    assert pq.ParquetFile(tmp_path / "a.parquet").metadata.num_row_groups == 43
    assert tables["a"].equals(tables["b"]) and tables["a"].equals(tables["c"])
    t = tables["a"]
    assert t.schema.field("z").type == pa.list_(pa.float32(), 16) and t.schema.field("id").type == pa.int64()
    assert t.column("id").to_pylist() == list(range(300))
    assert set(t.column("label").to_pylist()) == {0, 1, 2}
    z = t.column("z").combine_chunks().flatten().to_numpy()
    assert abs(z.mean()) < 0.05 and abs(z.std() - 1) < 0.05
    other = run("sample", "--n", 300, "--seed", 6, "--z-dim", 16, "--out", tmp_path / "d.parquet")
    assert other.exit_code == 0
    assert not np.array_equal(
        pq.read_table(tmp_path / "d.parquet").column("z").combine_chunks().flatten().to_numpy(), z
    )


def test_sample_then_edit(tmp_path, job_models):
    manifest = tmp_path / "m.parquet"
    assert (
        run("sample", "--n", 40, "--z-dim", Z_DIM, "--out", manifest, "--row-group-size", 16).exit_code == 0
    )
    result = run(
        "edit", "-m", manifest, "--generator", job_models[0], "--classifier", job_models[1], "-t", "attr1", "-t", "attr2=-0.5",
        "--preserve", "attr0,attr3", "--steps", 2, "--lr", 0.3, "--batch-size", 8, "--images", "none",
        "--out", tmp_path / "job",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "done: 40 rows: 40 edited, 0 rejected" in result.stderr
    assert read_parts(tmp_path / "job").num_rows == 40


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    """One file per whole-file fault."""
    d = tmp_path_factory.mktemp("bad")
    good = write_manifest(d / "good.parquet", {"id": np.arange(20), "z": latents(20)})
    (d / "text.parquet").write_text("id,z\n1,2\n")
    (d / "empty.parquet").write_bytes(b"")
    data = good.read_bytes()
    (d / "truncated.parquet").write_bytes(data[: len(data) // 2])
    write_manifest(d / "noz.parquet", {"id": np.arange(3), "latent": latents(3)})
    write_manifest(d / "norows.parquet", {"id": np.arange(0), "z": latents(0)})
    write_manifest(d / "short.parquet", {"id": np.arange(3), "z": latents(3, z_dim=4)})
    write_manifest(d / "floatid.parquet", {"id": np.arange(3.0), "z": latents(3)})
    write_manifest(d / "strz.parquet", {"id": np.arange(2), "z": [["a"], ["b"]]})
    write_manifest(d / "clash.parquet", {"id": np.arange(2), "z": latents(2), "image": ["a", "b"]})
    return d


@pytest.mark.parametrize(
    "name, fragments",
    [
        ("text", ["text.parquet", "not a readable Parquet file"]),
        ("empty", ["empty.parquet", "empty file (0 bytes)"]),
        ("truncated", ["truncated.parquet", "not a readable Parquet file"]),
        ("noz", ["noz.parquet", "no column 'z'"]),
        ("norows", ["norows.parquet", "has no rows"]),
        ("short", ["short.parquet", "4 values per row", "z_dim=8"]),
        ("floatid", ["floatid.parquet", "column 'id' must be int64 or string, found double"]),
        ("strz", ["strz.parquet", "column 'z' must be a list of float32 or float64"]),
        ("clash", ["clash.parquet", "'image' has the name of an output column"]),
    ],
)
def test_whole_file_faults_are_one_line_errors(tmp_path, job_models, bad_files, name, fragments):
    out = tmp_path / "job"
    result = run(
        "edit",
        "-m",
        bad_files / f"{name}.parquet",
        "--generator",
        job_models[0],
        "--classifier",
        job_models[1],
        "-t",
        "attr1",
        "--out",
        out,
    )
    one_line_error(result, *fragments)
    assert not (out / "parts").exists() or not any((out / "parts").iterdir())


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["-t", "Atr1"], ["--target 'Atr1'", "did you mean attr1"]),
        (["-t", "attr1=lots"], ["weight 'lots' is not a number"]),
        (["-t", "attr1=0"], ["every weight is 0"]),
        ([], ["--target: give at least one attribute"]),
        (["-t", "attr1", "--preserve", "attr9"], ["--preserve 'attr9'", "unknown attribute"]),
        (["-t", "attr1", "--steps", "-1"], ["--steps", "-1"]),
        (
            ["-t", "attr1", "--targett", "x"],
            ["zsteer edit: error: No such option '--targett'", "Did you mean '--target'"],
        ),
        (["-t", "attr1", "--images", "jpg"], ["--images", "jpg"]),
        (["-t", "attr1", "--device", "tpu:0"], ["--device tpu:0"]),
        (["-t", "attr1", "--z-dim", "9"], ["generator", "z_dim"]),
    ],
)
def test_flag_errors_are_one_line(tmp_path, job_models, bad_files, args, fragments):
    base = [
        "edit",
        "-m",
        bad_files / "good.parquet",
        "--generator",
        job_models[0],
        "--classifier",
        job_models[1],
    ]
    one_line_error(run(*base, *args, "--out", tmp_path / "job"), *fragments)


def test_missing_inputs_are_one_line_errors(tmp_path, job_models):
    models_args = [
        "--generator",
        job_models[0],
        "--classifier",
        job_models[1],
        "-t",
        "attr1",
        "--out",
        tmp_path / "job",
    ]
    one_line_error(run("edit", "-m", tmp_path / "nope.parquet", *models_args), "nope.parquet", "no such file")
    one_line_error(run("edit", "-m", str(tmp_path / "*.parquet"), *models_args), "matches no files")
    one_line_error(run("edit", "-m", "x.parquet", "-t", "attr1"), "Missing option '--out'")
    write_manifest(tmp_path / "m.parquet", {"id": np.arange(2), "z": latents(2)})
    one_line_error(
        run("edit", "-m", tmp_path / "m.parquet", "--generator", tmp_path / "g.safetensors", "--classifier", job_models[1], "-t", "a", "--out", tmp_path / "j"),
        "g.safetensors", "not found",
    )  # fmt: skip


def test_a_locked_job_folder_is_a_one_line_error(tmp_path, job_models):
    from zsteer.jobs.lock import FolderLock

    write_manifest(tmp_path / "m.parquet", {"id": np.arange(2), "z": latents(2)})
    with FolderLock(tmp_path / "job"):
        result = run(
            "edit", "-m", tmp_path / "m.parquet", "--generator", job_models[0], "--classifier", job_models[1], "-t", "attr1",
            "--out", tmp_path / "job",
        )  # fmt: skip
    one_line_error(result, "another zsteer run", f"(pid {os.getpid()})")


def test_demo_models_missing_is_a_clear_error(tmp_path, monkeypatch):
    import zsteer.demo

    monkeypatch.setattr(
        zsteer.demo,
        "demo_paths",
        lambda: {"generator": tmp_path / "g", "classifier": tmp_path / "c"},
        raising=False,
    )
    write_manifest(tmp_path / "m.parquet", {"id": np.arange(2), "z": latents(2)})
    one_line_error(
        run("edit", "-m", tmp_path / "m.parquet", "-t", "Smiling", "--out", tmp_path / "job"),
        "no --generator given",
        "demo",
    )
    monkeypatch.delattr(zsteer.demo, "demo_paths")
    one_line_error(
        run("edit", "-m", tmp_path / "m.parquet", "-t", "Smiling", "--out", tmp_path / "job"),
        "demo models are not available",
    )


def test_help_lists_the_commands_and_the_job(tmp_path):
    result = run("--help")
    assert result.exit_code == 0 and "edit" in result.output and "sample" in result.output
    result = run("edit", "--help")
    assert result.exit_code == 0
    for flag in (
        "--gen-hidden-dim",
        "--cls-hidden-dim",
        "--rows-per-shard",
        "--workers",
        "--lab-batch",
        "resumes",
    ):
        assert flag in result.output


# -- errors found before the job starts, and the OS-error backstop -----------------------------------


def _edit_args(manifest, job_models, out, *extra):
    return ["edit", "-m", manifest, "--generator", job_models[0], "--classifier", job_models[1], "-t", "attr1",
            "--steps", 2, "--images", "none", "--workers", 0, *extra, "--out", out]  # fmt: skip


def test_impl_triton_without_cuda_is_refused_before_the_job_starts(
    tmp_path, job_models, bad_files, monkeypatch
):
    import zsteer.cli.edit

    manifest = bad_files / "good.parquet"
    result = run(*_edit_args(manifest, job_models, tmp_path / "job", "--impl", "triton", "--device", "cpu"))
    one_line_error(result, "--impl triton: needs a CUDA device and triton installed", "--device cpu")
    assert not (tmp_path / "job").exists()
    monkeypatch.setattr(zsteer.cli.edit, "triton_available", lambda: False)
    result = run(*_edit_args(manifest, job_models, tmp_path / "job", "--impl", "triton", "--device", "cuda"))
    one_line_error(result, "--impl triton", "triton not installed")
    assert not (tmp_path / "job").exists()


def test_bad_model_files_are_one_line_errors(tmp_path, job_models, bad_files):
    import pickle

    from zsteer.pipeline.models import CourseGenerator

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"gen": Evil()}))
    common = ["-m", bad_files / "good.parquet", "--classifier", job_models[1], "-t", "attr1"]
    result = run("edit", *common, "--generator", tmp_path / "evil.pth", "--out", tmp_path / "j1")
    one_line_error(result, "evil.pth: refused", "could run code")
    assert not marker.exists()  # the refusal came before anything in the file ran

    import torch

    torch.save({"gen": CourseGenerator(8, 3, 4).state_dict()}, tmp_path / "small.pth")
    result = run(
        "edit", *common, "--generator", tmp_path / "small.pth", "--z-dim", 9, "--gen-hidden-dim", 4,
        "--out", tmp_path / "j2",
    )  # fmt: skip
    one_line_error(result, "small.pth", "--z-dim 9 contradicts the file", "takes 8 inputs")

    odd = tmp_path / "odd"
    shutil.copytree(job_models[0].parent, odd)
    config = json.loads((odd / "generator.json").read_text())
    (odd / "generator.json").write_text(json.dumps({**config, "z_dim": "8"}))
    result = run("edit", *common, "--generator", odd / "generator.safetensors", "--out", tmp_path / "j3")
    one_line_error(result, "generator.json", "field 'z_dim' must be a positive integer")
    (odd / "generator.json").write_text("[1, 2]")
    result = run("edit", *common, "--generator", odd / "generator.safetensors", "--out", tmp_path / "j3")
    one_line_error(result, "generator.json", "expected a JSON object", "found list")
    (odd / "generator.json").write_bytes(b'{"kind": "caf\xe9"}')
    result = run("edit", *common, "--generator", odd / "generator.safetensors", "--out", tmp_path / "j3")
    one_line_error(result, "generator.json", "not UTF-8 text")
    assert not any((tmp_path / name).exists() for name in ("j1", "j2", "j3"))


def test_an_attributes_file_that_is_not_utf8_is_a_one_line_error(tmp_path, job_models, bad_files):
    names = tmp_path / "names.txt"
    names.write_bytes(b"attr0\nattr\xe91\nattr2\nattr3\nattr4\n")
    result = run(*_edit_args(bad_files / "good.parquet", job_models, tmp_path / "job", "--attributes", names))
    one_line_error(result, "names.txt", "not UTF-8 text")


@pytest.mark.parametrize("command", ["sample", "edit", "sheet", "demo"])
def test_an_output_below_a_file_is_a_one_line_error(tmp_path, job_models, bad_files, command):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("not a folder")
    out = (
        blocker
        / "sub"
        / ("out.parquet" if command == "sample" else "out.png" if command == "sheet" else "out")
    )
    args = {
        "sample": ["sample", "--n", 3, "--out", out],
        "edit": _edit_args(bad_files / "good.parquet", job_models, out),
        "sheet": ["sheet", tmp_path, "--out", out],
        "demo": ["demo", "--out", out],
    }[command]
    one_line_error(run(*args), f"--out {out}: {blocker} is a file, not a folder")


def test_an_os_error_mid_job_is_one_line_naming_the_file(tmp_path, job_models, bad_files, monkeypatch):
    import errno

    from zsteer.jobs.folder import JobFolder

    def full_disk(self, doc):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.job_json))

    monkeypatch.setattr(JobFolder, "write_job", full_disk)
    result = run(*_edit_args(bad_files / "good.parquet", job_models, tmp_path / "job"))
    one_line_error(result, f"zsteer: error: {tmp_path / 'job' / 'job.json'}: No space left on device")


# -- zsteer sheet ------------------------------------------------------------------------------------


def _png_job(folder, job_models, n: int = 6):
    """A finished job with PNG images over a manifest of ``n`` rows in ``folder``; (manifest, job)."""
    manifest = write_manifest(folder / "m.parquet", {"id": np.arange(n), "z": latents(n)})
    job = folder / "job"
    result = run(*_edit_args(manifest, job_models, job, "--images", "png"))
    assert result.exit_code == 0, result.output
    return manifest, job


@pytest.fixture(scope="module")
def png_job(tmp_path_factory, job_models):
    return _png_job(tmp_path_factory.mktemp("png_job"), job_models)[1]


def test_sheet_draws_before_and_after(tmp_path, png_job):
    from PIL import Image

    heights = {}
    for rows in (2, 4):
        out = tmp_path / f"s{rows}.png"
        result = run("sheet", png_job, "--out", out, "--rows", rows, "--scale", 1)
        assert result.exit_code == 0, result.output
        assert f"wrote {out}" in result.stderr
        image = Image.open(out)
        assert image.width >= 2 * 64 and image.height >= rows * 64  # before and after, one row a latent
        heights[rows] = image.height
    assert heights[4] > heights[2]


def test_sheet_after_the_manifest_moved_is_a_one_line_error(tmp_path, job_models):
    manifest, job = _png_job(tmp_path, job_models)
    manifest.rename(tmp_path / "elsewhere.parquet")
    result = run("sheet", job, "--out", tmp_path / "s.png")
    one_line_error(result, f"{manifest}: the job's manifest is not there (moved or deleted)")
    (tmp_path / "elsewhere.parquet").rename(manifest)
    write_manifest(manifest, {"id": np.arange(7), "z": latents(7)})  # rewritten in place
    one_line_error(run("sheet", job, "--out", tmp_path / "s.png"), f"{manifest}: the job's manifest changed")
    assert not (tmp_path / "s.png").exists()


@pytest.mark.parametrize(
    "damage, fragments",
    [
        (lambda doc: doc.pop("identity"), ["'identity.generator.spec'", "expected a dict"]),
        (lambda doc: doc["runtime"].pop("generator_path"), ["'runtime.generator_path'", "expected a str"]),
        (lambda doc: doc["identity"]["generator"].pop("fingerprint"), ["'identity.generator.fingerprint'"]),
        (lambda doc: doc["identity"].update(targets="attr1"), ["'identity.targets'", "expected a list"]),
        (lambda doc: doc["identity"].update(targets=[["attr1"]]), ["'identity.targets'", "[name, weight]"]),
    ],
)
def test_sheet_of_a_damaged_job_json_is_a_one_line_error(tmp_path, png_job, damage, fragments):
    job = tmp_path / "job"
    shutil.copytree(png_job, job)
    doc = json.loads((job / "job.json").read_text())
    damage(doc)
    (job / "job.json").write_text(json.dumps(doc))
    one_line_error(run("sheet", job, "--out", tmp_path / "s.png"), str(job / "job.json"), *fragments)


# -- --lab-compat and --stop-at-prob through the command line --------------------------------------


def test_lab_compat_flags_reach_the_engine(tmp_path, job_models, bad_files):
    from jobkit import job_config

    from zsteer.jobs.runner import run_job

    manifest = bad_files / "good.parquet"
    lab = ["--lab-compat", "--lab-batch", 4, "--steps", 3]
    assert run(*_edit_args(manifest, job_models, tmp_path / "cli", *lab)).exit_code == 0
    ascent = json.loads((tmp_path / "cli" / "job.json").read_text())["identity"]["ascent"]
    assert ascent["lab_compat"] is True and ascent["lab_batch"] == 4 and ascent["lr"] is None  # 1/steps
    library = {"steps": 3, "lr": None, "penalty": 0.1, "lab_compat": True, "lab_batch": 4}
    run_job(job_config([manifest], tmp_path / "lib", job_models, ascent=library))
    clean = run(*_edit_args(manifest, job_models, tmp_path / "clean", "--steps", 3, "--lr", 1 / 3))
    assert clean.exit_code == 0
    z = {
        name: read_parts(tmp_path / name).sort_by("id").column("z_edited").to_pylist()
        for name in ("cli", "lib", "clean")
    }
    np.testing.assert_allclose(z["cli"], z["lib"], rtol=0, atol=1e-6)
    # The notebook's 1/n scaling and accumulated gradients move z differently from clean mode.
    assert np.abs(np.asarray(z["cli"]) - np.asarray(z["clean"])).max() > 1e-3


def test_stop_at_prob_stops_rows_once_the_target_passes_it(tmp_path, job_models):
    manifest = write_manifest(tmp_path / "m.parquet", {"id": np.arange(32), "z": latents(32)})
    args = _edit_args(
        manifest, job_models, tmp_path / "job", "--steps", 6, "--lr", 0.5, "--stop-at-prob", 0.8
    )
    assert run(*args).exit_code == 0
    parts = read_parts(tmp_path / "job").to_pydict()
    prob = 1 / (1 + np.exp(-np.asarray(parts["logits_after"])[:, 1]))  # attr1, the target
    reached = np.asarray(parts["stop_reason"]) == "target_reached"
    steps = np.asarray(parts["steps_taken"])
    assert 0 < reached.sum() < 32  # some rows stop early, some run every step (picked on these models)
    assert (prob[reached] >= 0.8).all() and (steps[reached] < 6).any()
    assert (steps[~reached] == 6).all()  # only the target stops a row early (its last step may pass P)


def test_unit_rows_cuts_row_groups_into_units_and_is_fixed_for_the_job(tmp_path, job_models):
    """--unit-rows: a 40-row row group in units of 16 rows commits 3 units; a resume with another value
    would cut the row groups differently, so it is refused."""
    manifest = tmp_path / "m.parquet"
    assert run("sample", "--n", 40, "--z-dim", Z_DIM, "--out", manifest).exit_code == 0
    out = tmp_path / "job"
    result = run(*_edit_args(manifest, job_models, out, "--unit-rows", 16))
    assert result.exit_code == 0, result.output
    units = [json.loads(p.read_text())["unit"] for p in (out / "commits").glob("commit-*.json")]
    assert len(units) == len(set(units)) == 3
    assert read_parts(out).num_rows == 40
    one_line_error(run(*_edit_args(manifest, job_models, out, "--unit-rows", 8)), "unit_rows")


def test_a_job_json_that_is_not_utf8_is_a_one_line_error(tmp_path, job_models):
    manifest = tmp_path / "m.parquet"
    assert run("sample", "--n", 8, "--z-dim", Z_DIM, "--out", manifest).exit_code == 0
    out = tmp_path / "job"
    out.mkdir()
    (out / "job.json").write_bytes(b'{"version": "\xff"}')
    one_line_error(run(*_edit_args(manifest, job_models, out)), "job.json", "unreadable")


@pytest.mark.parametrize(
    "content, fragments",
    [(b"[1, 2]", ["expected a JSON object, found list"]), (b'{"v": "\xff"}', ["unreadable"])],
)
def test_a_job_json_of_the_wrong_kind_is_a_one_line_error_for_edit_and_sheet(
    tmp_path, job_models, content, fragments
):
    manifest = tmp_path / "m.parquet"
    assert run("sample", "--n", 8, "--z-dim", Z_DIM, "--out", manifest).exit_code == 0
    out = tmp_path / "job"
    out.mkdir()
    (out / "job.json").write_bytes(content)
    edit_error = one_line_error(run(*_edit_args(manifest, job_models, out)), "job.json", *fragments)
    assert "choose another --out" in edit_error
    sheet_error = one_line_error(run("sheet", out, "--out", tmp_path / "s.png"), "job.json", *fragments)
    assert "--out" not in sheet_error


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (("-t", "attr1=nan"), "weight 'nan' must be a finite number"),
        (("-t", "attr1=inf"), "weight 'inf' must be a finite number"),
        (("-t", "attr1=1e39"), "weight '1e39' must be a finite number"),
        (("-t", "attr1", "--steps", "3000000000"), "--steps"),
    ],
)
def test_targets_and_steps_that_would_overflow_are_refused_in_one_line(tmp_path, job_models, flags, fragment):
    manifest = tmp_path / "m.parquet"
    assert run("sample", "--n", 4, "--z-dim", Z_DIM, "--out", manifest).exit_code == 0
    args = ["edit", "-m", manifest, "--generator", job_models[0], "--classifier", job_models[1], *flags]
    one_line_error(run(*args, "--out", tmp_path / "job"), fragment)
    assert not (tmp_path / "job" / "parts").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--method", "direction", "--max-shift", "0.1"), "--max-shift: not an option of --method direction"),
        (("--method", "interpolate", "--penalty", "5"), "--penalty: not an option of --method interpolate"),
        (("--method", "direction", "--steps", "10"), "--steps: not an option of --method direction"),
        (("--method", "interpolate", "--no-normalize"), "--normalize: not an option of --method interpolate"),
        (("--lab-batch", "4"), "--lab-batch: only with --lab-compat"),
        (("--frames", "3"), "--frames: not an option of --method ascent"),
        (("--method", "direction", "--path", "slerp"), "--path: not an option of --method direction"),
        (("--method", "interpolate", "--alpha", "2"), "--alpha: not an option of --method interpolate"),
    ],
)
def test_a_methods_flags_are_refused_with_another_method(args, message, tmp_path):
    """A --max-shift given with a direction edit once capped nothing, silently (even at its default value,
    a flag the user typed is refused: the user meant something by it); so is any method's flag with
    another method."""
    out = tmp_path / "job"
    one_line_error(run("edit", "-m", str(tmp_path / "m.parquet"), "-o", str(out), *args), message)
    assert not out.exists()
