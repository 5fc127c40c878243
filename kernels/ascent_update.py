"""One ascent step on z, for every row at once, with the per-row bookkeeping fused in.

Per row, in this order:
1. a row whose status is not ACTIVE keeps its z (stopped rows are frozen);
2. the stop test on the current logits (``targets_reached``): every target with w > 0 has
   sigmoid(l) >= p and every target with w < 0 has sigmoid(l) <= 1 - p (p = ``stop_prob``) ->
   TARGET_REACHED, z kept. It is compared in logit space, l >= log(p / (1 - p)) and l <= -log(p / (1 - p)),
   so that no approximate exp or division can flip a row at the threshold between the kernel and torch.
   p NaN or >= 1: never reached; p <= 0: reached (unless a target logit is NaN); no target: never;
3. the direction: the gradient, or in lab-compatible mode the running sum of all gradients so far
   (``accum``, the notebook never zeroes z.grad); optionally divided by its norm;
4. z + lr * direction; if ||z - z0|| > max_shift the row is put back on that sphere and stops (MAX_SHIFT);
5. a non-finite gradient or result freezes the row at its old z (NON_FINITE); so does, with ``normalize``,
   a finite direction whose float32 norm overflows (its unit vector cannot be formed: it would be 0); a
   finite result with a value beyond MAX_ABS_Z (an absurd lr) freezes it too (OUT_OF_RANGE).

``moved`` is 1 only where z changed: a zero direction (a zero gradient, or a step below z's resolution)
leaves the row ACTIVE with ``moved`` 0, so the engine's ``steps_taken`` counts updates that moved z.

The engine applies ``targets_reached`` once more to the logits after the last step (``final_status``):
a row that passes the threshold on its last step is reported TARGET_REACHED, not STEPS_DONE.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from zsteer.core.status import (  # noqa: F401 (re-exported)
    ACTIVE,
    MAX_ABS_Z,
    MAX_SHIFT,
    NON_FINITE,
    OUT_OF_RANGE,
    STATUS_NAMES,
    STEPS_DONE,
    TARGET_REACHED,
)

from .dispatch import choose_impl, float_refusal, triton_module, width_refusal


class UpdateResult(NamedTuple):
    z: torch.Tensor  # [N, D] next z
    accum: torch.Tensor | None  # [N, D] running gradient sum (lab-compatible mode), else None
    grad_norm: torch.Tensor  # [N] norm of the step direction before normalising; 0 where no step was taken
    shift: torch.Tensor  # [N] ||z_next - z0||
    status: torch.Tensor  # [N] int32 status codes (ACTIVE, ...)
    moved: torch.Tensor  # [N] int32: 1 where this call changed z


def stop_threshold(stop_prob: torch.Tensor) -> torch.Tensor:
    """[N] logit of each row's stop probability, log(p / (1 - p)), at least float32; -inf where p <= 0.

    The Triton kernel computes the same expression per row (on CUDA with libdevice's logf, as torch).
    """
    p = stop_prob.to(torch.promote_types(stop_prob.dtype, torch.float32))
    return torch.where(p > 0, torch.log(p / (1 - p)), -math.inf)


def targets_reached(
    logits: torch.Tensor,  # [N, A] logits
    weights: torch.Tensor,  # [N, A] signed target weights
    stop_prob: torch.Tensor,  # [N] stop probability; NaN or >= 1 = never
) -> torch.Tensor:  # [N] bool
    """Rows whose every target passes its stop probability (step 2 of the module docstring)."""
    p = stop_prob.to(torch.promote_types(stop_prob.dtype, torch.float32))
    thr = stop_threshold(p).unsqueeze(1)  # [N, 1]
    # Boolean algebra rather than nested where(..., True): the same values, and it exports to ONNX.
    ok = (~(weights > 0) | (logits >= thr)) & (~(weights < 0) | (logits <= -thr))
    has_target = (weights != 0).any(dim=1)
    return (p < 1) & has_target & ok.all(dim=1)  # p < 1 is False for NaN


def final_status(
    status: torch.Tensor,  # [N] status codes after the last step
    logits: torch.Tensor,  # [N, A] logits at the final z
    weights: torch.Tensor,  # [N, A] signed target weights
    stop_prob: torch.Tensor,  # [N] stop probability; NaN = never
) -> torch.Tensor:  # [N] status codes, none ACTIVE
    """The status a row ends with: one that ran out of steps (ACTIVE or STEPS_DONE) but whose final
    logits pass the stop test is TARGET_REACHED; the rest of those are STEPS_DONE."""
    ended = (status == ACTIVE) | (status == STEPS_DONE)
    out = torch.where(ended & targets_reached(logits, weights, stop_prob), TARGET_REACHED, status)
    return torch.where(out == ACTIVE, STEPS_DONE, out).to(status.dtype)


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
    reached = active & targets_reached(logits, weights, stop_prob)
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
    norm_t = torch.as_tensor(normalize, device=z.device)
    direction = torch.where(norm_t, unit, direction)
    candidate = z + lr * direction
    offset = candidate - z0
    shift = torch.linalg.vector_norm(offset, dim=1)  # [N]
    capped = shift > max_shift
    scale = torch.where(capped, max_shift / torch.where(capped, shift, torch.ones_like(shift)), 1.0)
    candidate = torch.where(capped.unsqueeze(1), z0 + offset * scale.unsqueeze(1), candidate)
    finite = torch.isfinite(candidate).all(dim=1) & torch.isfinite(grad).all(dim=1)
    # Normalising a direction whose norm overflowed would step by 0 and leave the row ACTIVE: flag it.
    finite = finite & (~norm_t | torch.isfinite(grad_norm))
    in_range = (candidate.abs() <= MAX_ABS_Z).all(dim=1)  # False for NaN: NON_FINITE decides those
    ok = finite & in_range

    stepped = stepping & ok
    moved = stepped & (candidate != z).any(dim=1)  # z changed (a zero direction leaves it as it is)
    new_z = torch.where(moved.unsqueeze(1), candidate, z)
    # torch.where rather than masked writes: no host-device sync on CUDA.
    new_status = torch.where(reached, TARGET_REACHED, status)
    new_status = torch.where(stepped & capped, MAX_SHIFT, new_status)
    new_status = torch.where(stepping & finite & ~in_range, OUT_OF_RANGE, new_status)
    new_status = torch.where(stepping & ~finite, NON_FINITE, new_status).to(status.dtype)
    if new_accum is not None:
        new_accum = torch.where((stepping & ~ok).unsqueeze(1), accum, new_accum)
    new_shift = torch.linalg.vector_norm(new_z - z0, dim=1)
    grad_norm = torch.where(stepping, grad_norm, 0.0)
    return UpdateResult(new_z, new_accum, grad_norm, new_shift, new_status, moved.to(torch.int32))


def triton_refusal(
    z, z0, grad, accum, logits, weights, stop_prob, status, lr, max_shift, normalize
) -> str | None:
    """Why the Triton kernel would refuse these arguments (so "auto" takes the reference), or None."""
    for name, value in (("lr", lr), ("max_shift", max_shift), ("normalize", normalize)):
        if isinstance(value, torch.Tensor):
            return f"{name} is a tensor; the Triton kernel takes a Python number (one value for all rows)"
    if z.dim() != 2 or logits.dim() != 2:
        return f"the Triton kernel takes z [N, D] and logits [N, A], got {list(z.shape)} and {list(logits.shape)}"
    n, d = z.shape
    a = logits.shape[1]
    d_group = {"z": z, "z0": z0, "grad": grad} | ({} if accum is None else {"accum": accum})
    expected = {name: (n, d) for name in d_group} | {
        "logits": (n, a), "weights": (n, a), "stop_prob": (n,), "status": (n,),
    }  # fmt: skip
    tensors = d_group | {"logits": logits, "weights": weights, "stop_prob": stop_prob, "status": status}
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            return (
                f"{name} has shape {list(tensors[name].shape)}; the Triton kernel takes exactly {list(shape)}"
            )
    for name, t in (*d_group.items(), ("logits", logits), ("weights", weights), ("stop_prob", stop_prob)):
        reason = float_refusal(name, t)
        if reason is not None:
            return reason
    if any(t.dtype != z.dtype for t in d_group.values()):
        return "z, z0, grad and accum have different dtypes; the Triton kernel takes one"
    if status.is_floating_point() or status.is_complex() or status.dtype == torch.bool:
        return f"status is {status.dtype}; the Triton kernel takes integer codes"
    return width_refusal(z_dim=d, attributes=a)


def ascent_update_impl(impl: str, *args) -> str:
    """``impl`` resolved to "triton" or "torch" for arguments like ``args`` (those of ``ascent_update``),
    saying once why a fallback happened: a caller that resolves once can then pass the result as impl."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]  # all on CUDA, or the reference
    return choose_impl("ascent_update", impl, *tensors, refusal=lambda: triton_refusal(*args))


def ascent_update(
    z, z0, grad, accum, logits, weights, stop_prob, status, lr, max_shift, normalize,
    impl: str = "auto",
) -> UpdateResult:  # fmt: skip
    """One fused ascent step (see the module docstring); ``impl`` = "auto" | "triton" | "torch".

    With Triton, a call that torch.compile traces becomes the ``zsteer::ascent_update`` operator; an
    eager call launches the kernel directly. lr, max_shift and normalize must then be Python values
    (per-row tensors: "auto" takes the reference, "triton" refuses them).
    """
    args = (z, z0, grad, accum, logits, weights, stop_prob, status, lr, max_shift, normalize)
    if ascent_update_impl(impl, *args) == "triton":
        return triton_module("ascent_update").ascent_update_traceable(*args)
    return ascent_update_torch(*args)
