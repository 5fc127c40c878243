"""The edit job against the engine alone, and the job's peak memory at 10k vs 1M rows.

    python benchmarks/job.py [--rows 512] [--steps 10] [--batch-size 128] [--threads 2] [--rounds 2]
                             [--rss-rows 10000 1000000] [--rss-one-group 1000000] [--rss-steps 1]
                             [--rss-hidden 1] [--skip-rss] [--skip-throughput]

1. Throughput, course-size models (z_dim 64, hidden 64, 40 attributes, random weights): the engine
   alone over the manifest's batches (AscentEngine.edit, nothing else), then the whole job on the same
   manifest and settings (`run_job`: read, validate, edit, encode, write, commit, unit by unit), images off
   and on. Variants alternate for --rounds rounds, so a busy machine slows each about equally; the
   job's rate is its rows over the wall time of the whole `run_job` call. Goal: >= 95% of the engine.
2. Memory: `zsteer edit` as its own process over --rss-rows manifests, images off, --rss-steps steps,
   reading its peak RSS from summary.json. The models are the course architectures at width
   --rss-hidden (z_dim 64, 40 attributes), so a million rows take minutes on two cores; what is
   measured is the job's memory, which must not grow with the manifest (batch- and shard-bounded).
   The --rss-rows manifests have row groups of 8192 rows (`zsteer sample`'s default); the
   --rss-one-group manifest is a single row group (what pandas / pyarrow write by default up to 1Mi
   rows: 256 MB of z at 1M rows), which the reader must stream in bounded pieces too.

The glibc allocator settings of benchmarks/ascent.py apply (the script re-executes itself with them).
Each throughput call is timed by the bench's clock (``zsteer.jobs.bench.timing``); `zsteer bench --mode
engine,job` measures the same pair with warm-up and stability windows, this script alternates rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from zsteer.cli.malloc import MALLOC_ENV, reexec_with_malloc_settings
from zsteer.jobs.bench.timing import WallClock

ATTRIBUTE = "Smiling"


def make_models(folder: Path, hidden: int) -> tuple[Path, Path]:
    """Course architectures at ``hidden`` width, random weights, saved in the project format."""
    from zsteer.pipeline.attributes import CELEBA40
    from zsteer.pipeline.checkpoints import save_model
    from zsteer.pipeline.models import ClassifierSpec, GeneratorSpec, build_classifier, build_generator

    gspec, cspec = GeneratorSpec(z_dim=64, hidden_dim=hidden), ClassifierSpec(n_classes=40, hidden_dim=hidden)
    gpath, cpath = folder / f"gen{hidden}.safetensors", folder / f"cls{hidden}.safetensors"
    save_model(build_generator(gspec), gspec, gpath)
    save_model(build_classifier(cspec), cspec, cpath, attributes=CELEBA40)
    return gpath, cpath


def job_config(manifest: Path, out: Path, models, steps: int, batch_size: int, images: str, workers: int):
    from zsteer.jobs.ascent_method import AscentMethod
    from zsteer.jobs.config import EditSpec, JobConfig, OutputConfig
    from zsteer.pipeline.config import AscentConfig, EngineConfig
    from zsteer.pipeline.loading import ModelSource

    return JobConfig(
        manifests=(str(manifest),),
        output=OutputConfig(out=out, images=images, workers=workers),
        models=ModelSource(generator=models[0], classifier=models[1]),
        edit=EditSpec(targets=(ATTRIBUTE,)),
        method=AscentMethod(AscentConfig(steps=steps)),
        engine=EngineConfig(batch_size=batch_size),
        progress_seconds=1e9,
    )


def engine_alone(manifest: Path, models, steps: int, batch_size: int) -> float:
    """Latents/s of AscentEngine.edit over the manifest's rows, batch by batch, as the job feeds it."""
    import pyarrow.parquet as pq
    import torch

    from zsteer.pipeline.attributes import CELEBA40
    from zsteer.pipeline.checkpoints import load_classifier, load_generator
    from zsteer.pipeline.engine import (
        AscentConfig,
        EngineConfig,
        default_preserve,
        make_engine,
        target_vector,
    )

    gen, cls = load_generator(models[0]), load_classifier(models[1])
    engine = make_engine(gen, cls, AscentConfig(steps=steps), EngineConfig(batch_size=batch_size))
    z = pq.read_table(manifest, columns=["z"]).column("z").combine_chunks().flatten().to_numpy()
    z = torch.from_numpy(z.reshape(-1, 64).copy())  # [N, 64]
    w = target_vector([(CELEBA40.index(ATTRIBUTE), 1.0)], 40).expand(len(z), 40).contiguous()  # [N, 40]
    p = default_preserve(w)

    def every_batch() -> None:
        for s in range(0, len(z), batch_size):
            engine.edit(z[s : s + batch_size], w[s : s + batch_size], p[s : s + batch_size], render=False)

    return len(z) / WallClock().time(every_batch)


