"""The per-row edit objective and its gradient with respect to the logits.

    score_i = sum_a w_ia * l_ia - lambda * || P_i * (l_i - l0_i) ||_2
    dscore_i / dl_i = w_i - lambda * P_i * delta_i / ||P_i * delta_i||    (0, not NaN, when delta_i = 0)

The engine back-propagates ``grad_logits`` from the classifier's output instead of building the score
graph with autograd, so the same code serves eager, compiled and exported paths.
"""

from __future__ import annotations

import torch

from .dispatch import choose_impl


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


def objective(logits, logits0, weights, preserve, penalty: float, impl: str = "auto"):
    """Score [N] and its gradient w.r.t. the logits [N, A]; ``impl`` = "auto" | "triton" | "torch"."""
    if choose_impl("objective", impl, logits) == "triton":
        from ._triton_objective import objective_triton

        return objective_triton(logits, logits0, weights, preserve, penalty)
    return objective_torch(logits, logits0, weights, preserve, penalty)
