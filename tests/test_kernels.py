"""Kernel dispatch on CPU and the torch references' own contract (no Triton needed)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from zsteer.kernels import dispatch
from zsteer.kernels.ascent_update import (
    ACTIVE,
    MAX_SHIFT,
    NON_FINITE,
    STEPS_DONE,
    TARGET_REACHED,
    ascent_update,
    ascent_update_torch,
)
from zsteer.kernels.objective import objective, objective_torch


def _objective_args(n=6, a=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, a, generator=g)
    logits0 = logits + torch.randn(n, a, generator=g)
    weights = torch.zeros(n, a)
    weights[:, 0], weights[:, 1] = 1.0, -0.5
    return logits, logits0, weights, (weights == 0).float()


def _update_args(n=6, d=4, a=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    z0 = torch.randn(n, d, generator=g)
    logits, _, weights, _ = _objective_args(n, a, seed)
    status = torch.full((n,), ACTIVE, dtype=torch.int32)
    return (z0.clone(), z0, torch.randn(n, d, generator=g), None, logits, weights,
            torch.full((n,), math.nan), status)  # fmt: skip


@pytest.mark.parametrize("impl", ["torch", "auto"])
def test_cpu_uses_the_reference_quietly(impl):
    args = _objective_args()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the reference is the intended CPU path: no fallback warning
        assert dispatch.choose_impl("objective", impl, args[0]) == "torch"
        score, grad = objective(*args, 0.3, impl=impl)
        upd = ascent_update(*_update_args(), 0.1, math.inf, False, impl=impl)
    want = objective_torch(*args, 0.3)
    assert torch.equal(score, want[0]) and torch.equal(grad, want[1])
    ref = ascent_update_torch(*_update_args(), 0.1, math.inf, False)
    assert all(x is None and y is None or torch.equal(x, y) for x, y in zip(upd, ref, strict=True))


def test_unknown_impl_is_refused():
    with pytest.raises(ValueError, match="impl must be one of"):
        objective(*_objective_args(), 0.3, impl="cuda")
    with pytest.raises(ValueError, match="impl must be one of"):
        ascent_update(*_update_args(), 0.1, math.inf, False, impl="fast")


def test_triton_impl_without_triton_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    with pytest.raises(RuntimeError, match="triton is not installed"):
        objective(*_objective_args(), 0.3, impl="triton")


def test_objective_gradient_is_autograd_and_zero_delta_gives_weights():
    logits, logits0, weights, keep = _objective_args(n=8, a=6)
    logits0[:3] = logits[:3]  # delta exactly 0: torch's autograd gives a 0 subgradient for the norm
    x = logits.clone().requires_grad_(True)
    score, grad = objective_torch(x, logits0, weights, keep, 0.7)
    (auto,) = torch.autograd.grad(score.sum(), x)
    torch.testing.assert_close(grad, auto)
    assert torch.equal(grad[:3], weights[:3])
    delta = (logits - logits0) * keep
    want = (weights * logits).sum(1) - 0.7 * delta.norm(dim=1)
    torch.testing.assert_close(score.detach(), want)


def test_ascent_update_reference_status_codes():
    z, z0, grad, _, logits, weights, stop_prob, status = _update_args(n=6, d=3)
    status[0] = STEPS_DONE  # frozen: passes through
    grad[1, 0] = math.nan  # non-finite: frozen at its old z
    logits[2, 0], logits[2, 1] = 10.0, -10.0  # both targets pass p = 0.9
    stop_prob[2] = 0.9
    grad[3] = torch.tensor([100.0, 0.0, 0.0])  # one step of 10 > max_shift 2: put back on the sphere
    upd = ascent_update_torch(
        z, z0, grad, torch.zeros_like(z), logits, weights, stop_prob, status, 0.1, 2.0, False
    )
    assert upd.status.tolist() == [STEPS_DONE, NON_FINITE, TARGET_REACHED, MAX_SHIFT, ACTIVE, ACTIVE]
    assert upd.moved.tolist() == [0, 0, 0, 1, 1, 1] and upd.moved.dtype == torch.int32
    assert torch.equal(upd.z[:3], z[:3]) and upd.grad_norm[[0, 2]].eq(0).all()
    assert upd.grad_norm[1].isnan(), "a row frozen by the guard reports the norm it would have stepped by"
    assert torch.equal(upd.accum[1], torch.zeros(3)), "a non-finite gradient is not accumulated"
    torch.testing.assert_close(upd.shift[3], torch.tensor(2.0))
