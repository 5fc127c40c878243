"""pipeline/probability.py: sigmoid whose bits do not depend on the tensor a logit sits in."""

from __future__ import annotations

import pytest
import torch

from zsteer.pipeline.probability import probabilities


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_logit_gets_the_same_bits_at_every_length_and_offset(dtype):
    """torch.sigmoid fails this on CPU (its scalar tail rounds differently): hundreds of the slices."""
    logits = torch.randn(700, generator=torch.Generator().manual_seed(0), dtype=dtype) * 6
    whole = probabilities(logits)
    differ = [
        (offset, n)
        for n in range(1, 160)
        for offset in (0, 1, 5, 13, 31)
        if not torch.equal(probabilities(logits[offset : offset + n]), whole[offset : offset + n])
    ]
    assert not differ, f"{len(differ)} slices differ, e.g. (offset, length) {differ[:3]}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_probabilities_are_the_sigmoid_up_to_rounding(dtype):
    logits = torch.cat([torch.linspace(-30, 30, 1001, dtype=dtype), torch.tensor([-1e4, 1e4], dtype=dtype)])
    got, want = probabilities(logits), torch.sigmoid(logits)
    assert got.dtype == dtype
    torch.testing.assert_close(got, want, rtol=4 * torch.finfo(dtype).eps, atol=0)
    assert got[-2] == 0 and got[-1] == 1
    assert torch.isnan(probabilities(torch.tensor([float("nan")], dtype=dtype))).all()
