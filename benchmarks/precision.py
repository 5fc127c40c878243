"""bf16 against fp32 on the demo models, judged: what `--precision bf16` does to the edits.

    flock /tmp/zsteer-heavy.lock python benchmarks/precision.py [--n 128] [--attributes Smiling,Eyeglasses,BlondHair]
                                                               [--penalties 0,1] [--out runs/precision] [--threads 2]

For each attribute and penalty, the demo's ascent (12 unit steps of 0.5, as benchmarks/quality.py) runs
as an edit job twice on the same --n sampled latents, once per precision, and each job is judged by the
demo judge (`zsteer report`'s numbers, jobs/report.py), never by the steering classifier. Reported per
pair: the judged success rate and mean other-attribute drift of each, and how far the bf16 latents end
from the fp32 ones: max and mean over rows of |z_bf16 - z_fp32| (largest coordinate), and the mean of
||z_bf16 - z_fp32|| / ||z_fp32 - z0|| (the difference as a fraction of the edit itself), beside the same for an fp32 job whose latents start
one float32 ulp away: the floor that any change of rounding meets, since the iteration is chaotic
(docs/NOTES.md, "Comparing two computations"). Job rates
(latents/s) are the jobs' own, one after the other: compare speed with `zsteer bench --precision
fp32,bf16 --interleave` instead.

Writes OUT/precision.json and OUT/precision.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from quality import DEMO_ASCENT

from zsteer.demo import demo_paths
from zsteer.jobs.ascent_method import AscentMethod
from zsteer.jobs.config import EditSpec, JobConfig, OutputConfig
from zsteer.jobs.jobview import open_job
from zsteer.jobs.report import ReportConfig, report_job
from zsteer.jobs.runner import run_job
from zsteer.jobs.sample import SampleConfig, write_sample
from zsteer.pipeline.checkpoints import load_classifier
from zsteer.pipeline.config import EngineConfig
from zsteer.pipeline.loading import ModelSource

# (label, precision, manifest): bf16 against fp32, and fp32 from latents one ulp away as the floor any
# change of rounding meets (the iteration is chaotic: docs/NOTES.md, "Comparing two computations").
RUNS = (("fp32", "fp32", "manifest"), ("bf16", "bf16", "manifest"), ("ulp", "fp32", "nudged"))


def run_edit(attribute: str, penalty: float, precision: str, manifest: Path, out: Path, paths) -> dict:
    """One ascent job in a fresh folder; its summary."""
    shutil.rmtree(out, ignore_errors=True)
    config = JobConfig(
        manifests=(str(manifest),),
        output=OutputConfig(out=out, workers=0, images="none"),
        models=ModelSource(paths["generator"], paths["classifier"]),
        edit=EditSpec(targets=(attribute,)),
        method=AscentMethod(replace(DEMO_ASCENT, penalty=penalty)),
        engine=EngineConfig(precision=precision),
        progress_seconds=1e9,
    )
    return run_job(config).summary


def latents_of(path: Path, column: str) -> np.ndarray:
    """A fixed-size-list column of a Parquet file or a job's parts/, ordered by id: [n, z_dim]."""
    files = sorted((path / "parts").glob("*.parquet")) if path.is_dir() else [path]
    table = pa.concat_tables(pq.read_table(f, columns=["id", column]) for f in files).sort_by("id")
    values = table.column(column).combine_chunks()
    return np.asarray(values.flatten()).reshape(len(values), -1)


def nudged(manifest: Path, out: Path) -> Path:
    """The manifest with every coordinate of z moved one float32 ulp up."""
    table = pq.read_table(manifest)
    z = latents_of(manifest, "z")
    up = np.nextafter(z, np.float32(np.inf)).astype(np.float32)
    column = pa.FixedSizeListArray.from_arrays(pa.array(up.reshape(-1)), z.shape[1])
    pq.write_table(table.set_column(table.schema.get_field_index("z"), "z", column), out)
    return out


