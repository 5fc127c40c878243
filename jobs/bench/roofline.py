"""FLOPs of an edit, counted by torch's FlopCounterMode, and the machine's measured matmul peak.

The roofline fraction the README quotes is achieved GFLOP/s (FLOPs per latent x latents/s) over the best
fp32 GEMM rate measured on the same device and threads. The peak is measured, not looked up: several
square and skinny GEMM shapes, each timed by the timing core, best one kept.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from zsteer.pipeline.network import EditNet

from .config import RunControl
from .timing import Clock, WallClock, measure

# (m, k, n): square shapes of growing size and two skinny ones (what a batch-128 layer looks like).
GEMM_SHAPES = ((1024, 1024, 1024), (2048, 2048, 2048), (4096, 4096, 1024), (4096, 1024, 4096))


def step_flops(net: EditNet, rows: int = 8) -> tuple[float, float]:
    """(forward, forward + input gradient) FLOPs per latent of ``net``.

    Plain autograd rather than torch.func.vjp (which the engine uses): FlopCounterMode cannot see into
    a functorch transform, and both run the same convolutions and their input-gradient convolutions.
    """
    z = torch.randn(rows, net.input_dim, dtype=next(net.parameters()).dtype)
    z = z.to(next(net.parameters()).device)
    with FlopCounterMode(display=False) as forward, torch.no_grad():
        net(z)
    leaf = z.clone().requires_grad_(True)
    with FlopCounterMode(display=False) as step:
        logits = net(leaf * 1.0)  # a non-leaf input: the counter's module hooks refuse a leaf
        torch.autograd.grad(logits, leaf, torch.ones_like(logits))
    return forward.get_total_flops() / rows, step.get_total_flops() / rows


def ascent_flops_per_latent(net: EditNet, steps: int) -> float:
    """An ascent edit of ``steps`` steps: each step a forward and an input gradient, then one forward."""
    forward, step = step_flops(net)
    return steps * step + forward


def counted_flops_per_latent(edit, rows: int) -> float | None:
    """FLOPs per latent of ``edit()`` (``rows`` rows) as FlopCounterMode counts them; None if it cannot."""
    try:
        with FlopCounterMode(display=False) as counter:
            edit()
    except RuntimeError:  # a functorch transform inside: the counter cannot follow it
        return None
    return counter.get_total_flops() / rows


def peak_dtypes(device: torch.device) -> list[torch.dtype]:
    """fp32, plus bf16 / fp16 where the device runs them natively (oneDNN's check on the CPU)."""
    dtypes = [torch.float32]
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            dtypes.append(torch.bfloat16)
        dtypes.append(torch.float16)
    elif device.type == "cpu":
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():
            dtypes.append(torch.bfloat16)
        if torch.ops.mkldnn._is_mkldnn_fp16_supported():
            dtypes.append(torch.float16)
    return dtypes


def matmul_peak(
    device: str, dtype: torch.dtype, seconds: float, clock: Clock | None = None, shapes=GEMM_SHAPES
) -> dict:
    """Best GFLOP/s of ``a @ b`` over ``shapes`` on ``device`` in ``dtype``, and the shape that gave it."""
    control = RunControl(
        warmup_seconds=seconds / 4, min_seconds=seconds, min_iterations=3, agree=1, max_windows=1
    )
    best = {"gflops": 0.0, "shape": None, "dtype": str(dtype).removeprefix("torch.")}
    gen = torch.Generator(device="cpu").manual_seed(0)
    # On a GPU one product takes tens of microseconds, about what a synchronise costs: time 20 per call.
    reps = 20 if torch.device(device).type == "cuda" else 1
    for m, k, n in shapes:
        a = torch.randn(m, k, generator=gen).to(device=device, dtype=dtype)
        b = torch.randn(k, n, generator=gen).to(device=device, dtype=dtype)
        result = measure(
            lambda a=a, b=b: [a @ b for _ in range(reps)], reps * 2 * m * k * n, control, clock or WallClock()
        )
        rate = max(w.rate for w in result.windows) / 1e9
        if rate > best["gflops"]:
            best.update(gflops=round(rate, 1), shape=[m, k, n])
    return best
