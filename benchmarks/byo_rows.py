"""Latents/s of an ascent on imported (.pt2) models: one graph call per row (exact) vs whole batches.

    python benchmarks/byo_rows.py [--rows 64] [--steps 10] [--seconds 1]

Imported models run each row in a graph call of its own, so a row's bits do not depend on its batch
(docs/NOTES.md, "Batch invariance of an arbitrary graph"); this measures what that costs on the tests'
non-course architectures (tests/byokit.py: a residual generator and a pooled classifier), imported into
a temporary folder. Both variants run in one process, one thread, timed by the bench's timing core, so
their ratio is comparable on a noisy machine. The models are tiny, so per-call overhead dominates: a
larger model loses less.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from zsteer.jobs.bench.config import RunControl
from zsteer.jobs.bench.timing import measure
from zsteer.pipeline.checkpoints import load_classifier, load_generator
from zsteer.pipeline.config import AscentConfig, EngineConfig
from zsteer.pipeline.engine import AscentEngine
from zsteer.pipeline.generic_net import ModelNet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=1.0, help="shortest measurement window")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from byokit import import_all  # the tests' models: the same ones the tests import

    with tempfile.TemporaryDirectory() as tmp:
        paths = import_all(Path(tmp))
        gen, cls = load_generator(paths["residual"]), load_classifier(paths["pooled"])
        z = torch.randn(args.rows, gen.spec.z_dim, generator=torch.Generator().manual_seed(0))
        weights = torch.zeros(args.rows, len(cls.attributes))
        weights[:, 0] = 1.0
        control = RunControl(warmup_seconds=args.seconds, min_seconds=args.seconds)
        rates = {}
        for name, row_by_row in (("one call per row (exact)", True), ("whole batches", False)):
            engine = AscentEngine(
                ModelNet(gen, cls, row_by_row=row_by_row),
                AscentConfig(steps=args.steps, lr=0.5),
                EngineConfig(batch_size=args.rows),
            )
            found = measure(lambda e=engine: e.edit(z, weights, (weights == 0).float()), args.rows, control)
            rates[name] = found.throughput
            print(f"{name:26s} {found.throughput:8.1f} latents/s  (stable: {found.stable})")
        exact, batched = rates.values()
        print(f"batched / exact: {batched / exact:.1f}x")


if __name__ == "__main__":
    main()
