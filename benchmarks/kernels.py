"""The fused kernels (objective, ascent_update) against their torch references, and their share of a step.

    python benchmarks/kernels.py [--batch 128 --batch 1024] [--no-compile] [--threads 2]

Every time is the median per call of the bench's timing core (``zsteer.jobs.bench.timing``; CUDA events on
the GPU). CPU: times the torch references, eager and torch.compile'd, against one whole ascent step of the course
models (C1W4B generator + classifier, z_dim 64, hidden 64, 40 attributes; EditNet's forward + VJP with
the objective inside, then the update), to show what share of a step these ops are. CUDA (when
torch.cuda.is_available()): also Triton against the references.

Memory traffic per row and launches per call, fp32, A = 40 attributes, D = z_dim = 64, all rows active,
batch 128. The reference numbers are counted by this script (``traffic``: every non-view aten op is one
launch; its bytes are its tensor inputs, each at most its storage, plus its outputs; printed with the
results, clean and lab mode). The Triton numbers follow from the kernels' loads and stores, each element
read or written once:

    op                          reference                 Triton, 1 launch
    objective                   16 launches, 3264 B/row   (4 reads + 1 write) x A x 4 B + score 4 B   =  804 B
    ascent_update, clean mode   88 launches, 14040 B/row  z, z0, grad read + z written: 4 x D x 4 B
                                                          + logits, weights read: 2 x A x 4 B
                                                          + status, stop_prob read; grad_norm, shift,
                                                            status, moved written: 6 x 4 B            = 1368 B
    ascent_update, lab mode     93 launches, 16351 B/row  + accum read and written: 2 x D x 4 B       = 1880 B

(Rows that are not ACTIVE skip the logits, weights and grad reads, rows that stop now skip grad.) The
reference's count grew from 72 / 77 launches with the logit-space stop test (log(p / (1 - p)): 5 ops
on [N]), the "z changed" test behind ``moved`` and the overflowed-norm guard; the kernel does the same in
registers. The reference sets status with torch.where, so it never synchronises with the GPU either.

Expected GPU gain, to be checked by running this script on a GPU (none was available to measure). At the
engine's batch of 128 rows every tensor here is under 60 KB, so neither version is bandwidth-bound: the
eager reference costs its launches, ~5-8 us of CPU dispatch each (~0.1 ms for the objective, ~0.45-0.7 ms
for the update), while a Triton version costs one launch plus its wrapper's Python checks (~20-40 us).
Expect ~3-5x on the objective and ~10-20x on the update at batch 128, about 0.5-0.8 ms saved per eager
step, more in proportion for small or compacted batches (fewer rows, same launch count). At large batches
(16k+ rows) both become bandwidth-bound and the gain tends to the byte ratio: ~4x (objective) and ~10x
(update, clean; ~8.7x lab). Under torch.compile (the engine's default on CUDA) the objective is the
``zsteer::objective`` operator and the compiled step launches the Triton kernel in place of inductor's
fusion of the reference, which is already a kernel or two: expect little there; the update runs outside
the compiled step, so its gain is the eager one. On CPU these ops are under 1% of a step (the table below),
so the reference stays the CPU path.
"""

from __future__ import annotations

import argparse
import math

# glibc keeps large blocks only if told at start-up (docs/NOTES.md, "glibc allocator settings"): without
# it page faults on the activations cost 20-40% of a step, which would inflate the step and shrink the
# ops' share.
from zsteer.cli.malloc import reexec_with_malloc_settings


