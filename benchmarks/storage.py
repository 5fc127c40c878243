"""The job on a plain path against the same job on object-store URIs: same rows and settings, side by side.

    flock /tmp/zsteer-heavy.lock python benchmarks/storage.py [--rows 8192] [--steps 1] [--hidden 64]
        [--unit-rows 512] [--rounds 2]

Each variant is `zsteer edit` as its own process, images off, on one manifest (`zsteer sample`), with the
course architectures at width --hidden (benchmarks/job.py) and one ascent step, so that writing the
output is a visible share of the run, which is where the variants differ:

- `path`: a plain --out and -m (temporary names, fsync, rename: the protocol before URIs);
- `file://`: the same folder by URI, through the object-store protocol (one whole write per file, no
  rename, markers by a create-only write, the lease object);
- `s3://` (when moto[server] and boto3 are installed): the manifest and --out on a local S3 (moto's
  server in this process: every request a local HTTP round trip, so it measures the protocol's requests,
  not a network).

Reported per variant: wall seconds of the process, the job's write-stage seconds (summary.json: shards
and markers), latents/s over the wall time and the ratio to the plain path of the same round. Every
variant's rows are checked equal to the plain path's, bit for bit.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from zsteer.jobs.folder import JobFolder
from zsteer.jobs.storage import locate, storage_of

_HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("zsteer_benchmarks_job", _HERE / "job.py")
_job = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_job)

ZSTEER = str(Path(sys.executable).with_name("zsteer"))
BUCKET = "zsteer-bench"


def committed_rows(out: str) -> pa.Table:
    """The job's edited rows (from its markers), sorted by id."""
    folder = JobFolder(locate(out, "--out"))
    tables = []
    for path in folder.committed_parts():
        with folder.storage.parquet_file(path) as pf:
            tables.append(pf.read())
    return pa.concat_tables(tables).sort_by("id")


def s3_server(data: Path):
    """A moto S3 server holding the manifest; the URI query that reaches it (None without moto)."""
    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ImportError:
        return None, None
    os.environ.update(AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x", AWS_DEFAULT_REGION="us-east-1")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    client = boto3.client("s3", endpoint_url=f"http://{host}:{port}")
    client.create_bucket(Bucket=BUCKET)
    client.upload_file(str(data), BUCKET, f"data/{data.name}")
    return server, f"endpoint_override={host}:{port}&scheme=http&region=us-east-1"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--unit-rows", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="zsteer-storage-bench-") as tmp_name:
        tmp = Path(tmp_name)
        models = _job.make_models(tmp, args.hidden)
        manifest = tmp / "data" / "m.parquet"
        manifest.parent.mkdir()
        subprocess.run(
            [ZSTEER, "sample", "--n", str(args.rows), "--out", str(manifest)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        server, query = s3_server(manifest)
        base = [
            ZSTEER, "edit", "--generator", str(models[0]), "--classifier", str(models[1]), "-t", _job.ATTRIBUTE,
            "--steps", str(args.steps), "--unit-rows", str(args.unit_rows), "--images", "none", "--workers", "0",
            "--threads", "1",
        ]  # fmt: skip
        try:
            print(
                f"{args.rows} rows, {args.steps} step(s), width {args.hidden}, units of {args.unit_rows} rows"
            )
            print(
                f"{'variant':10} {'round':>5} {'wall s':>8} {'write s':>8} {'latents/s':>10} {'vs path':>8}"
            )
            reference = None
            for r in range(args.rounds):
                variants = {
                    "path": ([str(manifest)], str(tmp / f"path{r}")),
                    "file://": ([f"file://{manifest}"], f"file://{tmp}/file{r}"),
                }
                if query is not None:
                    variants["s3://"] = ([f"s3://{BUCKET}/data?{query}"], f"s3://{BUCKET}/job{r}?{query}")
                path_rate = None
                for name, (manifests, out) in variants.items():
                    cmd = base + [a for m in manifests for a in ("-m", m)] + ["--out", out]
                    start = time.perf_counter()
                    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
                    wall = time.perf_counter() - start
                    root = locate(out, "--out")
                    summary = json.loads(storage_of(root).read_bytes(root / "summary.json"))
                    rate = summary["edited"] / wall
                    path_rate = path_rate or rate
                    rows = committed_rows(out)
                    reference = reference if reference is not None else rows
                    assert rows.equals(reference), f"{name}: rows differ from the plain path's"
                    print(
                        f"{name:10} {r:>5} {wall:>8.2f} {summary['stage_seconds']['write']:>8.2f} "
                        f"{rate:>10.0f} {rate / path_rate:>8.2f}"
                    )
        finally:
            if server is not None:
                server.stop()


if __name__ == "__main__":
    main()
