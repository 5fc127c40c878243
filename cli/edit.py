"""`zsteer edit`: the flags of the edit job, parsed into a JobConfig for `run_job`.

Imported only when the command is used (main.LAZY_COMMANDS): building the option defaults imports the
engine, and with it torch.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click
import torch

from zsteer.core.errors import ZsteerError
from zsteer.jobs.ascent_method import AscentMethod
from zsteer.jobs.backends import BACKENDS, BackendConfig
from zsteer.jobs.config import EditSpec, JobConfig, OutputConfig
from zsteer.jobs.executor import EXECUTORS
from zsteer.jobs.method import method_class, method_names
from zsteer.jobs.runner import run_job
from zsteer.kernels.dispatch import triton_available
from zsteer.pipeline.config import MAX_STEPS, PRECISIONS, AscentConfig, EngineConfig

from .method_options import METHOD_PARSERS, given_flags, method_options, refuse_other_methods_flags
from .models import model_options, model_source
from .paths import PathOrUri, check_out_parent
from .values import settings_checked


def _names(values: tuple[str, ...]) -> tuple[str, ...]:
    """Repeated and/or comma-separated names: --preserve A --preserve B,C."""
    return tuple(n.strip() for value in values for n in value.split(",") if n.strip())


def _check_impl(impl: str, device: str) -> None:
    """--impl triton off CUDA or without triton would fail mid-job, after job.json: refuse it now."""
    if impl != "triton":
        return
    try:
        on_cuda = torch.device(device).type == "cuda"
    except (RuntimeError, ValueError):
        return  # a malformed --device: the job's own device check names it
    if not on_cuda or not triton_available():
        found = f"--device {device}" + ("" if triton_available() else ", triton not installed")
        raise ZsteerError(
            f"--impl triton: needs a CUDA device and triton installed (got {found}); "
            "use --impl auto or --impl torch"
        )


def _edit_options(fn):
    a, e = AscentConfig(), EngineConfig()
    workers = OutputConfig(out=Path(".")).workers
    pos = click.FloatRange(min=0, min_open=True)
    options = [
        click.option("--manifest", "-m", "manifests", multiple=True, required=True,
                     help="Parquet file, directory (every *.parquet below it) or glob, as a path or a URI "
                     "(s3://bucket/prefix, file:///abs/path); repeatable."),
        click.option("--out", "-o", type=PathOrUri(file_okay=False, path_type=Path), required=True,
                     help="Job folder: a path, or a URI (s3://bucket/prefix, file:///abs/path). Running the "
                     "same command again resumes it."),
        click.option("--target", "-t", "targets", multiple=True,
                     help="NAME or NAME=WEIGHT (e.g. Smiling, Eyeglasses=-1); repeatable. Rows with a "
                     "'targets' value use theirs instead."),
        click.option("--preserve", multiple=True,
                     help="Attributes to hold in place (repeatable or comma-separated). Default: every "
                     "attribute that is not a target of the row."),
        click.option("--steps", type=click.IntRange(0, MAX_STEPS), default=a.steps, show_default=True,
                     help="Gradient steps per row (a 'steps' column overrides it per row)."),
        click.option("--lr", type=pos, help="Step size. Default: 0.1, or 1/steps with --lab-compat."),
        click.option("--penalty", type=click.FloatRange(min=0), default=a.penalty, show_default=True,
                     help="Weight of the change in preserved logits."),
        click.option("--normalize/--no-normalize", default=a.normalize, show_default=True,
                     help="Unit-length steps: --lr is then a distance in z per step."),
        click.option("--max-shift", type=pos, help="Cap on ||z_edited - z||; a row that reaches it stops."),
        click.option("--stop-at-prob", type=click.FloatRange(0, 1, min_open=True, max_open=True),
                     help="Stop a row once its targets reach this probability (a 'stop_at_prob' column "
                     "overrides it per row)."),
        click.option("--lab-compat", is_flag=True, help="Reproduce the course notebook number for number."),
        click.option("--lab-batch", type=click.IntRange(min=1), default=a.lab_batch, show_default=True,
                     help="The notebook batch size whose 1/n gradient scaling --lab-compat reproduces."),
        click.option("--batch-size", type=click.IntRange(min=1), default=e.batch_size, show_default=True,
                     help="Rows per engine batch (results do not depend on it)."),
        click.option("--device", default=e.device, show_default=True, help="torch device: cpu, cuda, cuda:1."),
        click.option("--compile", "compile_mode", type=click.Choice(["auto", "on", "off"]), default=e.compile,
                     show_default=True, help="torch.compile the step (auto: on CUDA only)."),
        click.option("--impl", type=click.Choice(["auto", "triton", "torch"]), default=e.impl,
                     show_default=True, help="Kernels: Triton or the torch reference (auto: Triton on CUDA)."),
        click.option("--precision", type=click.Choice(PRECISIONS), default=e.precision, show_default=True,
                     help="Arithmetic of the networks. bf16 (opt-in; torch backend, course models) is faster "
                     "on CPUs with AMX/AVX512-BF16 but moves edits beyond fp32 rounding (README, "
                     "'Performance'); it is part of the job's identity."),
        click.option("--images", type=click.Choice(["png", "none"]), default="png", show_default=True,
                     help="Write each edited image as PNG bytes in an 'image' column, or not."),
        click.option("--workers", type=click.IntRange(min=0), default=workers, show_default=True,
                     help="PNG encoder processes (0: encode in the writer thread)."),
        click.option("--rows-per-shard", type=click.IntRange(min=1), default=4096, show_default=True,
                     help="Most rows per output file in parts/."),
        click.option("--read-rows", type=click.IntRange(min=1), default=4096, show_default=True,
                     help="Rows read at a time from a row group (bounds memory)."),
        click.option("--unit-rows", type=click.IntRange(min=1), default=4096, show_default=True,
                     help="Rows per unit of resume: row groups are cut into units of at most this many "
                     "rows (fixed for the life of a job)."),
        click.option("--method", type=click.Choice(method_names()), default="ascent", show_default=True,
                     help="How rows are edited (ascent: classifier-gradient ascent on z; direction: "
                     "z + alpha * d from a directions file; interpolate: frames from z to another latent)."),
        click.option("--backend", type=click.Choice(list(BACKENDS)), default="torch", show_default=True,
                     help="Runtime of the edit; onnxruntime needs the 'cpu' or 'gpu' extra."),
        click.option("--executor", type=click.Choice(list(EXECUTORS)), default="local", show_default=True,
                     help="Who runs the job's units (local: threads on this machine; ray: actors on a Ray "
                     "cluster, needs the 'ray' extra)."),
        click.option("--ray-address", help="With --executor ray: 'auto' (the cluster `ray start` made here) or "
                     "ray://host:port. Default: a local Ray instance started for the job."),
        click.option("--num-workers", type=click.IntRange(min=1),
                     help="With --executor ray: worker actors. Default: as many as the cluster holds."),
        click.option("--gpus-per-worker", type=click.FloatRange(min=0),
                     help="With --executor ray: GPUs per worker (0: CPU workers; fractions share a GPU)."),
        click.option("--cpus-per-worker", type=click.FloatRange(min=0, min_open=True),
                     help="With --executor ray: CPUs per worker (its torch threads and PNG encoders). "
                     "Default: 1."),
        click.option("--onnx-dir", type=click.Path(file_okay=False, path_type=Path),
                     help="With --backend onnxruntime: run the graphs `zsteer export` wrote there."),
        click.option("--cpu-fallback", is_flag=True,
                     help="With --backend onnxruntime: use the CPU if the CUDA provider is unusable."),
        click.option("--threads", type=click.IntRange(min=1),
                     help="torch CPU threads (default: torch's choice). 1 is far faster on a busy machine."),
    ]  # fmt: skip
    for option in reversed(options):
        fn = option(fn)
    return fn


_RAY_OPTIONS = {"ray_address": "address", "num_workers": "num_workers",
                "gpus_per_worker": "gpus_per_worker", "cpus_per_worker": "cpus_per_worker"}  # fmt: skip


def _executor_options(opt: dict) -> tuple[tuple[str, object], ...]:
    """The --executor's options given on the command line; a Ray option without --executor ray is refused."""
    given = {flag: opt[flag] for flag in _RAY_OPTIONS if opt[flag] is not None}
    if given and opt["executor"] != "ray":
        flag = "--" + next(iter(given)).replace("_", "-")
        raise ZsteerError(
            f"{flag}: only with --executor ray (the {opt['executor']} executor takes no such option)"
        )
    return tuple((_RAY_OPTIONS[flag], value) for flag, value in given.items())