def latent_gap(fp32: Path, bf16: Path, manifest: Path) -> dict:
    """How far the ``bf16`` job's edit ends from the ``fp32`` one's, per row, summarised."""
    z32, z16, z0 = latents_of(fp32, "z_edited"), latents_of(bf16, "z_edited"), latents_of(manifest, "z")
    gap = np.abs(z16 - z32).max(axis=1)  # [n] largest coordinate difference per row
    relative = np.linalg.norm(z16 - z32, axis=1) / np.maximum(np.linalg.norm(z32 - z0, axis=1), 1e-12)
    return {
        "max_abs_z_diff": float(gap.max()),
        "mean_abs_z_diff": float(np.abs(z16 - z32).mean()),
        "mean_row_max_abs_z_diff": float(gap.mean()),
        "mean_relative_z_diff": float(relative.mean()),
        "max_relative_z_diff": float(relative.max()),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=128, help="latents edited per job")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--attributes", default="Smiling,Eyeglasses,BlondHair")
    ap.add_argument("--penalties", default="0,1")
    ap.add_argument("--out", type=Path, default=Path("runs/precision"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    paths = demo_paths()
    judge = load_classifier(paths["judge"])
    manifest = write_sample(SampleConfig(args.n, args.seed, args.out / "manifest.parquet"))
    manifests = {"manifest": manifest, "nudged": nudged(manifest, args.out / "nudged.parquet")}
    rows = []
    for attribute in (a.strip() for a in args.attributes.split(",") if a.strip()):
        for penalty in (float(p) for p in args.penalties.split(",")):
            folders, judged = {}, {}
            for label, precision, source in RUNS:
                folder = args.out / attribute / f"l{penalty:g}_{label}"
                summary = run_edit(attribute, penalty, precision, manifests[source], folder, paths)
                config = ReportConfig(
                    jobs=(folder,), judge=paths["judge"], out=args.out, targets=(attribute,)
                )
                report = report_job(open_job(folder), judge, config)
                t = report["targets"][0]
                folders[label] = folder
                judged[label] = {
                    "success_rate": t["success_rate"],
                    "mean_other_drift": t["mean_other_drift"],
                    "mean_other_flip_rate": t["mean_other_flip_rate"],
                    "target_prob_after": t["target_prob_after"],
                    "latent_shift": t["latent_shift"],
                    "latents_per_second": summary.get("latents_per_second"),
                }
            row = {
                "attribute": attribute, "penalty": penalty, **judged,
                "bf16_vs_fp32": latent_gap(folders["fp32"], folders["bf16"], manifest),
                "ulp_vs_fp32": latent_gap(folders["fp32"], folders["ulp"], manifest),
            }  # fmt: skip
            rows.append(row)
            print(line(row), flush=True)
    result = {
        "n": args.n,
        "seed": args.seed,
        "threads": args.threads,
        "ascent": DEMO_ASCENT.__dict__,
        "rows": rows,
    }
    (args.out / "precision.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "precision.md").write_text(markdown(rows))
    print(markdown(rows))


def line(row: dict) -> str:
    a, b, g, f = row["fp32"], row["bf16"], row["bf16_vs_fp32"], row["ulp_vs_fp32"]
    return (
        f"{row['attribute']:10} l{row['penalty']:g}: success {a['success_rate']:.3f} -> {b['success_rate']:.3f}, "
        f"judged drift {a['mean_other_drift']:.4f} -> {b['mean_other_drift']:.4f}, "
        f"|z diff| max {g['max_abs_z_diff']:.4f} mean {g['mean_abs_z_diff']:.5f}, relative to the edit "
        f"{g['mean_relative_z_diff']:.4f} (max {g['max_relative_z_diff']:.4f}); fp32 one ulp away: "
        f"{f['mean_relative_z_diff']:.4f} (max {f['max_relative_z_diff']:.4f})"
    )


def markdown(rows: list[dict]) -> str:
    out = [
        "| attribute | penalty | success fp32 / bf16 | judged drift fp32 / bf16 | max abs z diff | mean abs z diff "
        "| z diff / edit, mean (max) | fp32 from z0 + 1 ulp: z diff / edit, mean (max) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        a, b, g, f = r["fp32"], r["bf16"], r["bf16_vs_fp32"], r["ulp_vs_fp32"]
        out.append(
            f"| {r['attribute']} | {r['penalty']:g} | {a['success_rate']:.3f} / {b['success_rate']:.3f} "
            f"| {a['mean_other_drift']:.4f} / {b['mean_other_drift']:.4f} | {g['max_abs_z_diff']:.4f} "
            f"| {g['mean_abs_z_diff']:.5f} | {g['mean_relative_z_diff']:.4f} ({g['max_relative_z_diff']:.4f}) "
            f"| {f['mean_relative_z_diff']:.4f} ({f['max_relative_z_diff']:.4f}) |"
        )
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
