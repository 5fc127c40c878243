"""Bad input to the commands is one line naming the flag, file or field and what was expected, exit 2 (or
`zsteer verify`'s exit 1 for a damaged folder); never a traceback. Each case here was a traceback or a
misleading line in a smoke test of the CLI on the demo models; all run in-process and before any model
work, but the import cases (a torch.export of a tiny module)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from zsteer.cli.main import main
from zsteer.core.errors import ZsteerError
from zsteer.demo import WEIGHTS_DIR
from zsteer.pipeline.attributes import load_attribute_names

pytestmark = pytest.mark.usefixtures("single_thread")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, *fragments: str, exit_code: int = 2) -> str:
    """Assert the exit code and a single stderr line holding every fragment; no traceback."""
    assert result.exit_code == exit_code, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.mark.parametrize(
    "args",
    [
        ("sample", "--n", 10, "--out", "s.parquet"),
        ("demo", "--n", 8, "--steps", 1, "--out", "runs/x"),
        ("bench", "--quick"),
        ("directions", "fit", "--method", "axis", "-o", "d"),
    ],
)
def test_a_negative_seed_is_refused_at_the_option(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(run(*args, "--seed", -1), "--seed", "-1 is not in the range x>=0")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("flag", "value", "field"), [("--penalty", "inf", "penalty must be >= 0"), ("--lr", "nan", "lr must be")]
)
def test_demo_refuses_what_the_ascent_config_refuses_as_edit_does(flag, value, field, tmp_path):
    out = tmp_path / "demo"
    one_line_error(run("demo", "--n", 8, "--steps", 1, flag, value, "--out", out), "invalid settings:", field)
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--tolerance", "nan"), "invalid settings: tolerance must be in (0, 1)"),
        (("--min-seconds", "inf"), "invalid settings: warmup_seconds and min_seconds must be finite"),
        (("--peak-seconds", "nan"), "peak_seconds finite and >= 0"),
    ],
)
def test_bench_refuses_what_its_run_control_refuses_in_one_line(args, message):
    """An infinite --min-seconds once ran until killed."""
    one_line_error(run("bench", "--quick", *args), message)


@pytest.mark.parametrize("sizes", ["0", "-1", "1,0", "two", ""])
def test_export_refuses_batch_sizes_that_are_not_positive(sizes, tmp_path):
    line = one_line_error(
        run("export", "--out", tmp_path / "onnx", f"--batch-sizes={sizes}"), "--batch-sizes:"
    )
    assert "expected a comma-separated list of positive integers" in line
    assert not (tmp_path / "onnx").exists()


@pytest.mark.parametrize(
    ("args", "got"),
    [
        (("--batch-size", "0"), "'0'"),
        (("--threads", "0"), "'0'"),
        (("--steps=-1",), "'-1'"),
        (("--batch-size", "8,x"), "'x'"),
    ],
)
def test_bench_says_in_words_what_its_integer_lists_take(args, got):
    line = one_line_error(
        run("bench", "--quick", *args), args[0].split("=")[0] + ": expected a comma-separated"
    )
    assert got in line and "_positive_int" not in line and "_steps" not in line
    assert ("integers >= 0" if "steps" in args[0] else "positive integers") in line


@pytest.mark.parametrize("name", ["s.txt", "noext", "sheet.parquet"])
def test_sheet_refuses_an_out_that_is_no_image_format_before_reading_the_job(name, tmp_path):
    job = tmp_path / "job"
    job.mkdir()  # no job.json: the --out is refused first, before any work
    line = one_line_error(run("sheet", job, "--out", tmp_path / name), f"--out {tmp_path / name}")
    assert "expected an image file name" in line and ".png" in line and ".jpg" in line
    assert "not a zsteer job folder" not in line


def test_sheet_takes_any_image_extension_pil_writes(tmp_path):
    line = one_line_error(run("sheet", tmp_path / "nojob", "--out", tmp_path / "s.JPG"))
    assert "not a zsteer job folder" in line


def test_verify_reports_an_unreadable_job_json_as_a_problem(tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    (job / "job.json").write_text("garbage\n")
    result = run("verify", job)
    assert result.exit_code == 1, result.output
    assert f"zsteer: bad: {job / 'job.json'}: unreadable" in result.stderr
    assert "all intact" not in result.stderr and "restore job.json" in result.stderr
    (job / "job.json").write_text("[1, 2]\n")
    result = run("verify", job)
    assert result.exit_code == 1 and "expected a JSON object, found list" in result.stderr


def test_report_names_a_path_that_is_no_job_folder_before_asking_for_a_judge(tmp_path):
    missing = tmp_path / "nonexist"
    one_line_error(run("report", missing, "--out", tmp_path / "rep"), f"{missing}: not a zsteer job folder")


def test_report_says_a_generator_given_as_judge_is_a_generator(tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    (job / "job.json").write_text("{}")  # not on the demo models: the --judge given is loaded
    generator = WEIGHTS_DIR / "generator.safetensors"
    line = one_line_error(
        run("report", job, "--judge", generator, "--out", tmp_path / "rep"), f"--judge {generator}"
    )
    assert "a generator, not a classifier" in line and "n_classes" not in line
    missing = tmp_path / "judge.safetensors"  # neither: the classifier's own error, not the generator's
    one_line_error(
        run("report", job, "--judge", missing, "--out", tmp_path / "rep"), f"{missing}: classifier checkpoint"
    )


@pytest.mark.parametrize("text", ["", "\n  \n", "[]"])
def test_an_attribute_file_without_names_is_refused_naming_it(text, tmp_path):
    path = tmp_path / ("names.json" if text.startswith("[") else "names.txt")
    path.write_text(text)
    with pytest.raises(ZsteerError, match=f"{path}: no attribute names"):
        load_attribute_names(str(path))
    one_line_error(
        run("edit", "--manifest", tmp_path / "m.parquet", "--out", tmp_path / "job", "--attributes", path),
        f"{path}: no attribute names",
    )


# ---- zsteer import: the user's code fails ---------------------------------------------------------------

NETS = """
import torch, torch.nn as nn


