"""One ascent step on z, for every row at once, with the per-row bookkeeping fused in.

Per row, in this order:
1. a row whose status is not ACTIVE keeps its z (stopped rows are frozen);
2. the stop test on the current logits: every target with w > 0 has sigmoid(l) >= p and every target
   with w < 0 has sigmoid(l) <= 1 - p (p = ``stop_prob``, NaN = never) -> TARGET_REACHED, z kept;
3. the direction: the gradient, or in lab-compatible mode the running sum of all gradients so far
   (``accum``, the notebook never zeroes z.grad); optionally divided by its norm;
4. z + lr * direction; if ||z - z0|| > max_shift the row is put back on that sphere and stops (MAX_SHIFT);
5. a non-finite gradient or result freezes the row at its old z (NON_FINITE).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .dispatch import choose_impl

# STEPS_DONE is set by the engine when a row has used its step budget.
ACTIVE, STEPS_DONE, TARGET_REACHED, MAX_SHIFT, NON_FINITE = 0, 1, 2, 3, 4
STATUS_NAMES = {
    ACTIVE: "active",
    STEPS_DONE: "steps",
    TARGET_REACHED: "target_reached",
    MAX_SHIFT: "max_shift",
    NON_FINITE: "non_finite",
}


class UpdateResult(NamedTuple):
    z: torch.Tensor  # [N, D] next z
    accum: torch.Tensor | None  # [N, D] running gradient sum (lab-compatible mode), else None
    grad_norm: torch.Tensor  # [N] norm of the step direction before normalising; 0 where no step was taken
    shift: torch.Tensor  # [N] ||z_next - z0||
    status: torch.Tensor  # [N] int32 status codes (ACTIVE, ...)
    moved: torch.Tensor  # [N] int32: 1 where this call changed z


def ascent_update_torch(
    z: torch.Tensor,  # [N, D] current z
    z0: torch.Tensor,  # [N, D] starting z
    grad: torch.Tensor,  # [N, D] d score / d z at z
    accum: torch.Tensor | None,  # [N, D] gradient sum so far (lab-compatible mode) or None
    logits: torch.Tensor,  # [N, A] logits at z (for the stop test)
    weights: torch.Tensor,  # [N, A] signed target weights
    stop_prob: torch.Tensor,  # [N] stop once the targets pass this probability; NaN = never
    status: torch.Tensor,  # [N] int32 status codes before this step
    lr: float | torch.Tensor,  # step size
    max_shift: float | torch.Tensor,  # cap on ||z - z0||; inf = none
    normalize: bool | torch.Tensor,  # divide the direction by its norm
) -> UpdateResult:
    """Pure-torch reference; also the update inside the exported ONNX step graph (no in-place writes)."""
    active = status == ACTIVE  # [N]
    prob = torch.sigmoid(logits)  # [N, A]
    p = stop_prob.unsqueeze(1)  # [N, 1]
    # Boolean algebra rather than nested where(..., True): the same values, and it exports to ONNX.
    ok = (~(weights > 0) | (prob >= p)) & (~(weights < 0) | (prob <= 1 - p))
    has_target = (weights != 0).any(dim=1)
    reached = active & ~torch.isnan(stop_prob) & has_target & ok.all(dim=1)
    stepping = active & ~reached  # [N]

    new_accum = None
    direction = grad
    if accum is not None:
        new_accum = torch.where(stepping.unsqueeze(1), accum + grad, accum)
        direction = new_accum
    grad_norm = torch.linalg.vector_norm(direction, dim=1)  # [N]
    safe = torch.where(grad_norm > 0, grad_norm, torch.ones_like(grad_norm))
    unit = torch.where((grad_norm > 0).unsqueeze(1), direction / safe.unsqueeze(1), 0.0)
    # normalize may be a 0-d bool tensor (an ONNX graph input, so one graph serves both settings).
    direction = torch.where(torch.as_tensor(normalize, device=z.device), unit, direction)
    candidate = z + lr * direction
    offset = candidate - z0
    shift = torch.linalg.vector_norm(offset, dim=1)  # [N]
    capped = shift > max_shift
    scale = torch.where(capped, max_shift / torch.where(capped, shift, torch.ones_like(shift)), 1.0)
    candidate = torch.where(capped.unsqueeze(1), z0 + offset * scale.unsqueeze(1), candidate)
    finite = torch.isfinite(candidate).all(dim=1) & torch.isfinite(grad).all(dim=1)

    moved = stepping & finite
    new_z = torch.where(moved.unsqueeze(1), candidate, z)
    # torch.where rather than masked writes: no host-device sync on CUDA.
    new_status = torch.where(reached, TARGET_REACHED, status)
    new_status = torch.where(moved & capped, MAX_SHIFT, new_status)
    new_status = torch.where(stepping & ~finite, NON_FINITE, new_status).to(status.dtype)
    if new_accum is not None:
        new_accum = torch.where((stepping & ~finite).unsqueeze(1), accum, new_accum)
    new_shift = torch.linalg.vector_norm(new_z - z0, dim=1)
    grad_norm = torch.where(stepping, grad_norm, 0.0)
    return UpdateResult(new_z, new_accum, grad_norm, new_shift, new_status, moved.to(torch.int32))


def ascent_update(
    z, z0, grad, accum, logits, weights, stop_prob, status, lr, max_shift, normalize,
    impl: str = "auto",
) -> UpdateResult:  # fmt: skip
    """One fused ascent step (see the module docstring); ``impl`` = "auto" | "triton" | "torch"."""
    args = (z, z0, grad, accum, logits, weights, stop_prob, status, lr, max_shift, normalize)
    if choose_impl("ascent_update", impl, z) == "triton":
        from ._triton_ascent_update import ascent_update_triton

        return ascent_update_triton(*args)
    return ascent_update_torch(*args)
