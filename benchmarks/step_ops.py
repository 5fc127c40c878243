"""Where a torch ascent step's time goes, call by call, and the ceiling its compute kernels set.

    python benchmarks/step_ops.py [--batch-size 128] [--threads 2] [--steps 5] [--rows 25]

The step is the engine's own (``AscentEngine._grad_step``'s forward and VJP of the course models at
hidden 64, with the fast forms the engine builds). It runs ``--steps`` times under a dispatch mode that
times every aten call and counts its FLOPs with the formulas torch's FlopCounterMode uses; the same step
is also timed plainly by the bench's timing core, before and after, so the table's "outside the calls"
row is what Python, autograd and dispatch add. Each row: calls per step, ms per step, GFLOP per step, achieved GFLOP/s and that rate
over the fp32 matmul peak measured in the same run (``zsteer.jobs.bench.roofline.matmul_peak``).

The last lines give the ceiling: the step's FLOPs (the model's, as the bound counts them) over the time of
its convolution and matmul calls alone, as a share of the peak. That is the fraction of the fp32 bound the step would reach if every
other call, and Python, took no time: what these kernels allow, whatever is fused around them.
The glibc allocator is told to keep large blocks (docs/NOTES.md), as in the other benchmarks.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

from zsteer.cli.malloc import reexec_with_malloc_settings

# The aten calls that do the arithmetic; everything else moves, masks or reshapes memory.
COMPUTE_OPS = {"convolution", "convolution_backward", "mm", "addmm", "bmm", "_convolution"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed steps under the dispatch mode")
    parser.add_argument("--rows", type=int, default=25, help="table rows (the slowest calls first)")
    args = parser.parse_args()
    reexec_with_malloc_settings()

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    from zsteer.jobs.bench.config import RunControl
    from zsteer.jobs.bench.models import course_size_models
    from zsteer.jobs.bench.roofline import matmul_peak, step_flops
    from zsteer.jobs.bench.timing import measure
    from zsteer.pipeline.engine import AscentConfig, EngineConfig, make_engine
    from zsteer.pipeline.network import EditNet

    torch.set_num_threads(args.threads)
    gen, cls = course_size_models(seed=0)
    net = make_engine(gen, cls, AscentConfig(steps=10), EngineConfig(args.batch_size, compile="off")).net
    z = torch.randn(args.batch_size, net.input_dim)  # [N, input_dim]

    def step() -> None:
        logits, vjp = torch.func.vjp(net, z)
        vjp(torch.ones_like(logits))

    calls: dict[tuple[str, str], list[float]] = defaultdict(list)  # (op, shapes) -> [seconds per call]
    flops: dict[tuple[str, str], float] = defaultdict(float)

    class TimeCalls(TorchDispatchMode):
        """Times each aten call and counts its FLOPs (FlopCounterMode's formulas, where it has one)."""

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            start = time.perf_counter()
            out = func(*args, **kwargs)
            seconds = time.perf_counter() - start
            shapes = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)][:2]
            key = (func.__name__.split(".")[0], str(shapes))
            calls[key].append(seconds)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                flops[key] += formula(*args, **kwargs, out_val=out)
            return out

    peak = matmul_peak("cpu", torch.float32, 2.0)["gflops"]
    # The plain step by the bench's timing core (warm-up, windows until three agree), before and after
    # the timed calls, whose own timing is a profile of single calls, not a throughput.
    control = RunControl(warmup_seconds=1.0, min_seconds=1.0, min_iterations=3)
    before = measure(step, 1, control)
    with TimeCalls():
        for _ in range(args.steps):
            step()
    after = measure(step, 1, RunControl(warmup_seconds=0.0, min_seconds=1.0, min_iterations=3))
    latencies = [t for m in (before, after) for w in m.measured for t in w.latencies]
    plain = statistics.median(latencies) * 1e3

    per_step = {key: sum(times) * 1e3 / args.steps for key, times in calls.items()}  # ms
    inside = sum(per_step.values())
    compute_ms = sum(ms for (op, _), ms in per_step.items() if op in COMPUTE_OPS)
    # The model's FLOPs, as the bound counts them (the plain network): the calls' own counts add the padded
    # GEMM blocks and the phase convolutions' extra taps.
    step_gflop = step_flops(EditNet(gen, cls))[1] * args.batch_size / 1e9

    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch_size}, fp32")
    print(f"fp32 matmul peak: {peak:.1f} GFLOP/s; step: {step_gflop:.2f} GFLOP")
    print(f"step, timed plainly: {plain:.1f} ms (median of {len(latencies)})")
    print()
    print("| aten call | input shapes | calls | ms / step | GFLOP | GFLOP/s | of peak |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for key in sorted(per_step, key=per_step.get, reverse=True)[: args.rows]:
        op, shapes = key
        ms, gflop = per_step[key], flops[key] / args.steps / 1e9
        rate = f"{gflop / ms * 1e3:.0f} | {gflop / ms * 1e3 / peak:.0%}" if gflop else "- | -"
        print(f"| {op} | {shapes} | {len(calls[key]) // args.steps} | {ms:.2f} | {gflop:.3f} | {rate} |")
    print(f"| (all other calls) | | | {inside - sum(sorted(per_step.values())[-args.rows :]):.2f} | | | |")
    print(f"| (outside the calls: Python, autograd, dispatch) | | | {plain - inside:.2f} | | | |")
    print()
    print(
        f"convolutions and matmuls: {compute_ms:.1f} ms of {plain:.1f} ({compute_ms / plain:.0%} of the step)"
    )
    print(
        f"the step: {step_gflop / plain * 1e3:.0f} GFLOP/s, {step_gflop / plain * 1e3 / peak:.0%} of the peak"
    )
    ceiling = step_gflop / compute_ms * 1e3
    print(f"ceiling (every other call free): {ceiling:.0f} GFLOP/s, {ceiling / peak:.0%} of the peak")


if __name__ == "__main__":
    main()
