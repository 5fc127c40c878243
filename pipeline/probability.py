"""Probabilities from logits whose bits depend only on the logit, not on the tensor it sits in.

torch's CPU sigmoid runs a vectorised loop and computes a tensor's last elements with a scalar loop that
rounds differently: the same logit got another probability at another batch size or place in the batch
(float32 and float64; docs/NOTES.md, "Batch invariance of an arbitrary graph"). A row's probability
decides where a --until-prob search stops, so that made a row's result depend on its neighbours.
``torch.exp`` runs one vector code path over the whole tensor, tail included, and gave the same bits at
every length and offset probed; the add and the division are correctly rounded. So ``1 / (1 + exp(-x))``
holds the bits, and ``tests/test_probability.py`` checks it.
"""

from __future__ import annotations

import torch


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """sigmoid(logits), elementwise, in the logits' dtype; each element's bits independent of its neighbours."""
    return 1 / (1 + torch.exp(-logits))  # exp(-x) = inf gives 0, NaN stays NaN
