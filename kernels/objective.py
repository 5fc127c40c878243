"""The per-row edit objective and its gradient with respect to the logits.

    score_i = sum_a w_ia * l_ia - lambda * || P_i * (l_i - l0_i) ||_2
    dscore_i / dl_i = w_i - lambda * P_i * delta_i / ||P_i * delta_i||    (0, not NaN, when delta_i = 0)

The engine back-propagates ``grad_logits`` from the classifier's output instead of building the score
graph with autograd, so the same code serves eager, compiled and exported paths.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .dispatch import choose_impl, float_refusal, triton_module, width_refusal


def objective_torch(
    logits: torch.Tensor,  # [N, A] classifier logits at the current z
    logits0: torch.Tensor,  # [N, A] logits at the starting z
    weights: torch.Tensor,  # [N, A] signed target weights (0 = not a target)
    preserve: torch.Tensor,  # [N, A] 1.0 where the attribute is to be kept, else 0.0
    penalty: float,  # lambda
) -> tuple[torch.Tensor, torch.Tensor]:  # score [N], grad_logits [N, A]
    """Pure-torch reference."""
    delta = (logits - logits0) * preserve  # [N, A]
    norm = torch.linalg.vector_norm(delta, dim=1, keepdim=True)  # [N, 1]
    score = (weights * logits).sum(dim=1) - penalty * norm.squeeze(1)
    unit = torch.where(norm > 0, delta / torch.where(norm > 0, norm, torch.ones_like(norm)), 0.0)
    grad = weights - penalty * unit
    return score, grad


def triton_refusal(logits, logits0, weights, preserve) -> str | None:
    """Why the Triton kernel would refuse these inputs (so "auto" takes the reference), or None."""
    for name, t in (("logits", logits), ("logits0", logits0), ("weights", weights), ("preserve", preserve)):
        if name in ("weights", "preserve") and not t.is_floating_point():
            continue  # bool / integer masks are converted
        reason = float_refusal(name, t)
        if reason is not None:
            return reason
    try:
        shape = torch.broadcast_shapes(*(t.shape for t in (logits, logits0, weights, preserve)))
    except RuntimeError:
        return None  # the reference raises its own error
    if len(shape) != 2:
        return f"the Triton kernel takes [N, A] inputs, got {list(shape)}"
    return width_refusal(attributes=shape[1])


def objective(logits, logits0, weights, preserve, penalty: float, impl: str = "auto"):
    """Score [N] and its gradient w.r.t. the logits [N, A]; ``impl`` = "auto" | "triton" | "torch".

    With Triton, a call that torch.compile traces becomes the ``zsteer::objective`` operator, which
    compiles to the Triton kernel; an eager call launches it directly.
    """
    args = (logits, logits0, weights, preserve)
    if choose_impl("objective", impl, *args, refusal=lambda: triton_refusal(*args)) == "triton":
        return triton_module("objective").objective_traceable(*args, penalty)
    return objective_torch(*args, penalty)


def objective_fn(impl: str, logits_like: torch.Tensor) -> tuple[Callable, str]:
    """(the objective as one callable, "triton" | "torch") for logits like ``logits_like`` [N, A].

    Resolved once, saying once why a fallback happened: for a step that torch.compile traces, which should
    not trace the dispatch itself. The Triton callable is ``objective_traceable``.
    """
    like = [logits_like] * 4
    if choose_impl("objective", impl, logits_like, refusal=lambda: triton_refusal(*like)) == "triton":
        return triton_module("objective").objective_traceable, "triton"
    return objective_torch, "torch"
