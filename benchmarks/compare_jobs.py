"""Two job folders of the same manifest and settings, row by row: do they give the same edits?

    python benchmarks/compare_jobs.py RUN_A RUN_B [--atol 1e-4] [--max-stop-mismatch 0.005]

Used by benchmarks/gpu_check.sh to compare a job run with ``--impl triton`` against ``--impl torch`` on a
GPU: the same step up to fp32 rounding, so z_edited and the logits must agree within --atol and the stop
reasons on all but --max-stop-mismatch of the rows (a row on the edge of --stop-at-prob may flip).
Exit 0 when they agree, 1 when not (with the worst rows named).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pyarrow.dataset as ds


def read_job(folder: str):
    table = ds.dataset(f"{folder}/parts", format="parquet").to_table().sort_by("id")

    def matrix(name: str) -> np.ndarray:
        column = table.column(name).combine_chunks()
        return column.flatten().to_numpy().reshape(len(table), -1)

    return {
        "id": table.column("id").to_numpy(),
        "z_edited": matrix("z_edited"),
        "logits_after": matrix("logits_after"),
        "stop_reason": np.asarray(table.column("stop_reason").to_pylist()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--atol", type=float, default=1e-4)
    parser.add_argument("--max-stop-mismatch", type=float, default=0.005)
    args = parser.parse_args()
    a, b = read_job(args.a), read_job(args.b)
    if len(a["id"]) != len(b["id"]) or not np.array_equal(a["id"], b["id"]):
        print(f"different rows: {len(a['id'])} vs {len(b['id'])}")
        return 1
    ok = True
    for name in ("z_edited", "logits_after"):
        diff = np.abs(a[name] - b[name]).max(axis=1)
        worst = int(diff.argmax()) if len(diff) else 0
        print(f"{name}: max |a - b| {diff.max() if len(diff) else 0.0:.3g} (row id {a['id'][worst]}), "
              f"{int((diff > args.atol).sum())} rows over {args.atol:g}")  # fmt: skip
        ok &= bool(len(diff) == 0 or diff.max() <= args.atol)
    mismatch = float((a["stop_reason"] != b["stop_reason"]).mean()) if len(a["id"]) else 0.0
    print(
        f"stop_reason differs on {mismatch:.2%} of {len(a['id'])} rows (at most {args.max_stop_mismatch:.2%})"
    )
    ok &= mismatch <= args.max_stop_mismatch
    print("same edits" if ok else "DIFFERENT edits")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
