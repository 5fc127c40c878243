"""`zsteer bench`: the timing core's statistics and stability rule (fake clocks: no timing is asserted),
the stage timer, a run of every mode on tiny models, the report formats, the baseline gate and compare."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest
import torch
from click.testing import CliRunner
from test_methods import IdentityMethod

from zsteer.core.errors import ZsteerError
from zsteer.jobs.bench.config import BenchCell, BenchConfig, RunControl, matrix
from zsteer.jobs.bench.report import (
    cell_key,
    compare,
    flat_rows,
    markdown,
    read_report,
    regressions,
    shared_cells,
    table,
    to_csv,
    write_json,
)
from zsteer.jobs.bench.roofline import matmul_peak
from zsteer.jobs.bench.run import run_bench
from zsteer.jobs.bench.stages import StageTimer, instrument
from zsteer.jobs.bench.timing import Meter, measure, measure_interleaved, percentiles, windows_agree
from zsteer.jobs.method import register_method, unregister_method
from zsteer.pipeline.config import AscentConfig, EngineConfig
from zsteer.pipeline.engine import make_engine
from zsteer.pipeline.loading import ModelSource, load_models

pytestmark = pytest.mark.usefixtures("single_thread")
# As short as a run can be: one iteration per window, one window (the statistics are tested apart).
TINY = RunControl(warmup_seconds=0, min_seconds=0, min_iterations=2, agree=1, max_windows=1)


class ScriptedClock:
    """A clock whose calls take the scripted seconds, in order (the last one repeats)."""

    def __init__(self, durations):
        self.durations, self.calls = list(durations), 0

    def time(self, fn) -> float:
        fn()
        self.calls += 1
        return self.durations[min(self.calls, len(self.durations)) - 1]


def test_percentiles_and_the_stability_rule():
    p = percentiles(range(1, 101))
    assert p["min"] == 1 and p["median"] == 50.5 and p["p90"] == pytest.approx(90.1)
    assert p["p99"] == pytest.approx(99.01) and p["p95"] == pytest.approx(95.05)
    assert all(math.isnan(v) for v in percentiles([]).values())
    assert windows_agree([50, 100, 100, 105, 96], 0.10, 3)
    assert not windows_agree([100, 100, 80], 0.10, 3)  # 80 is 13% under the mean of 93.3
    assert not windows_agree([100, 100], 0.10, 3)  # too few windows


def test_measure_times_the_first_call_apart_warms_up_and_stops_when_three_windows_agree():
    # first call 5 s (a compile), warm-up 2 calls of 1 s, then windows of 2 calls: 1 s, 0.5 s, 0.5 s, ...
    clock = ScriptedClock([5.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    prepared = []
    control = RunControl(warmup_seconds=2.0, min_seconds=1.0, min_iterations=2, max_windows=8)
    m = measure(lambda: None, 10, control, clock, prepare=lambda: prepared.append(1))
    assert m.first_call_seconds == 5.0 and m.warmup_iterations == 2
    assert m.stable and m.window_rates == [10.0, 20.0, 20.0, 20.0]  # 2 calls x 10 units / window seconds
    assert m.throughput == 20.0 and m.iterations == 6  # the last three windows only
    assert m.latency()["median"] == 0.5
    assert len(prepared) == clock.calls  # prepare runs before every call, untimed


def test_measure_reports_a_cell_unstable_after_max_windows_and_keeps_windows_long_enough():
    clock = ScriptedClock([1.0] + [1.0, 2.0] * 20)  # windows alternate between 1 s and 2 s calls
    control = RunControl(warmup_seconds=0, min_seconds=0, min_iterations=1, max_windows=5)
    m = measure(lambda: None, 4, control, clock)
    assert not m.stable and len(m.windows) == 5
    long = measure(lambda: None, 1, RunControl(warmup_seconds=0, min_seconds=3.0, min_iterations=1),
                   ScriptedClock([1.0]))  # fmt: skip
    assert all(len(w.latencies) == 3 for w in long.windows)  # min_seconds, not min_iterations, bound


def test_interleaved_meters_take_turns_and_each_keeps_its_own_rule():
    calls = []
    control = RunControl(warmup_seconds=0, min_seconds=0, min_iterations=1, max_windows=4)
    meters = {
        "steady": Meter(lambda: calls.append("s"), 1, control, ScriptedClock([1.0])),
        "noisy": Meter(lambda: calls.append("n"), 1, control, ScriptedClock([1.0] + [1.0, 3.0] * 4)),
    }
    found = measure_interleaved(meters)
    assert calls == ["s", "n"] + ["s", "n"] * 3 + ["n"]  # first calls, then one window each in turn
    assert found["steady"].stable and len(found["steady"].windows) == 3
    assert not found["noisy"].stable and len(found["noisy"].windows) == 4


def test_stage_timer_is_exclusive_and_instrument_puts_the_engine_back(unit_gain_models):
    ticks = iter(range(100))
    timer = StageTimer(clock=lambda: float(next(ticks)))
    # The fake clock ticks once per read: update runs 0..5, input_gradient 1..4, generator_forward 2..3.
    with timer.stage("update"), timer.stage("input_gradient"), timer.stage("generator_forward"):
        pass
    assert dict(timer.seconds) == {"generator_forward": 1.0, "input_gradient": 2.0, "update": 2.0}

    gen, cls = unit_gain_models
    engine = make_engine(gen, cls, AscentConfig(steps=2), EngineConfig(batch_size=4, compile="off"))
    z = torch.randn(4, gen.spec.z_dim)
    w = torch.zeros(4, len(cls.attributes))
    w[:, 0] = 1
    before = engine.edit(z, w, (w == 0).float(), render=True)
    timer, step = StageTimer(), engine._step
    with instrument(engine, timer):
        during = engine.edit(z, w, (w == 0).float(), render=True)
    expected = {"update", "input_gradient", "generator_forward", "classifier_forward", "render"}
    assert set(timer.seconds) == expected and all(v > 0 for v in timer.seconds.values())
    assert not {"step_rows", "forward"} & set(vars(engine)) and engine._step is step  # as they were
    assert not {"generate", "classify"} & set(vars(engine.net))
    assert torch.equal(before.z_edited, during.z_edited)  # timing changes nothing


def test_matmul_peak_is_the_best_shape():
    peak = matmul_peak("cpu", torch.float32, 0.0, shapes=((32, 32, 32), (64, 64, 64)))
    assert peak["gflops"] > 0 and peak["shape"] in ([32, 32, 32], [64, 64, 64]) and peak["dtype"] == "float32"


@pytest.fixture(scope="module")
def report(job_models):
    """One run over every mode, both image settings and two batch sizes, on the tiny job models."""
    cells = matrix(
        mode=("engine", "job"), batch_size=(4, 8), images=("none", "png"), steps=(2,), threads=(1,)
    )
    config = BenchConfig(
        cells=cells, models=ModelSource(*job_models), control=TINY, job_rows=12, workers=0, peak_seconds=0,
        stage_iterations=1,
    )  # fmt: skip
    messages = []
    doc = run_bench(config, messages.append)
    assert sum(m.endswith(": done") for m in messages) == len(cells)
    return doc


def test_every_cell_of_the_matrix_is_measured(report):
    cells = report["cells"]
    assert len(cells) == 8 and all("error" not in c["result"] for c in cells), cells
    for entry in cells:
        cell, r = entry["cell"], entry["result"]
        assert r["latents_per_second"] > 0 and r["iterations"] == 2
        assert r["images_per_second"] == (r["latents_per_second"] if cell["images"] == "png" else 0)
        assert set(r["batch_latency_ms"]) == {"min", "median", "p90", "p95", "p99"}
        assert r["flops_per_latent"] > 0 and r["peak_rss_mb"] > 0 and r["threads"] == 1
        stages = set(r["stage_ms_per_batch"])
        if cell["mode"] == "engine":
            want = {"host_to_device", "generator_forward", "classifier_forward", "input_gradient", "update",
                    "render", "parquet_write"} | ({"png_encode"} if cell["images"] == "png" else set())  # fmt: skip
            assert stages == want and r["setup_seconds"] >= 0
        else:
            assert stages == {"read", "compute", "png_encode", "parquet_write"} and r["job_rows"] == 12
    flops = {e["result"]["flops_per_latent"] for e in cells}
    assert len(flops) == 1  # FLOPs per latent depend on the models and steps, not the batch or mode
    assert report["settings"]["seed"] == 0 and report["environment"]["versions"]["torch"] == torch.__version__


def test_json_csv_and_markdown_hold_every_cell_and_setting(report, tmp_path):
    path = write_json(report, tmp_path / "r.json")
    assert read_report(path) == json.loads(json.dumps(report))
    rows = list(csv.DictReader(io.StringIO(to_csv(report))))
    flat = flat_rows(report)
    assert len(rows) == len(flat) == 8
    for got, want in zip(rows, flat, strict=True):
        assert got == {k: "" if v is None else str(v) for k, v in want.items()}
    assert {"version_torch", "cpu", "seed", "control_min_seconds", "threads", "device_name"} <= set(rows[0])
    md = markdown(report).splitlines()
    assert (
        md[0].startswith("| mode | backend |")
        and len([line for line in md if line.startswith("| engine")]) == 4
    )
    assert "latents/s" in table(report).splitlines()[0]


def test_baseline_flags_slower_cells_and_compare_prints_both(report, tmp_path):
    faster = json.loads(json.dumps(report))
    for entry in faster["cells"]:
        entry["result"]["latents_per_second"] *= 2
    found = regressions(faster, report, 0.10)
    assert len(found) == 8 and all(r["ratio"] == pytest.approx(0.5) for r in found)
    assert regressions(report, faster, 0.10) == []
    text = compare(report, faster, ("old", "new"))
    assert "old latents/s" in text.splitlines()[0] and text.count("2.000x") == 8


def _cli(*args):
    from zsteer.cli.main import main

    return CliRunner().invoke(main, ["bench", *map(str, args)])


def test_the_command_gates_on_a_baseline_and_compares(job_models, tmp_path):
    common = ["--generator", job_models[0], "--classifier", job_models[1], "--batch-size", "4", "--steps", "1",
              "--warmup-seconds", "0", "--min-seconds", "0", "--min-iterations", "1", "--max-windows", "3",
              "--tolerance", "0.99", "--peak-seconds", "0", "--threads", "1"]  # fmt: skip
    first = _cli(*common, "--json", tmp_path / "a.json", "--csv", tmp_path / "a.csv",
                 "--markdown", tmp_path / "a.md")  # fmt: skip
    assert first.exit_code == 0, (first.output, first.exception)
    assert (tmp_path / "a.csv").read_text().count("\n") == 2 and "| engine |" in (
        tmp_path / "a.md"
    ).read_text()
    doc = read_report(tmp_path / "a.json")
    doc["cells"][0]["result"]["latents_per_second"] *= 100  # a baseline no real run can match
    (tmp_path / "fast.json").write_text(json.dumps(doc))
    gated = _cli(*common, "--baseline", tmp_path / "fast.json")
    assert gated.exit_code == 1 and "REGRESSION" in gated.stderr
    side = _cli("--compare", tmp_path / "a.json", tmp_path / "fast.json")
    assert side.exit_code == 0 and "100.000x" in side.output


def test_bad_reports_and_settings_are_one_line_errors(tmp_path):
    (tmp_path / "x.json").write_text('{"format": "other"}')
    with pytest.raises(ZsteerError, match="not a `zsteer bench --json` report"):
        read_report(tmp_path / "x.json")
    bad = _cli("--backend", "tensorrt-nope", "--peak-seconds", "0")
    assert bad.exit_code == 2 and "--backend tensorrt-nope: expected one of" in bad.stderr
    with pytest.raises(ValueError):
        BenchCell(mode="cluster")


def test_interleaved_cells_take_turns_window_by_window(job_models):
    control = RunControl(warmup_seconds=0, min_seconds=0, min_iterations=1, tolerance=0.99, max_windows=3)
    messages = []
    doc = run_bench(
        BenchConfig(cells=matrix(batch_size=(4, 8), steps=(1,), threads=(1,)), models=ModelSource(*job_models),
                    control=control, peak_seconds=0, stage_iterations=0, interleave=True),
        messages.append,
    )  # fmt: skip
    windows = [m.split(":")[0].split()[3] + m.split(":")[1] for m in messages if ": window" in m]
    assert windows == [
        "b4 window 1",
        "b8 window 1",
        "b4 window 2",
        "b8 window 2",
        "b4 window 3",
        "b8 window 3",
    ]
    assert [len(e["result"]["window_rates"]) for e in doc["cells"]] == [3, 3] and doc["settings"][
        "interleave"
    ]


def test_a_method_from_the_registry_is_benchmarked_like_ascent(job_models):
    register_method(IdentityMethod)
    try:
        doc = run_bench(
            BenchConfig(cells=(BenchCell(method="identity", batch_size=4, steps=3, threads=1),),
                        models=ModelSource(*job_models), control=TINY, peak_seconds=0, stage_iterations=1)
        )  # fmt: skip
    finally:
        unregister_method(IdentityMethod.name)
    result = doc["cells"][0]["result"]
    assert "error" not in result, result
    assert result["steps_applied"] == 0 and result["flops_per_latent"] > 0  # its own forward, counted
    gen, cls = load_models(ModelSource(*job_models))
    assert result["latents_per_second"] > 0 and gen.spec.z_dim == 8


def test_job_mode_builds_no_editor_of_its_own_before_the_peak_memory_is_read(job_models, monkeypatch):
    """Each job run builds its editor; the bench's (for the report's kernels and FLOPs) comes after the peak
    RSS is read, so it does not inflate it (it was built before the runs, and held through them)."""
    from zsteer.jobs.ascent_method import AscentMethod
    from zsteer.jobs.bench import run

    events = []
    make_editor, run_job, peak = AscentMethod.make_editor, run.run_job, run.peak_rss_mb
    monkeypatch.setattr(AscentMethod, "make_editor", lambda *a: events.append("editor") or make_editor(*a))
    monkeypatch.setattr(run, "run_job", lambda config: events.append("job") or run_job(config))
    monkeypatch.setattr(run, "peak_rss_mb", lambda: events.append("peak") or peak())
    doc = run_bench(
        BenchConfig(cells=(BenchCell(mode="job", batch_size=4, steps=1, threads=1),), models=ModelSource(*job_models),
                    control=TINY, job_rows=4, workers=0, peak_seconds=0, stage_iterations=1)
    )  # fmt: skip
    result = doc["cells"][0]["result"]
    assert "error" not in result and result["flops_per_latent"] > 0 and result["compiled"] is False, result
    measured = events[: events.index("peak")]
    assert measured == ["job", "editor"] * measured.count("job"), "one editor per job run, none besides"


def test_the_precision_axis_measures_bf16_beside_fp32_and_older_reports_are_fp32(job_models, tmp_path):
    common = ["--generator", job_models[0], "--classifier", job_models[1], "--batch-size", "4", "--steps", "1",
              "--warmup-seconds", "0", "--min-seconds", "0", "--min-iterations", "1", "--max-windows", "3",
              "--tolerance", "0.99", "--peak-seconds", "0", "--threads", "1"]  # fmt: skip
    run = _cli(*common, "--precision", "fp32,bf16", "--json", tmp_path / "p.json")
    assert run.exit_code == 0, (run.output, run.exception)
    cells = read_report(tmp_path / "p.json")["cells"]
    assert [c["cell"]["precision"] for c in cells] == ["fp32", "bf16"]
    assert all(c["result"]["latents_per_second"] > 0 for c in cells)
    # The same FLOPs for both: the models' arithmetic, not the way a cell runs it.
    assert cells[0]["result"]["flops_per_latent"] == cells[1]["result"]["flops_per_latent"]
    older = {k: v for k, v in cells[0]["cell"].items() if k != "precision"}  # a report from before the axis
    assert cell_key(older) == cell_key(cells[0]["cell"]) != cell_key(cells[1]["cell"])
    assert "bf16" in run.output
    bad = _cli(*common, "--precision", "fp8")
    assert bad.exit_code == 2 and "--precision fp8: expected one of" in bad.stderr


def _report_with(cells) -> dict:
    return {"format": "zsteer-bench/1", "cells": cells}


_GOOD_CELL = {"cell": BenchCell(batch_size=8).settings(), "result": {"latents_per_second": 10.0}}


@pytest.mark.parametrize(
    ("cells", "where"),
    [
        ([{}], "cells[0].cell: missing"),
        ([_GOOD_CELL, 3], "cells[1]: expected an object with 'cell' and 'result', got 3"),
        ([{"cell": _GOOD_CELL["cell"]}], "cells[0].result: missing"),
        ([{"cell": [], "result": {}}], "cells[0].cell: expected an object, got []"),
        ([{**_GOOD_CELL, "result": {"latents_per_second": "fast"}}],
         'cells[0].result.latents_per_second: expected a finite number >= 0, got "fast"'),
        ([{**_GOOD_CELL, "result": {"latents_per_second": True}}], "result.latents_per_second: expected"),
        ([{**_GOOD_CELL, "cell": {**_GOOD_CELL["cell"], "batch_size": [8]}}],
         "cells[0].cell.batch_size: expected an integer, got [8]"),
        ([{**_GOOD_CELL, "cell": {**_GOOD_CELL["cell"], "threads": "1"}}],
         'cells[0].cell.threads: expected an integer or null, got "1"'),
        ([{**_GOOD_CELL, "cell": {k: v for k, v in _GOOD_CELL["cell"].items() if k != "mode"}}],
         "cells[0].cell.mode: missing"),
        ([{**_GOOD_CELL, "result": {"batch_latency_ms": {"median": "x"}}}], "cells[0].result.batch_latency_ms"),
    ],
)  # fmt: skip
def test_a_malformed_cell_is_one_line_naming_the_file_cell_and_field(tmp_path, cells, where):
    """Each was a KeyError or TypeError traceback in --compare or --baseline (or accepted silently)."""
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_report_with(cells)))
    with pytest.raises(ZsteerError) as info:
        read_report(path)
    assert (
        str(info.value).startswith(f"{path}: ") and where in str(info.value) and "\n" not in str(info.value)
    )


def test_a_report_of_an_older_zsteer_without_precision_still_reads(tmp_path):
    old = {"cell": {k: v for k, v in _GOOD_CELL["cell"].items() if k != "precision"}, "result": {}}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(_report_with([old, {**_GOOD_CELL, "result": {"error": "boom"}}])))
    assert len(read_report(path)["cells"]) == 2


def test_shared_cells_are_the_cells_a_baseline_can_compare():
    baseline = _report_with(
        [_GOOD_CELL, {"cell": BenchCell(mode="job").settings(), "result": {"error": "x"}}]
    )
    assert shared_cells(baseline, [BenchCell(batch_size=8).settings()]) == [
        BenchCell(batch_size=8).settings()
    ]
    # A cell whose baseline run failed has no rate to compare with; other settings match nothing.
    assert shared_cells(baseline, [BenchCell(mode="job").settings(), BenchCell().settings()]) == []
