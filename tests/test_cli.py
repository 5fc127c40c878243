"""The `zsteer` command line: `sample` determinism, and every user error as one line with exit code 2."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from jobkit import Z_DIM, latents, one_thread, read_parts, tiny_models, write_manifest

from zsteer.jobs.cli import main


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory.mktemp("models"))


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


def test_sample_then_edit(tmp_path, models):
    manifest = tmp_path / "m.parquet"
    assert (
        run("sample", "--n", 40, "--z-dim", Z_DIM, "--out", manifest, "--row-group-size", 16).exit_code == 0
    )
    result = run(
        "edit", "-m", manifest, "--generator", models[0], "--classifier", models[1], "-t", "attr1", "-t", "attr2=-0.5",
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
def test_whole_file_faults_are_one_line_errors(tmp_path, models, bad_files, name, fragments):
    out = tmp_path / "job"
    result = run(
        "edit",
        "-m",
        bad_files / f"{name}.parquet",
        "--generator",
        models[0],
        "--classifier",
        models[1],
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
def test_flag_errors_are_one_line(tmp_path, models, bad_files, args, fragments):
    base = ["edit", "-m", bad_files / "good.parquet", "--generator", models[0], "--classifier", models[1]]
    one_line_error(run(*base, *args, "--out", tmp_path / "job"), *fragments)


def test_missing_inputs_are_one_line_errors(tmp_path, models):
    models_args = [
        "--generator",
        models[0],
        "--classifier",
        models[1],
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
        run("edit", "-m", tmp_path / "m.parquet", "--generator", tmp_path / "g.safetensors", "--classifier", models[1], "-t", "a", "--out", tmp_path / "j"),
        "g.safetensors", "not found",
    )  # fmt: skip


def test_a_locked_job_folder_is_a_one_line_error(tmp_path, models):
    from zsteer.jobs.lock import FolderLock

    write_manifest(tmp_path / "m.parquet", {"id": np.arange(2), "z": latents(2)})
    with FolderLock(tmp_path / "job"):
        result = run(
            "edit", "-m", tmp_path / "m.parquet", "--generator", models[0], "--classifier", models[1], "-t", "attr1",
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