class Gen(nn.Module):
    def __init__(self):
        super().__init__()
        self.l = nn.Linear(16, 3 * 8 * 8)

    def forward(self, z):
        return torch.tanh(self.l(z)).view(-1, 3, 8, 8)


def broken():
    raise RuntimeError("boom")


class NaNGen(Gen):
    def forward(self, z):
        return super().forward(z) * float("nan")


class Branchy(Gen):  # data-dependent control flow: eager runs, torch.export cannot trace it
    def forward(self, z):
        return super().forward(z) if z.sum() > 0 else -super().forward(z)
"""


@pytest.fixture(scope="module")
def nets(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("nets")
    (folder / "zsteer_smoke_nets.py").write_text(NETS)
    return folder


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def _import(nets: Path, out: Path, attribute: str, z_dim: int = 16):
    args = ("import", "--module", f"zsteer_smoke_nets:{attribute}", "--kind", "generator", "--z-dim", z_dim)
    return run(*args, "--out", out, "--path", nets)


@pytest.mark.parametrize(
    ("attribute", "z_dim", "fragments"),
    [
        ("Gen", 17, ("--module zsteer_smoke_nets:Gen: forward", "RuntimeError", "(3x17 and 16x192)")),
        ("broken", 16, ("--module zsteer_smoke_nets:broken: building the module raised RuntimeError: boom",)),
        ("NaNGen", 16, ("--module zsteer_smoke_nets:NaNGen: forward gives 576 NaN or Inf value(s) of 576",)),
        ("Branchy", 16, ("torch.export could not trace Branchy", "data-dependent")),
    ],
)
def test_import_reports_the_users_failing_code_in_one_line(nets, tmp_path, attribute, z_dim, fragments):
    records = _Records()
    torch_logger = logging.getLogger("torch")
    torch_logger.addHandler(records)
    levels = {name: logging.getLogger(name).level for name in ("torch", "torch._subclasses.fake_tensor")}
    try:
        result = _import(nets, tmp_path / "g.pt2", attribute, z_dim)
    finally:
        torch_logger.removeHandler(records)
    line = one_line_error(result, *fragments)
    assert "differs from the eager module" not in line
    assert [r.getMessage() for r in records.records if r.levelno >= logging.WARNING] == []
    assert {name: logging.getLogger(name).level for name in levels} == levels  # set back after the attempt
    assert not (tmp_path / "g.pt2").exists()


def test_import_still_writes_a_module_that_works(nets, tmp_path):
    result = _import(nets, tmp_path / "g.pt2", "Gen")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "g.json").read_text())["source"] == "zsteer_smoke_nets:Gen"


def _bench_report(path: Path, **cell) -> Path:
    from zsteer.jobs.bench.config import BenchCell

    entry = {"cell": BenchCell(**cell).settings(), "result": {"latents_per_second": 10.0}}
    path.write_text(json.dumps({"format": "zsteer-bench/1", "cells": [entry]}))
    return path


@pytest.fixture
def no_bench_run(monkeypatch):
    """Refusals must come before any measuring: a run of the benchmark fails the test."""
    import zsteer.cli.bench

    def refuse(*args, **kwargs):
        raise AssertionError("the benchmark ran")

    monkeypatch.setattr(zsteer.cli.bench, "run_bench", refuse)


@pytest.mark.parametrize(
    ("flag", "target", "fragment"),
    [
        ("--json", "nodir/x.json", "the folder nodir does not exist"),
        ("--csv", "a/b/x.csv", "the folder a/b does not exist"),
        ("--markdown", "f.txt/x.md", "f.txt is a file, not a folder"),
    ],
)
def test_bench_refuses_a_report_path_whose_folder_is_missing_before_measuring(
    flag, target, fragment, tmp_path, monkeypatch, no_bench_run
):
    """--json nodir/x.json once ran the whole benchmark, then failed to write it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f.txt").write_text("")
    one_line_error(run("bench", "--quick", "--peak-seconds", 0, flag, target), f"{flag} {target}:", fragment)


def test_bench_refuses_a_baseline_no_cell_of_the_run_matches(tmp_path, no_bench_run):
    """A gate that compared nothing used to say 'no cell slower' and pass."""
    baseline = _bench_report(tmp_path / "b1.json", mode="job", batch_size=8, steps=1, threads=1)
    line = one_line_error(
        run("bench", "--quick", "--batch-size", 8, "--steps", 1, "--threads", 1, "--baseline", baseline),
        f"--baseline {baseline}: none of its 1 cell(s)",
    )
    assert "nothing would be compared" in line


@pytest.mark.parametrize("flag", ["--json", "--csv", "--markdown", "--baseline"])
def test_bench_compare_refuses_the_flags_it_would_ignore(flag, tmp_path):
    a = _bench_report(tmp_path / "a.json")
    one_line_error(run("bench", "--compare", a, a, flag, a), "--compare", f"{flag} cannot go with it")