def job_rate(
    manifest: Path, out: Path, models, steps: int, batch_size: int, images: str, workers: int
) -> float:
    from zsteer.jobs.runner import run_job

    results = []
    seconds = WallClock().time(
        lambda: results.append(run_job(job_config(manifest, out, models, steps, batch_size, images, workers)))
    )
    return results[0].summary["edited"] / seconds


def throughput(args, tmp: Path) -> None:
    from zsteer.jobs.sample import SampleConfig, write_sample

    models = make_models(tmp, 64)
    manifest = write_sample(SampleConfig(n=args.rows, seed=0, out=tmp / "tp.parquet", row_group_size=1000))
    variants = {
        "engine alone": lambda r: engine_alone(manifest, models, args.steps, args.batch_size),
        "job, images none": lambda r: job_rate(
            manifest, tmp / f"none{r}", models, args.steps, args.batch_size, "none", args.workers
        ),
        "job, images png": lambda r: job_rate(
            manifest, tmp / f"png{r}", models, args.steps, args.batch_size, "png", args.workers
        ),
    }
    rates: dict[str, list[float]] = {name: [] for name in variants}
    engine_alone(manifest, models, 1, args.batch_size)  # warm-up: first-call allocations, lazy imports
    for r in range(args.rounds):
        for name, fn in variants.items():
            rates[name].append(fn(r))
            print(f"  round {r + 1}: {name:18s} {rates[name][-1]:8.2f} latents/s", flush=True)
    base = statistics.median(rates["engine alone"])
    print(
        f"\nthroughput: {args.rows} rows, {args.steps}-step edit, batch {args.batch_size}, "
        f"{args.threads} torch threads, course models (z 64, hidden 64, 40 attributes)"
    )
    print(f"{'variant':20s} {'median latents/s':>17s} {'vs engine':>10s}   rounds")
    for name, values in rates.items():
        med = statistics.median(values)
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(f"{name:20s} {med:17.2f} {100 * med / base:9.1f}%   {shown}")


def memory(args, tmp: Path) -> None:
    from zsteer.jobs.duplicates import PARTITION_ROWS
    from zsteer.jobs.sample import SampleConfig, write_sample

    models = make_models(tmp, args.rss_hidden)
    zsteer = str(Path(sys.executable).with_name("zsteer"))
    print(
        f"\nmemory: `zsteer edit`, images none, {args.rss_steps}-step edit, batch {args.batch_size}, "
        f"course architectures at hidden {args.rss_hidden} (z 64, 40 attributes), one process per size"
    )
    print(
        f"{'rows':>10s} {'row groups':>11s} {'peak RSS MiB':>13s} {'latents/s':>10s} {'wall s':>8s} "
        f"{'id scan MiB':>11s}"
    )
    cases = [(rows, 8192) for rows in args.rss_rows]
    if args.rss_one_group:
        cases.append((args.rss_one_group, args.rss_one_group))
    for rows, group in cases:
        manifest = write_sample(
            SampleConfig(n=rows, seed=1, out=tmp / f"rss{rows}-{group}.parquet", row_group_size=group)
        )
        out = tmp / f"rss{rows}-{group}"
        cmd = [
            zsteer, "edit", "-m", str(manifest), "--generator", str(models[0]), "--classifier", str(models[1]),
            "-t", ATTRIBUTE, "--steps", str(args.rss_steps), "--batch-size", str(args.batch_size),
            "--images", "none", "--threads", str(args.threads), "--out", str(out),
        ]  # fmt: skip
        wall = WallClock().time(lambda cmd=cmd: subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL))
        summary = json.loads((out / "summary.json").read_text())
        # The duplicate scan sorts one partition of (key, position) pairs at a time (jobs/duplicates.py).
        ids = 16 * min(rows, PARTITION_ROWS) / 2**20
        groups = -(-rows // group)
        print(
            f"{rows:10d} {groups:11d} {summary['peak_rss_mb']:13.1f} {summary['latents_per_second']:10.1f} "
            f"{wall:8.1f} {ids:11.1f}",
            flush=True,
        )
        shutil.rmtree(out)
        manifest.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=512, help="manifest rows of the throughput part")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="PNG encoder processes of the job")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rss-rows", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument(
        "--rss-one-group", type=int, default=1_000_000, help="rows of a one-row-group manifest (0: skip)"
    )
    parser.add_argument("--rss-steps", type=int, default=1)
    parser.add_argument("--rss-hidden", type=int, default=1)
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    reexec_with_malloc_settings()

    import torch

    torch.set_num_threads(args.threads)
    print(
        f"malloc: {' '.join(f'{k}={os.environ[k]}' for k in MALLOC_ENV)}; cpus: {os.cpu_count()}", flush=True
    )
    with tempfile.TemporaryDirectory(prefix="zsteer-job-bench-") as tmp:
        if not args.skip_throughput:
            throughput(args, Path(tmp))
        if not args.skip_rss:
            memory(args, Path(tmp))


if __name__ == "__main__":
    main()