def traffic(fn) -> tuple[int, int]:
    """(launches, bytes) of one call of ``fn``, counted over the aten ops it dispatches."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    def nbytes(t, cap: bool) -> int:
        n = t.numel()
        if cap:  # a broadcast input is read once, not once per use
            n = min(n, t.untyped_storage().nbytes() // t.element_size())
        return n * t.element_size()

    class Count(TorchDispatchMode):
        launches = moved = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if not func.is_view:
                flat_in = torch.utils._pytree.tree_leaves((args, kwargs or {}))
                flat_out = torch.utils._pytree.tree_leaves(out)
                Count.launches += 1
                Count.moved += sum(nbytes(t, True) for t in flat_in if isinstance(t, torch.Tensor))
                Count.moved += sum(nbytes(t, False) for t in flat_out if isinstance(t, torch.Tensor))
            return out

    with Count():
        fn()
    return Count.launches, Count.moved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, action="append", help="rows per call (repeatable; default 128)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd references")
    parser.add_argument("--seconds", type=float, default=1.0, help="minimum timing per measurement")
    args = parser.parse_args()
    batches = args.batch or [128]
    reexec_with_malloc_settings()

    import torch

    from zsteer.core.status import ACTIVE
    from zsteer.jobs.bench.config import RunControl
    from zsteer.jobs.bench.models import course_size_models
    from zsteer.jobs.bench.timing import CudaClock, measure
    from zsteer.kernels.ascent_update import ascent_update, ascent_update_torch
    from zsteer.kernels.objective import objective_torch
    from zsteer.pipeline.attributes import CELEBA40
    from zsteer.pipeline.compile import compile_step
    from zsteer.pipeline.engine import (
        AscentConfig,
        EngineConfig,
        default_preserve,
        make_engine,
        target_vector,
    )

    torch.set_num_threads(args.threads)
    gen, cls = course_size_models(seed=0)
    z_dim, n_attr, hidden = gen.spec.z_dim, len(cls.attributes), gen.spec.hidden_dim
    smiling = CELEBA40.index("Smiling")
    lr, max_shift, penalty = 0.1, 3.0, 0.1

    def inputs(n: int, device: str):
        """Per-row tensors of one step, as the engine passes them (clean mode, all rows active)."""
        weights = target_vector([(smiling, 1.0)], n_attr).expand(n, n_attr).contiguous()
        z0 = torch.randn(n, z_dim)
        t = {
            "z": z0 + 0.1 * torch.randn(n, z_dim),
            "z0": z0,
            "grad": torch.randn(n, z_dim),
            "logits": torch.randn(n, n_attr),
            "logits0": torch.randn(n, n_attr),
            "weights": weights,
            "preserve": default_preserve(weights),
            "stop_prob": torch.full((n,), 0.9),
            "status": torch.full((n,), ACTIVE, dtype=torch.int32),
        }
        return {k: v.to(device) for k, v in t.items()}

    def obj_args(t):
        return t["logits"], t["logits0"], t["weights"], t["preserve"], penalty

    def upd_args(t, grad=None):
        grad = t["grad"] if grad is None else grad
        tensors = (t["z"], t["z0"], grad, None, t["logits"], t["weights"], t["stop_prob"], t["status"])
        return (*tensors, lr, max_shift, False)

    def step_fn(n: int, device: str, impl: str):
        """One whole ascent step at batch n: forward + VJP (objective inside), then the update."""
        engine = make_engine(
            gen, cls, AscentConfig(steps=10, lr=lr, max_shift=max_shift),
            EngineConfig(batch_size=n, device=device, compile="off", impl=impl),
        )  # fmt: skip
        t = inputs(n, device)
        engine._resolve_kernels(t["z"])  # as the engine's first edit does (picks Triton or the reference)
        logits0 = engine._grad_step(t["z"], None, t["weights"], t["preserve"], penalty)[0].detach()

        def step():
            logits, _, grad_in = engine._grad_step(t["z"], logits0, t["weights"], t["preserve"], penalty)
            return ascent_update(*upd_args({**t, "logits": logits}, grad_in[:, :z_dim]), impl=impl)

        return step

    # One window of at least --seconds after a short warm-up: the bench's timing core, median per call.
    control = RunControl(
        warmup_seconds=0.2, min_seconds=args.seconds, min_iterations=5, agree=1, max_windows=1
    )

    def cpu_time(fn) -> float:
        """Median seconds per call."""
        return measure(fn, 1, control).latency()["median"]

    print(
        f"torch {torch.__version__}, {args.threads} CPU threads; "
        f"course models z_dim {z_dim}, hidden {hidden}, "
        f"{n_attr} attributes"
    )
    t = inputs(128, "cpu")
    obj_l, obj_b = traffic(lambda: objective_torch(*obj_args(t)))
    upd_l, upd_b = traffic(lambda: ascent_update_torch(*upd_args(t)))
    lab = upd_args(t)
    lab = (*lab[:3], torch.randn_like(t["z"]), *lab[4:])  # accum: lab-compatible mode
    lab_l, lab_b = traffic(lambda: ascent_update_torch(*lab))
    print(
        f"reference traffic per row (counted at batch 128): objective {obj_l} launches, {obj_b / 128:.0f} B; "
        f"ascent_update {upd_l} launches, {upd_b / 128:.0f} B clean, {lab_l} launches, {lab_b / 128:.0f} B "
        "lab (Triton: 1 launch each, 804 B, 1368 B and 1880 B)"
    )

    compiled = {}
    if not args.no_compile:
        compiled = {
            "objective": compile_step(objective_torch, True),
            "ascent_update": compile_step(ascent_update_torch, True),
        }

    print("\nCPU, median ms per call; share = op / whole step (forward + VJP + objective + update)")
    print(
        f"{'batch':>6} {'whole step':>11} {'objective':>10} {'compiled':>9} {'update':>9} {'compiled':>9} "
        f"{'share eager':>12} {'share comp.':>12}"
    )
    for n in batches:
        t = inputs(n, "cpu")
        step = step_fn(n, "cpu", "torch")
        whole = cpu_time(step)
        ref_obj = cpu_time(lambda t=t: objective_torch(*obj_args(t)))
        ref_upd = cpu_time(lambda t=t: ascent_update_torch(*upd_args(t)))
        comp_obj = comp_upd = math.nan
        if compiled:
            comp_obj = cpu_time(lambda t=t: compiled["objective"](*obj_args(t)))
            comp_upd = cpu_time(lambda t=t: compiled["ascent_update"](*upd_args(t)))
        ms = [x * 1e3 for x in (whole, ref_obj, comp_obj, ref_upd, comp_upd)]
        print(
            f"{n:6d} {ms[0]:11.2f} {ms[1]:10.3f} {ms[2]:9.3f} {ms[3]:9.3f} {ms[4]:9.3f} "
            f"{(ref_obj + ref_upd) / whole:12.2%} {(comp_obj + comp_upd) / whole:12.2%}"
        )

    if not torch.cuda.is_available():
        print(
            "\nno CUDA device: Triton timings skipped "
            "(run this script on a GPU to check the docstring's claims)"
        )
        return

    from zsteer.kernels._triton_ascent_update import ascent_update_triton
    from zsteer.kernels._triton_objective import objective_triton

    cuda_clock = CudaClock("cuda")

    def gpu_ms(fn) -> float:
        """Median ms per call, each call timed by CUDA events after a synchronise (launch cost included)."""
        return measure(fn, 1, control, cuda_clock).latency()["median"] * 1e3

    print(
        f"\nCUDA ({torch.cuda.get_device_name()}), median ms per call (CUDA events, zsteer.jobs.bench.timing)"
    )
    print(
        f"{'op':>14} {'batch':>7} {'torch':>8} {'compiled':>9} {'triton':>8} {'speed-up':>9} "
        f"{'triton GB/s':>12}"
    )
    if compiled:
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 32)
    for n in sorted({*batches, 128, 1024, 16384, 262144}):
        t = inputs(n, "cuda")
        for name, ref, fused, op_args, row_bytes in (
            ("objective", objective_torch, objective_triton, obj_args(t), 804),
            ("ascent_update", ascent_update_torch, ascent_update_triton, upd_args(t), 1368),
        ):
            base = gpu_ms(lambda ref=ref, a=op_args: ref(*a))
            comp = math.nan
            if compiled:  # the same compiled functions: they recompile for CUDA and each shape
                comp = gpu_ms(lambda f=compiled[name], a=op_args: f(*a))
            ours = gpu_ms(lambda fused=fused, a=op_args: fused(*a))
            rate = n * row_bytes / (ours * 1e-3) / 1e9
            print(f"{name:>14} {n:7d} {base:8.4f} {comp:9.4f} {ours:8.4f} {base / ours:8.1f}x {rate:12.0f}")

    print("\nCUDA, whole eager step (forward + VJP + objective + update), median ms")
    print(f"{'batch':>7} {'torch ops':>10} {'triton ops':>11} {'saved':>7}")
    for n in batches:
        ref, ours = gpu_ms(step_fn(n, "cuda", "torch")), gpu_ms(step_fn(n, "cuda", "triton"))
        print(f"{n:7d} {ref:10.3f} {ours:11.3f} {1 - ours / ref:7.1%}")


if __name__ == "__main__":
    main()