def _refuse_lab_batch_alone(ctx: click.Context, opt: dict) -> None:
    """--lab-batch without --lab-compat would scale nothing: refused rather than ignored."""
    if "lab_batch" in given_flags(ctx) and not opt["lab_compat"]:
        raise ZsteerError("--lab-batch: only with --lab-compat (it sets the notebook's gradient scaling)")


def _method(opt: dict):
    """The --method with its settings: ascent takes the ascent flags, direction and interpolate theirs
    (method_options.py); another method its defaults."""
    if opt["method"] in METHOD_PARSERS:
        return METHOD_PARSERS[opt["method"]](opt)
    if opt["method"] != "ascent":
        return method_class(opt["method"])()
    ascent = AscentConfig(
        steps=opt["steps"], lr=opt["lr"], penalty=opt["penalty"], normalize=opt["normalize"],
        max_shift=opt["max_shift"], stop_at_prob=opt["stop_at_prob"], lab_compat=opt["lab_compat"],
        lab_batch=opt["lab_batch"],
    )  # fmt: skip
    return AscentMethod(ascent)


@click.command()
@_edit_options
@method_options
@model_options
@click.pass_context
def edit(ctx, **opt):
    """Edit every latent of the manifest(s) and write the job folder --out.

    \b
    The job, in order:
      1. checks every manifest file against the models (a file that is not Parquet, truncated, empty,
         without a usable id / z / label column, or with another z length stops the job before it
         starts, with one line naming the file);
      2. streams the row groups in units of --unit-rows rows, rejecting bad rows (null/duplicate id, null z, wrong length, NaN/Inf,
         label out of range, unknown attribute in a per-row override) to rejects/ with the reason;
      3. edits the rest in batches of --batch-size by classifier-gradient ascent;
      4. writes parts/part-*.parquet (id, carried columns, z_edited, logits_before, logits_after,
         latent_shift, steps_taken, stop_reason, image) and commits each unit when done.
    Interrupted (Ctrl-C, SIGTERM, a crash), the same command resumes: done units are skipped and
    every row ends up exactly once in parts/ or rejects/. A changed setting or model is refused.

    \b
    Manifest: id (int64 or string), z (list of float), optional label, optional per-row overrides
    targets ({"Smiling": 1} JSON, map or list of {name, weight}), steps, stop_at_prob; other
    columns are carried through. Make one with `zsteer sample`.
    """
    if opt["threads"]:
        torch.set_num_threads(opt["threads"])  # the CLI owns its process; the library leaves this alone
    check_out_parent("--out", opt["out"])
    refuse_other_methods_flags(ctx, opt["method"])
    _refuse_lab_batch_alone(ctx, opt)
    _check_impl(opt["impl"], opt["device"])
    preserve = _names(opt["preserve"]) or None
    with settings_checked():
        config = JobConfig(
            manifests=tuple(opt["manifests"]),
            output=OutputConfig(
                out=opt["out"],
                images=opt["images"],
                rows_per_shard=opt["rows_per_shard"],
                workers=opt["workers"],
            ),
            models=model_source(opt),
            edit=EditSpec(targets=tuple(opt["targets"]), preserve=preserve),
            method=_method(opt),
            engine=EngineConfig(
                batch_size=opt["batch_size"],
                device=opt["device"],
                compile=opt["compile_mode"],
                impl=opt["impl"],
                precision=opt["precision"],
            ),
            backend=BackendConfig(opt["backend"], opt["onnx_dir"], opt["threads"], opt["cpu_fallback"]),
            executor=opt["executor"],
            executor_options=_executor_options(opt),
            read_rows=opt["read_rows"],
            unit_rows=opt["unit_rows"],
        )
    if config.backend.name == "onnxruntime" and config.backend.onnx_dir is not None:
        from zsteer.export.onnx_export import check_export_folder  # onnx only when asked for

        check_export_folder(config.backend.onnx_dir)  # a truncated or swapped graph: before the job folder
    result = run_job(config)
    if result.signum is not None:
        argv = ctx.obj["argv"] if ctx.obj else sys.argv[1:]
        click.echo(f"zsteer: interrupted; to resume, run: {shlex.join(['zsteer', *argv])}", err=True)
    return result.exit_code
