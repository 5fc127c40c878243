"""onnxruntime against torch eager on the CPU, side by side in one run (course-size models, batch 128).

    python benchmarks/onnx.py [--batch 128] [--steps 10] [--repeats 3] [--threads 2] [--exporter dynamo]

Measures the generator forward (images/s) and a full edit of ``--steps`` steps (latents/s, no image
rendering) for ``AscentEngine`` (torch eager, BatchNorm folded, channels_last: the engine's defaults)
and ``OrtAscentEngine`` (onnxruntime CPU provider, host loop). The models are the course architectures
(z_dim 64, hidden 64, 40 attributes) with unit-gain random weights: throughput does not depend on the
values, but denormals and dead ReLUs of a bad init could.

The process re-executes itself once with the glibc allocator told to keep its large blocks
(docs/NOTES.md, "glibc allocator settings": page-fault churn on the activations otherwise costs 20-40%).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys

# This file is named onnx.py: run as a script, its folder comes first on sys.path and it would shadow the
# onnx package that torch.onnx and zsteer.export import. The models come from the tests' helpers
# (tests/exportkit.py), which are not part of the package.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.append(os.path.join(os.path.dirname(_HERE), "tests"))

from zsteer.cli.malloc import MALLOC_ENV, reexec_with_malloc_settings  # noqa: E402 (after the path fix)
from zsteer.jobs.bench.timing import WallClock  # noqa: E402


def _timed_pair(fn_a, fn_b, repeats: int) -> tuple[list[float], list[float]]:
    """Seconds per call of two functions, interleaved (a, b, a, b, ...) so that load from elsewhere on
    a noisy machine falls on both sides alike; each call timed by the bench's clock."""
    fn_a(), fn_b()  # warm-up: first-call allocations, oneDNN primitive creation, ORT arena growth
    clock = WallClock()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, out in ((fn_a, times[0]), (fn_b, times[1])):
            out.append(clock.time(fn))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--exporter", default="dynamo", choices=("dynamo", "torchscript"))
    args = parser.parse_args()
    reexec_with_malloc_settings()

    import torch
    from exportkit import gain_models

    from zsteer.export.backend import OrtAscentEngine
    from zsteer.export.graphs import EditVJP
    from zsteer.export.onnx_export import export_graphs
    from zsteer.pipeline.engine import AscentConfig, AscentEngine, EngineConfig, default_preserve
    from zsteer.pipeline.network import EditNet

    torch.set_num_threads(args.threads)
    import onnxruntime

    generator, classifier = gain_models(z_dim=64, hidden_dim=64, n_attributes=40)
    net = EditNet(generator, classifier)  # folded, channels_last: what the torch engine runs
    config = AscentConfig(steps=args.steps, penalty=0.1)
    engine_config = EngineConfig(batch_size=args.batch, compile="off")

    exported = []
    export_s = WallClock().time(
        lambda: exported.append(
            export_graphs(
                EditVJP(EditNet(generator, classifier, channels_last=False)), (False,), args.exporter
            )
        )
    )
    graphs = exported[0]
    torch_engine = AscentEngine(net, config, engine_config)
    ort_engine = OrtAscentEngine(None, config, engine_config, graphs=graphs, threads=args.threads)

    g = torch.Generator().manual_seed(0)
    z = torch.randn(args.batch, 64, generator=g)
    weights = torch.zeros(args.batch, 40)
    weights[:, 31] = 1.0  # "Smiling" in the course's list
    preserve = default_preserve(weights)
    z_np = z.numpy()
    gen_session = ort_engine.sessions["generator"]

    def torch_generate():
        with torch.no_grad():
            net.generate(z)

    rows = [
        ("generator forward", "images/s", torch_generate, lambda: gen_session.run(None, {"z": z_np})),
        (
            f"{args.steps}-step edit",
            "latents/s",
            lambda: torch_engine.edit(z, weights, preserve, render=False),
            lambda: ort_engine.edit(z, weights, preserve, render=False),
        ),
    ]
    print(
        f"zsteer ONNX benchmark: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible"
    )
    print(
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {onnxruntime.__version__} "
        f"({args.threads} intra-op threads), exporter {args.exporter} ({export_s:.1f} s to export)"
    )
    print(
        f"course models: z_dim 64, hidden 64, 40 attributes; batch {args.batch}; median of {args.repeats}, interleaved"
    )
    print(f"malloc env: {' '.join(f'{k}={os.environ[k]}' for k in MALLOC_ENV)}")
    print(f"{'what':<20}{'unit':<11}{'torch eager':>13}{'onnxruntime':>13}{'ratio':>8}")
    for name, unit, torch_fn, ort_fn in rows:
        t_torch, t_ort = map(statistics.median, _timed_pair(torch_fn, ort_fn, args.repeats))
        rate_torch, rate_ort = args.batch / t_torch, args.batch / t_ort
        print(f"{name:<20}{unit:<11}{rate_torch:>13.1f}{rate_ort:>13.1f}{rate_ort / rate_torch:>7.2f}x")


if __name__ == "__main__":
    main()
