"""Latents/s of direction edits against the 10-step ascent, side by side on the demo models.

    flock /tmp/zsteer-heavy.lock python benchmarks/directions.py [--batch-size 128] [--threads 2]

One process, one editor at a time, the same latents, the bench's timing core (jobs/bench/timing.py:
warm-up, then windows until three agree). Rows: the 10-step ascent (the job's default method), a
direction edit with a fixed --alpha (one generator + classifier forward for the starting logits, one
for the edited latent), the same without scoring the start (--no-scores-before: one forward), a 7-alpha strip (per output row), and --until-prob 0.9 (a search: several
forwards per row). Images are rendered (uint8) in every row, as a job with --images png does. The issue's
goal: a fixed-alpha edit at 20x the ascent's latents/s or better.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from zsteer.cli.malloc import reexec_with_malloc_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-seconds", type=float, default=3.0)
    args = parser.parse_args()
    reexec_with_malloc_settings()

    import torch

    from zsteer.jobs.ascent_method import AscentMethod
    from zsteer.jobs.backends import BackendConfig
    from zsteer.jobs.bench.config import RunControl
    from zsteer.jobs.bench.timing import measure
    from zsteer.jobs.direction_method import DirectionMethod
    from zsteer.pipeline.config import AscentConfig, EngineConfig
    from zsteer.pipeline.direction_file import save_directions
    from zsteer.pipeline.direction_fit import FitConfig, fit_directions
    from zsteer.pipeline.editor import EditBatch
    from zsteer.pipeline.loading import ModelSource, load_models

    torch.set_num_threads(args.threads)
    generator, classifier = load_models(ModelSource())
    found = fit_directions(
        generator, classifier, FitConfig(method="gradient", n_samples=256, attributes=("Smiling",))
    )
    folder = Path(tempfile.mkdtemp(prefix="zsteer-bench-directions-"))
    path = save_directions(found, folder / "smiling")
    n, a = args.batch_size, len(classifier.attributes)
    target = classifier.attributes.index("Smiling")
    weights = torch.zeros(n, a)
    weights[:, target] = 1.0
    batch = EditBatch(z=torch.randn(n, generator.spec.z_dim, generator=torch.Generator().manual_seed(0)),
                      weights=weights, preserve=(weights == 0).float())  # fmt: skip
    engine, backend = EngineConfig(batch_size=n), BackendConfig()
    variants = {
        "ascent 10 steps": (AscentMethod(AscentConfig(steps=10, lr=0.1)), 1),
        "direction --alpha 2": (DirectionMethod(directions=path, alpha=2.0), 1),
        "direction --alpha 2 --no-scores-before": (
            DirectionMethod(directions=path, alpha=2.0, scores_before=False),
            1,
        ),
        "direction --alphas -3:3:7 (per output row)": (
            DirectionMethod(directions=path, alphas=tuple(float(x) for x in range(-3, 4))),
            7,
        ),
        "direction --until-prob 0.9": (DirectionMethod(directions=path, until_prob=0.9), 1),
    }
    control = RunControl(warmup_seconds=1.0, min_seconds=args.min_seconds, min_iterations=3)
    rates = {}
    for name, (method, outputs) in variants.items():
        editor = method.make_editor(generator, classifier, engine, backend)
        result = measure(lambda editor=editor: editor.edit_batch(batch, render=True), n * outputs, control)
        rates[name] = result.throughput
        note = "" if result.stable else " (unstable)"
        print(f"{name:<46} {result.throughput:9.1f} latents/s{note}", flush=True)
    base = rates["ascent 10 steps"]
    for name, rate in rates.items():
        print(f"{name:<46} {rate / base:6.1f}x the 10-step ascent")


if __name__ == "__main__":
    main()
