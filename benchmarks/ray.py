"""The local executor against the Ray executor: the same rows and settings, side by side in one run.

    flock /tmp/zsteer-heavy.lock python benchmarks/ray.py [--rows 4096] [--steps 10] [--hidden 64]
        [--batch-size 128] [--unit-rows 512] [--cpus 2] [--ray-shapes 1x2 2x1] [--rounds 1] [--skip-local]
        [--memory-rows 10000 1000000] [--skip-memory]

Each variant is `zsteer edit` as its own process (so its peak memory is its own), images off, on one
manifest per size (`zsteer sample`, row groups of 8192), with the course architectures at width --hidden
(z_dim 64, 40 attributes, random weights; benchmarks/job.py; 64 is the course's size) and the default
10-step ascent: real work, so that a run lasts a minute or more and Ray's start-up is not all there is
to measure. Equal cores: the local job runs torch on --cpus threads; a Ray shape WxC is W workers of C
CPUs each (W*C = --cpus) on a local Ray instance the job starts itself. Variants alternate for --rounds
rounds.

Reported per variant: wall seconds of the process (start-up included), latents/s over that wall time and
its overhead against the local job of the same round; the time from the process start to its first
committed unit (a marker in commits/); the steady rate, edited rows committed after that first marker
over the seconds from it to the last marker (start-up and shut-down left out), and its overhead; and
the driver's peak RSS (summary.json: the process that runs the job; the Ray actors' memory is their own,
and bounded the same way as the local job's).

Memory at scale (--memory-rows): the driver's peak RSS at 10k and 1M rows, local and Ray 2x1, with the
models' compute replaced by a constant editor (z unchanged, zero logits; `run_job(editor_factory=...)`),
so that a million rows take a minute instead of half an hour of a shared 2-core machine. Everything else
is the real job: manifest plan, the duplicate pass, units, reading, validation, tables, commits, the
summary; and the driver receives commits faster than with a model, which is the harder case for it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# This file is benchmarks/ray.py: with its folder on sys.path (Python puts a script's folder first), `import
# ray` would import this file instead of Ray, here and in Ray's workers. So the folder comes off the path,
# and benchmarks/job.py (for its models) is loaded by file name.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
_spec = importlib.util.spec_from_file_location("zsteer_benchmarks_job", _HERE / "job.py")
_job = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_job)
ATTRIBUTE, make_models = _job.ATTRIBUTE, _job.make_models

ZSTEER = str(Path(sys.executable).with_name("zsteer"))


def sample(rows: int, seed: int, path: Path) -> Path:
    """A manifest of ``rows`` latents (`zsteer sample`, row groups of 8192)."""
    subprocess.run(
        [ZSTEER, "sample", "--n", str(rows), "--seed", str(seed), "--out", str(path)],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return path


class Markers:
    """The commit markers of a running job as they appear: when the first and the last came, and the
    edited rows committed after the first one (the steady rate's numerator)."""

    def __init__(self, out: Path):
        self.commits, self.seen = out / "commits", set()
        self.first = self.last = None  # seconds from the process start
        self.edited_after_first = 0

    def poll(self, now: float) -> None:
        if not self.commits.is_dir():
            return
        new = [p for p in self.commits.glob("commit-*.json") if p.name not in self.seen]
        if not new:
            return
        edited = 0
        for path in new:
            self.seen.add(path.name)
            edited += json.loads(path.read_text())["edited"]
        if self.first is None:
            self.first = now  # the rows of the markers found first count as start-up
        else:
            self.edited_after_first += edited
        self.last = now

    @property
    def steady(self) -> float | None:
        """latents/s from the first marker to the last (None: they all came at once)."""
        if self.first is None or self.last is None or self.last <= self.first:
            return None
        return self.edited_after_first / (self.last - self.first)


def run_variant(cmd: list[str], out: Path) -> dict:
    """Run one `zsteer edit`: its wall time, the first and last commit markers' times, its steady rate
    after the first marker, and its summary.json."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    markers = Markers(out)
    while proc.poll() is None:
        markers.poll(time.perf_counter() - start)
        time.sleep(0.05)
    wall = time.perf_counter() - start
    err = proc.stderr.read()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}\nfailed (rc {proc.returncode}):\n{err[-3000:]}")
    markers.poll(wall)  # any that came in the last interval
    summary = json.loads((out / "summary.json").read_text())
    first = markers.first if markers.first is not None else wall
    return {"wall": wall, "first": first, "steady": markers.steady, "summary": summary}


class ConstantEditor:
    """An Editor with no model compute: z unchanged, zero logits, status STEPS_DONE (memory runs only)."""

    def __init__(self, n_attributes: int):
        self.n_attributes = n_attributes

    def edit_batch(self, batch, render: bool = True):
        import torch

        from zsteer.core.status import STEPS_DONE
        from zsteer.pipeline.editor import EditResult

        z = torch.as_tensor(batch.z)  # [N, z_dim]
        n = z.shape[0]
        logits = torch.zeros(n, self.n_attributes)  # [N, A]
        return EditResult(
            z_edited=z.clone(), logits_before=logits, logits_after=logits, latent_shift=torch.zeros(n),
            steps_taken=torch.zeros(n, dtype=torch.int32), status=torch.full((n,), STEPS_DONE, dtype=torch.int32),
            images=None,
        )  # fmt: skip

    def render(self, z, labels=None):
        raise NotImplementedError("images are off in the memory runs")


def constant_editor(generator, classifier) -> ConstantEditor:
    return ConstantEditor(len(classifier.attributes))


def memory_child(manifest: str, out: str, models: list[str], executor: str, batch_size: int) -> None:
    """One memory run, as this process: the job with the constant editor (its summary has the peak)."""
    from zsteer.jobs.config import EditSpec, JobConfig, OutputConfig
    from zsteer.jobs.runner import run_job
    from zsteer.pipeline.config import EngineConfig
    from zsteer.pipeline.loading import ModelSource

    options = (("num_workers", 2), ("cpus_per_worker", 1.0)) if executor == "ray" else ()
    config = JobConfig(
        manifests=(manifest,), output=OutputConfig(out=Path(out), images="none", workers=0),
        models=ModelSource(generator=Path(models[0]), classifier=Path(models[1])),
        edit=EditSpec(targets=(ATTRIBUTE,)), engine=EngineConfig(batch_size=batch_size),
        executor=executor, executor_options=options,
    )  # fmt: skip
    run_job(config, editor_factory=constant_editor)


def memory(args, tmp: Path, models) -> None:
    print(
        f"\ndriver peak memory, images none, constant editor (no model compute), batch {args.batch_size}; "
        "Ray: 2 workers of 1 CPU"
    )
    print(
        f"{'rows':>9} {'variant':>12} {'wall s':>8} {'rows/s':>10} {'first unit s':>12} {'driver peak MB':>15}"
    )
    for rows in args.memory_rows:
        manifest = sample(rows, 2, tmp / f"mem{rows}.parquet")
        for executor in ("local", "ray"):
            out = tmp / f"mem-{rows}-{executor}"
            cmd = [sys.executable, __file__, "--memory-child", str(manifest), str(out), *map(str, models),
                   executor, str(args.batch_size)]  # fmt: skip
            res = run_variant(cmd, out)
            s = res["summary"]
            assert s["complete"] and s["rows_done"] == rows, s
            name = "local" if executor == "local" else "ray 2x1"
            print(
                f"{rows:9d} {name:>12} {res['wall']:8.1f} {rows / res['wall']:10.1f} {res['first']:12.1f} "
                f"{s['peak_rss_mb']:15.1f}",
                flush=True,
            )
            shutil.rmtree(out, ignore_errors=True)
        manifest.unlink()


def main() -> None:
    if sys.argv[1:2] == ["--memory-child"]:
        manifest, out, gen, cls, executor, batch = sys.argv[2:8]
        memory_child(manifest, out, [gen, cls], executor, int(batch))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[4096])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--unit-rows", type=int, default=512, help="rows per unit: several units per worker")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--ray-shapes", nargs="+", default=["1x2", "2x1"], help="WORKERSxCPUS_PER_WORKER")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--skip-local", action="store_true", help="Ray variants only")
    parser.add_argument("--memory-rows", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="zsteer-ray-bench-"))
    try:
        models = make_models(tmp, args.hidden)
        print(
            f"zsteer edit, images none, {args.steps}-step edit, batch {args.batch_size}, units of "
            f"{args.unit_rows} rows, course architectures at hidden {args.hidden} (z 64, 40 attributes); "
            f"{args.cpus} CPUs for each variant; Python {sys.version.split()[0]}"
        )
        print(
            f"{'rows':>9} {'round':>5} {'variant':>12} {'wall s':>8} {'latents/s':>10} {'overhead':>9} "
            f"{'first unit s':>12} {'steady/s':>9} {'overhead':>9} {'driver peak MB':>15}"
        )
        for rows in args.rows:
            manifest = sample(rows, 1, tmp / f"m{rows}.parquet")
            base = [
                ZSTEER, "edit", "-m", str(manifest), "--generator", str(models[0]), "--classifier",
                str(models[1]), "-t", ATTRIBUTE, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                "--unit-rows", str(args.unit_rows), "--images", "none", "--workers", "0",
            ]  # fmt: skip
            variants = {} if args.skip_local else {"local": base + ["--threads", str(args.cpus)]}
            for shape in args.ray_shapes:
                workers, cpus = (int(n) for n in shape.split("x"))
                variants[f"ray {shape}"] = base + [
                    "--executor", "ray", "--num-workers", str(workers), "--cpus-per-worker", str(cpus),
                ]  # fmt: skip
            for r in range(args.rounds):
                local = None  # the local run of this round
                for name, cmd in variants.items():
                    out = tmp / f"out-{rows}-{name.replace(' ', '')}"
                    res = run_variant(cmd + ["--out", str(out)], out)
                    s = res["summary"]
                    assert s["complete"] and s["rows_done"] == rows, s
                    local = local or res
                    overhead = "-" if args.skip_local else f"{res['wall'] / local['wall'] - 1:+.1%}"
                    steady = "-" if res["steady"] is None else f"{res['steady']:.1f}"
                    steady_overhead = (
                        "-" if args.skip_local or res["steady"] is None or local["steady"] is None
                        else f"{local['steady'] / res['steady'] - 1:+.1%}"
                    )  # fmt: skip
                    print(
                        f"{rows:9d} {r + 1:5d} {name:>12} {res['wall']:8.1f} {s['edited'] / res['wall']:10.1f} "
                        f"{overhead:>9} {res['first']:12.1f} {steady:>9} {steady_overhead:>9} "
                        f"{s['peak_rss_mb']:15.1f}",
                        flush=True,
                    )
                    shutil.rmtree(out, ignore_errors=True)
            manifest.unlink()
        if not args.skip_memory:
            memory(args, tmp, models)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
