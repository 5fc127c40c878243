"""`zsteer bench`: flags parsed into a BenchConfig for `run_bench`, then the report's table and files.

Imported only when the command is used (main.LAZY_COMMANDS): it imports torch. Exit codes: 0 done, 1 a
cell got slower than --baseline by more than --threshold (the CI gate), 2 bad settings (among them a
--baseline none of whose cells the run's match: a gate that compared nothing must not pass) or a cell
that could not run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from tqdm import tqdm

from zsteer.core.errors import ZsteerError
from zsteer.jobs.backends import BACKENDS
from zsteer.jobs.bench.config import COMPILED, IMAGE_FORMATS, MODES, QUICK, BenchConfig, RunControl, matrix
from zsteer.jobs.bench.report import (
    KEY,
    compare,
    markdown,
    read_report,
    regressions,
    shared_cells,
    table,
    write_csv,
    write_json,
)
from zsteer.jobs.bench.run import run_bench
from zsteer.pipeline.config import PRECISIONS

from .models import model_options, model_source
from .paths import check_out_file
from .values import int_values, settings_checked, split_values

REGRESSION_EXIT = 1
# Flags that act on a measured run: --compare measures nothing, so it refuses them rather than ignore them.
_NOT_WITH_COMPARE = (("--json", "json_path"), ("--csv", "csv_path"), ("--markdown", "markdown_path"),
                     ("--baseline", "baseline"))  # fmt: skip
_DEFAULT = RunControl()


def _values(given: tuple[str, ...], default: list) -> tuple:
    """A matrix axis of names: repeated and/or comma-separated values (--backend torch,onnxruntime)."""
    return tuple(dict.fromkeys(split_values(given))) or tuple(default)


def _ints(given: tuple[str, ...], default: list, flag: str, minimum: int = 1) -> tuple:
    """A matrix axis of integers (--batch-size 8,128 --batch-size 512), each at least ``minimum``."""
    return int_values(given, flag, minimum) or tuple(default)


def _choices(values: tuple, allowed, flag: str) -> tuple:
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ZsteerError(f"{flag} {bad[0]}: expected one of {', '.join(allowed)}")
    return values


def _progress(total: int):
    """A tqdm bar over the cells on a terminal; plain lines elsewhere (CI logs)."""
    bar = tqdm(total=total, unit="cell", file=sys.stderr, dynamic_ncols=True, disable=None)

    def report(message: str) -> None:
        if message.endswith(": done"):
            bar.update(1)
        if bar.disable:
            click.echo(f"zsteer bench: {message}", err=True)
        else:
            bar.set_postfix_str(message, refresh=True)

    return bar, report


def _write(path: Path | None, text: str) -> None:
    if path is None:
        return
    if str(path) == "-":
        click.echo(text, nl=False)
        return
    path.write_text(text)


_LIST = "Takes a list: repeat the flag or separate values by commas; every combination is measured."


def _axis(flag: str, dest: str, what: str, default: str):
    """A matrix flag: repeatable, comma-separated values (parsed by ``_values``)."""
    return click.option(flag, dest, multiple=True, help=f"{what} Default: {default}. {_LIST}")


@click.command()
@model_options
@click.option(
    "--target",
    "-t",
    "targets",
    multiple=True,
    help="NAME or NAME=WEIGHT to edit towards (repeatable). Default: the classifier's first attribute.",
)
@_axis(
    "--mode",
    "modes",
    "engine (the editor on batches in memory) or job (the whole streaming job over a "
    "generated manifest, I/O included).",
    "engine",
)
@_axis(
    "--backend", "backends", "torch (eager), torch-compiled, onnxruntime, or any registered backend.", "torch"
)
@_axis("--batch-size", "batch_sizes", "Rows per batch.", "128")
@_axis("--steps", "steps", "Gradient steps of the edit.", "10")
@_axis("--method", "methods", "A registered edit method (`zsteer edit --help` lists them).", "ascent")
@_axis("--images", "images", "png (render; in job mode also encode and write) or none.", "none")
@_axis("--device", "devices", "torch device.", "cpu")
@_axis("--threads", "threads", "torch (and onnxruntime) CPU threads.", "torch's choice")
@_axis(
    "--precision", "precisions", "fp32, or bf16 (opt-in, torch backend: see `zsteer edit --help`).", "fp32"
)
@click.option(
    "--warmup-seconds",
    type=click.FloatRange(min=0),
    help=f"Untimed seconds after the first call. [default: {_DEFAULT.warmup_seconds}; --quick {QUICK.warmup_seconds}]",
)
@click.option(
    "--min-seconds",
    type=click.FloatRange(min=0),
    help=f"Shortest measurement window. [default: {_DEFAULT.min_seconds}; --quick {QUICK.min_seconds}]",
)
@click.option(
    "--min-iterations",
    type=click.IntRange(min=1),
    help=f"Fewest iterations per window. [default: {_DEFAULT.min_iterations}; --quick {QUICK.min_iterations}]",
)
@click.option(
    "--max-windows",
    type=click.IntRange(min=3),
    help=f"Windows before a cell whose last three never agreed is reported unstable. "
    f"[default: {_DEFAULT.max_windows}; --quick {QUICK.max_windows}]",
)
@click.option(
    "--tolerance",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=_DEFAULT.tolerance,
    show_default=True,
    help="The last three windows' throughputs must be within this fraction of their mean.",
)
@click.option(
    "--interleave",
    is_flag=True,
    help="Cells take turns window by window (all editors held at once), so that load from elsewhere on a "
    "shared machine falls on every cell alike: use it when comparing cells.",
)
@click.option(
    "--quick", is_flag=True, help="A ~30 s look: short warm-up and windows, one stage pass, short peak."
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seed of the latents every cell edits.",
)
@click.option(
    "--job-rows",
    type=click.IntRange(min=1),
    help="Rows of the job-mode manifest. [default: 8 batches; --quick 3]",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="PNG encoder processes of a job-mode run.",
)
@click.option(
    "--impl",
    type=click.Choice(["auto", "triton", "torch"]),
    default="auto",
    show_default=True,
    help="Kernels: Triton or the torch reference (auto: Triton on CUDA).",
)
@click.option(
    "--onnx-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="With --backend onnxruntime: graphs `zsteer export` wrote (default: export at start-up).",
)
@click.option(
    "--peak-seconds",
    type=click.FloatRange(min=0),
    help="Seconds per GEMM shape of the matmul peak; 0 skips the roofline. [default: 0.5; --quick 0.2]",
)
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the report as JSON."
)
@click.option(
    "--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), help="Write one CSV row per cell."
)
@click.option(
    "--markdown",
    "markdown_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a Markdown table ('-': stdout).",
)
@click.option(
    "--baseline",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="An earlier --json report: cells slower than it by more than --threshold fail (exit 1); a run none "
    "of whose cells match one of its cells (every setting equal) is refused before measuring (exit 2).",
)
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.10,
    show_default=True,
    help="Slow-down (fraction of the baseline's latents/s) that counts as a regression.",
)
@click.option(
    "--compare",
    "compare_paths",
    nargs=2,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Print two --json reports side by side (A B) and exit; nothing is measured.",
)
def bench(**opt):  # fmt: skip
    """Throughput, latency percentiles, time per stage, memory and roofline of zsteer's editors and job.

    \b
    Each cell of the matrix (every combination of the list flags) runs: the first call alone (compile,
    session creation), --warmup-seconds untimed, then windows of at least --min-seconds and
    --min-iterations until the last three agree within --tolerance (else: UNSTABLE). On CUDA each
    call is timed with CUDA events after a synchronise.

    \b
    Examples:
      zsteer bench --quick
      zsteer bench --backend torch,onnxruntime --batch-size 32,128 --json now.json --csv now.csv
      zsteer bench --mode job --images png,none --baseline main.json --threshold 0.15
      zsteer bench --compare main.json now.json
    """
    if opt["compare_paths"]:
        given = [flag for flag, key in _NOT_WITH_COMPARE if opt[key] is not None]
        if given:
            raise ZsteerError(
                f"--compare prints two reports and measures nothing: {given[0]} cannot go with it"
            )
        a, b = opt["compare_paths"]
        click.echo(compare(read_report(a), read_report(b), (a.stem, b.stem)))
        return 0
    baseline = read_report(opt["baseline"]) if opt["baseline"] else None
    quick = opt["quick"]
    base = QUICK if quick else _DEFAULT
    with settings_checked():  # e.g. a NaN --tolerance, which click's FloatRange lets through
        control = RunControl(
            warmup_seconds=base.warmup_seconds if opt["warmup_seconds"] is None else opt["warmup_seconds"],
            min_seconds=base.min_seconds if opt["min_seconds"] is None else opt["min_seconds"],
            min_iterations=opt["min_iterations"] or base.min_iterations,
            tolerance=opt["tolerance"],
            max_windows=opt["max_windows"] or base.max_windows,
        )
    backends = _values(opt["backends"], ["torch"])
    cells = matrix(
        mode=_choices(_values(opt["modes"], ["engine"]), MODES, "--mode"),
        backend=_choices(backends, [*BACKENDS, COMPILED], "--backend"),
        method=_values(opt["methods"], ["ascent"]),
        batch_size=_ints(opt["batch_sizes"], [128], "--batch-size"),
        steps=_ints(opt["steps"], [10], "--steps", minimum=0),
        images=_choices(_values(opt["images"], ["none"]), IMAGE_FORMATS, "--images"),
        device=_values(opt["devices"], ["cpu"]),
        threads=_ints(opt["threads"], [None], "--threads"),
        precision=_choices(_values(opt["precisions"], ["fp32"]), PRECISIONS, "--precision"),
    )
    outputs = ((opt["json_path"], "--json"), (opt["csv_path"], "--csv"), (opt["markdown_path"], "--markdown"))
    for path, flag in outputs:  # before any work, not after minutes of measuring
        if path is not None and str(path) != "-":
            check_out_file(flag, path)
    if baseline is not None and not shared_cells(baseline, [cell.settings() for cell in cells]):
        raise ZsteerError(
            f"--baseline {opt['baseline']}: none of its {len(baseline['cells'])} cell(s) has the settings of one "
            f"of this run's {len(cells)} ({', '.join(KEY)}): nothing would be compared"
        )
    if opt["onnx_dir"] is not None and "onnxruntime" in backends:  # its files, before any cell runs
        from zsteer.export.onnx_export import check_export_folder

        check_export_folder(opt["onnx_dir"])
    with settings_checked():
        config = BenchConfig(
            cells=cells, models=model_source(opt), targets=tuple(opt["targets"]), control=control,
            seed=opt["seed"], job_rows=opt["job_rows"], job_batches=3 if quick else 8, workers=opt["workers"],
            impl=opt["impl"], onnx_dir=opt["onnx_dir"],
            peak_seconds=opt["peak_seconds"] if opt["peak_seconds"] is not None else (0.2 if quick else 0.5),
            stage_iterations=1 if quick else 3, interleave=opt["interleave"],
        )  # fmt: skip
    bar, progress = _progress(len(cells))
    try:
        report = run_bench(config, progress)
    finally:
        bar.close()
    click.echo(table(report))
    if opt["json_path"]:
        write_json(report, opt["json_path"])
    if opt["csv_path"]:
        write_csv(report, opt["csv_path"])
    _write(opt["markdown_path"], markdown(report))
    failed = [e for e in report["cells"] if "error" in e["result"]]
    if failed:
        raise ZsteerError(
            f"{len(failed)} of {len(cells)} cell(s) could not run; first: {failed[0]['result']['error']}"
        )
    if baseline is not None:
        slower = regressions(baseline, report, opt["threshold"])
        for r in slower:
            cell = " ".join(f"{k}={v}" for k, v in r["cell"].items())
            click.echo(
                f"zsteer bench: REGRESSION {cell}: {r['current']:.1f} latents/s vs {r['baseline']:.1f} "
                f"({r['ratio']:.2f}x, threshold {1 - opt['threshold']:.2f}x)",
                err=True,
            )
        if slower:
            return REGRESSION_EXIT
        click.echo(
            f"zsteer bench: no cell slower than {opt['baseline']} by more than {opt['threshold']:.0%}",
            err=True,
        )
    return 0
