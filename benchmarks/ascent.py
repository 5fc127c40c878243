"""Latents/s for a 10-step edit of the course models: zsteer vs the C1W4B notebook loop, and the bound.

    python benchmarks/ascent.py [--steps 10] [--seconds 2] [--compile] [--levers]

The bound is the machine's measured fp32 matmul peak divided by the FLOPs of one 10-step edit (forward
and input-gradient of generator and classifier, counted by torch's FlopCounterMode): both from
``zsteer.jobs.bench.roofline``, and every variant is timed by the bench's timing core (first call apart,
warm-up, windows until three agree), so these figures and `zsteer bench`'s are measured the same way.
All variants run in one process, taking turns window by window, so their ratios hold on a noisy machine.
The glibc allocator is told to keep large blocks (docs/NOTES.md, "glibc allocator settings"): the script
re-executes itself with those variables. `zsteer bench` measures the zsteer rows of this table too; this
script adds the notebook's loop beside them. ``--levers`` adds, at batch 128, the engine with every
convolution run plainly by oneDNN (no pipeline/phase_conv.py or pipeline/wide_conv.py forms) and the
opt-in bf16 network.
"""

from __future__ import annotations

import argparse

from zsteer.cli.malloc import reexec_with_malloc_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=2.0, help="shortest measurement window per variant")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time the torch.compile'd step")
    parser.add_argument(
        "--levers", action="store_true", help="also time the step with plain convolutions and in bf16"
    )
    args = parser.parse_args()
    reexec_with_malloc_settings()

    import torch

    from zsteer.jobs.bench.config import RunControl
    from zsteer.jobs.bench.models import course_size_models
    from zsteer.jobs.bench.roofline import ascent_flops_per_latent, matmul_peak
    from zsteer.jobs.bench.timing import Meter, measure_interleaved
    from zsteer.pipeline.attributes import CELEBA40
    from zsteer.pipeline.engine import (
        AscentConfig,
        AscentEngine,
        EngineConfig,
        default_preserve,
        make_engine,
        target_vector,
    )
    from zsteer.pipeline.network import EditNet

    torch.set_num_threads(args.threads)
    gen_m, cls_m = course_size_models(seed=0)
    gen, cls = gen_m.module, cls_m.module
    smiling = CELEBA40.index("Smiling")

    control = RunControl(warmup_seconds=1.0, min_seconds=args.seconds, min_iterations=3)

    def notebook(n: int):
        """The notebook's loop: parameter grads on, eager modules, z.grad accumulated."""
        g, c = gen.requires_grad_(True), cls.requires_grad_(True)
        other = [i != smiling for i in range(40)]
        noise = torch.randn(n, 64).requires_grad_()
        original = c(g(noise)).detach()
        for _ in range(args.steps):
            c.zero_grad()
            current = c(g(noise))
            penalty = -torch.norm(current[:, other] - original[:, other], dim=1).mean() * 0.1
            (current[:, smiling].mean() + penalty).backward()
            noise.data = noise + noise.grad * (1 / args.steps)

    def zsteer_edit(n: int, compile_mode: str, precision: str = "fp32", fast_forms: bool = True):
        ascent, config = (
            AscentConfig(steps=args.steps, lr=0.1),
            EngineConfig(n, compile=compile_mode, precision=precision),
        )
        if fast_forms:
            engine = make_engine(gen_m, cls_m, ascent, config)
        else:  # the fast layout with every convolution left to oneDNN and autograd
            engine = AscentEngine(EditNet(gen_m, cls_m, fast_forms=False), ascent, config)
        w = target_vector([(smiling, 1.0)], 40).expand(n, 40)
        p = default_preserve(w)
        return lambda: engine.edit(torch.randn(n, 64), w, p, render=False)

    # FLOPs of one edit per latent (input gradients only, then the final forward), counted on the plain
    # folded network: the models' arithmetic, as `zsteer bench` counts it.
    flops_per_latent = ascent_flops_per_latent(EditNet(gen_m, cls_m), args.steps)
    matmul_rate = matmul_peak("cpu", torch.float32, 1.0)["gflops"] * 1e9
    bound = matmul_rate / flops_per_latent

    variants = {"notebook loop, batch 8": (lambda: notebook(8), 8)}
    for n in (8, 128):
        variants[f"zsteer eager, batch {n}"] = (zsteer_edit(n, "off"), n)
    if args.compile:
        variants["zsteer compiled, batch 128"] = (zsteer_edit(128, "on"), 128)
    if args.levers:
        variants["zsteer eager, 128, plain convs"] = (zsteer_edit(128, "off", fast_forms=False), 128)
        variants["zsteer eager, 128, bf16"] = (zsteer_edit(128, "off", precision="bf16"), 128)
    # The variants take turns window by window (the bench's --interleave), so their ratios hold on a
    # shared machine.
    measured = measure_interleaved({name: Meter(fn, n, control) for name, (fn, n) in variants.items()})
    rows = [(name, m.throughput) for name, m in measured.items()]
    unstable = [name for name, m in measured.items() if not m.stable]

    print(f"torch {torch.__version__}, {args.threads} threads, {args.steps}-step edit")
    print(f"fp32 matmul: {matmul_rate / 1e9:.1f} GFLOP/s; edit: {flops_per_latent / 1e9:.2f} GFLOP/latent")
    print(f"bound: {bound:.1f} latents/s")
    print(f"{'variant':32} {'latents/s':>10} {'x notebook':>11} {'of bound':>9}")
    base = rows[0][1]
    for name, rate in rows:
        print(f"{name:32} {rate:10.1f} {rate / base:10.2f}x {rate / bound:8.0%}")
    if unstable:
        print(f"unstable (the last three windows disagreed by more than 10%): {', '.join(unstable)}")


if __name__ == "__main__":
    main()
