"""The local executor against the Ray executor: the same rows and settings, side by side in one run.

    flock /tmp/zsteer-heavy.lock python benchmarks/ray.py [--rows 10000 1000000] [--steps 1] [--hidden 1]
        [--batch-size 256] [--cpus 2] [--ray-shapes 1x2 2x1] [--rounds 1] [--skip-local]

Each variant is `zsteer edit` as its own process (so its peak memory is its own), images off, on one
manifest per size (`zsteer sample`, row groups of 8192), with the course architectures at width --hidden
(z_dim 64, 40 attributes, random weights; benchmarks/job.py). Equal cores: the local job runs torch on
--cpus threads; a Ray shape WxC is W workers of C CPUs each (W*C = --cpus) on a local Ray instance the
job starts itself, so Ray's start-up is part of what is measured. Variants alternate for --rounds rounds.

Reported per variant: wall seconds of the process, latents/s (edited rows over that wall time), the
overhead against the local job of the same round, the time from the process start to its first committed
unit (a marker in commits/), and the driver's peak RSS (summary.json: the process that runs the job; the
Ray actors' memory is their own, and bounded the same way as the local job's).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from job import ATTRIBUTE, make_models  # noqa: E402 (benchmarks/ is not a package)

ZSTEER = str(Path(sys.executable).with_name("zsteer"))


def run_variant(cmd: list[str], out: Path) -> dict:
    """Run one `zsteer edit`; its wall time, time to the first commit marker, and its summary.json."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = None
    while proc.poll() is None:
        if first is None and (out / "commits").is_dir() and any((out / "commits").glob("commit-*.json")):
            first = time.perf_counter() - start
        time.sleep(0.05)
    wall = time.perf_counter() - start
    err = proc.stderr.read()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}\nfailed (rc {proc.returncode}):\n{err[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return {"wall": wall, "first": first if first is not None else wall, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--ray-shapes", nargs="+", default=["1x2", "2x1"], help="WORKERSxCPUS_PER_WORKER")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--skip-local", action="store_true", help="Ray only (e.g. a memory run at 1M rows)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="zsteer-ray-bench-"))
    try:
        models = make_models(tmp, args.hidden)
        print(
            f"zsteer edit, images none, {args.steps}-step edit, batch {args.batch_size}, course architectures "
            f"at hidden {args.hidden} (z 64, 40 attributes); {args.cpus} CPUs for each variant; "
            f"Python {sys.version.split()[0]}"
        )
        print(
            f"{'rows':>9} {'round':>5} {'variant':>12} {'wall s':>8} {'latents/s':>10} {'overhead':>9} "
            f"{'first unit s':>12} {'driver peak MB':>15}"
        )
        for rows in args.rows:
            manifest = tmp / f"m{rows}.parquet"
            subprocess.run(
                [ZSTEER, "sample", "--n", str(rows), "--seed", "1", "--out", str(manifest)],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            base = [
                ZSTEER, "edit", "-m", str(manifest), "--generator", str(models[0]), "--classifier",
                str(models[1]), "-t", ATTRIBUTE, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                "--images", "none", "--workers", "0",
            ]  # fmt: skip
            variants = {} if args.skip_local else {"local": base + ["--threads", str(args.cpus)]}
            for shape in args.ray_shapes:
                workers, cpus = (int(n) for n in shape.split("x"))
                variants[f"ray {shape}"] = base + [
                    "--executor", "ray", "--num-workers", str(workers), "--cpus-per-worker", str(cpus),
                ]  # fmt: skip
            for r in range(args.rounds):
                local_wall = None
                for name, cmd in variants.items():
                    out = tmp / f"out-{rows}-{name.replace(' ', '')}"
                    res = run_variant(cmd + ["--out", str(out)], out)
                    s = res["summary"]
                    assert s["complete"] and s["rows_done"] == rows, s
                    local_wall = local_wall or res["wall"]
                    overhead = "-" if args.skip_local else f"{res['wall'] / local_wall - 1:+.1%}"
                    print(
                        f"{rows:9d} {r + 1:5d} {name:>12} {res['wall']:8.1f} {s['edited'] / res['wall']:10.1f} "
                        f"{overhead:>9} {res['first']:12.1f} {s['peak_rss_mb']:15.1f}",
                        flush=True,
                    )
                    shutil.rmtree(out, ignore_errors=True)
            manifest.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
