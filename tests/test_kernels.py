"""Kernel dispatch on CPU and the torch references' own contract (no Triton needed)."""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from zsteer.core.status import (
    ACTIVE,
    MAX_ABS_Z,
    MAX_SHIFT,
    NON_FINITE,
    OUT_OF_RANGE,
    STEPS_DONE,
    TARGET_REACHED,
    stop_reasons,
)
from zsteer.kernels import dispatch
from zsteer.kernels.ascent_update import (
    ascent_update,
    ascent_update_torch,
    final_status,
    stop_threshold,
    targets_reached,
)
from zsteer.kernels.objective import objective, objective_fn, objective_torch

ROOT = Path(__file__).resolve().parents[1]


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


@pytest.fixture
def fresh_dispatch(monkeypatch):
    """Dispatch with nothing said yet (and the import cache as it is)."""
    monkeypatch.setattr(dispatch, "_said", set())
    return monkeypatch


@pytest.mark.parametrize("impl", ["torch", "auto"])
def test_cpu_uses_the_reference_without_a_warning(impl, fresh_dispatch, caplog):
    args = _objective_args()
    with warnings.catch_warnings(), caplog.at_level(logging.DEBUG, logger="zsteer.kernels"):
        warnings.simplefilter("error")  # the reference is the intended CPU path: no fallback warning
        assert dispatch.choose_impl("objective", impl, args[0]) == "torch"
        for _ in range(2):
            score, grad = objective(*args, 0.3, impl=impl)
            upd = ascent_update(*_update_args(), 0.1, math.inf, False, impl=impl)
    want = objective_torch(*args, 0.3)
    assert torch.equal(score, want[0]) and torch.equal(grad, want[1])
    ref = ascent_update_torch(*_update_args(), 0.1, math.inf, False)
    assert all(x is None and y is None or torch.equal(x, y) for x, y in zip(upd, ref, strict=True))
    said = [(r.levelno, r.getMessage()) for r in caplog.records]
    if impl == "torch":
        assert said == [], "an explicit torch says nothing"
    else:  # once per op, at INFO, however many calls
        assert [level for level, _ in said] == [logging.INFO, logging.INFO], said
        assert "objective" in said[0][1] and "ascent_update" in said[1][1]
        assert all("CUDA tensors only" in m for _, m in said)


def test_unknown_impl_is_refused():
    with pytest.raises(ValueError, match="impl must be one of"):
        objective(*_objective_args(), 0.3, impl="cuda")
    with pytest.raises(ValueError, match="impl must be one of"):
        ascent_update(*_update_args(), 0.1, math.inf, False, impl="fast")


def _import_fails_with(monkeypatch, exc: Exception) -> list[str]:
    """Make importing the Triton kernel modules raise ``exc``; returns the names tried."""
    tried = []

    def fail(name, *args, **kwargs):
        tried.append(name)
        raise exc

    monkeypatch.setattr(dispatch, "_loaded", {})
    monkeypatch.setattr(dispatch.importlib, "import_module", fail)
    return tried


def test_triton_impl_without_triton_is_a_clear_error(fresh_dispatch):
    _import_fails_with(fresh_dispatch, ModuleNotFoundError("No module named 'triton'", name="triton"))
    assert not dispatch.triton_available()
    with pytest.raises(RuntimeError, match="impl='triton' but triton is not installed"):
        objective(*_objective_args(), 0.3, impl="triton")
    with pytest.raises(RuntimeError, match="triton is not installed"):
        ascent_update(*_update_args(), 0.1, math.inf, False, impl="triton")


def test_a_broken_triton_is_tried_once_and_auto_falls_back_saying_why(fresh_dispatch):
    tried = _import_fails_with(
        fresh_dispatch, RuntimeError("0 active drivers ([]). There should only be one.")
    )
    fresh_dispatch.setattr(dispatch, "_all_cuda", lambda tensors: True)  # as if the tensors were on CUDA
    args = _objective_args()
    with pytest.warns(UserWarning, match=r"objective: using the torch reference: triton failed to import: "
                      r"RuntimeError: 0 active drivers") as record:  # fmt: skip
        for _ in range(3):
            score, _ = objective(*args, 0.3)
    assert len(record) == 1, "said once"
    assert torch.equal(score, objective_torch(*args, 0.3)[0])
    assert tried == ["zsteer.kernels._triton_objective"], "the import is tried once, then remembered"
    assert not dispatch.triton_available() and len(tried) == 1
    with pytest.raises(RuntimeError, match="0 active drivers"):
        objective(*args, 0.3, impl="triton")


def _fake_kernels(monkeypatch) -> list[str]:
    """Triton 'imports' as a stand-in module per op that records calls; tensors count as on CUDA."""
    calls = []
    fake_obj = types.ModuleType("fake_objective")
    fake_obj.objective_traceable = lambda *a: calls.append("objective") or objective_torch(*a)
    fake_upd = types.ModuleType("fake_ascent_update")
    fake_upd.ascent_update_traceable = lambda *a: calls.append("ascent_update") or ascent_update_torch(*a)
    monkeypatch.setattr(dispatch, "_loaded", {
        "zsteer.kernels._triton_objective": fake_obj, "zsteer.kernels._triton_ascent_update": fake_upd,
    })  # fmt: skip
    monkeypatch.setattr(dispatch, "_all_cuda", lambda tensors: True)
    return calls


def test_auto_on_cuda_takes_triton_for_inputs_the_kernels_take(fresh_dispatch):
    calls = _fake_kernels(fresh_dispatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        objective(*_objective_args(), 0.3)
        ascent_update(*_update_args(), 0.1, math.inf, False)
        fn, impl = objective_fn("auto", torch.empty(0, 40))
    assert calls == ["objective", "ascent_update"] and impl == "triton"


def _refused_objective_cases():
    logits, logits0, weights, keep = _objective_args(n=3, a=4)
    wide = torch.zeros(2, dispatch.MAX_ROW_ELEMENTS + 1)
    return {
        "float64": ((logits.double(), logits0.double(), weights, keep), "logits is torch.float64"),
        "float64 weights": ((logits, logits0, weights.double(), keep), "weights is torch.float64"),
        "wide rows": ((wide, wide, wide, wide), "16385 columns"),
        "3-d": ((logits[None], logits0[None], weights, keep), r"\[N, A\] inputs"),
    }


@pytest.mark.parametrize("case", list(_refused_objective_cases()))
def test_auto_on_cuda_falls_back_once_for_objective_inputs_the_kernel_refuses(fresh_dispatch, case):
    args, reason = _refused_objective_cases()[case]
    _assert_falls_back_once(fresh_dispatch, "objective", objective, objective_torch, (*args, 0.3), reason)


def _assert_falls_back_once(fresh_dispatch, op, public, reference, args, reason):
    """``public(*args)`` on (fake) CUDA takes the torch reference, warns once with ``reason`` over two
    calls, launches no kernel, and returns exactly what ``reference(*args)`` does."""
    calls = _fake_kernels(fresh_dispatch)
    with pytest.warns(UserWarning, match=f"{op}: using the torch reference: .*{reason}") as record:
        for _ in range(2):
            got = public(*args)
    assert len(record) == 1 and calls == []
    want = reference(*args)
    assert all(x is None and y is None or torch.equal(x, y) for x, y in zip(got, want, strict=True))


def _refused_update_cases():
    z, z0, grad, _, logits, weights, stop, status = _update_args(n=5, d=3, a=4)
    d = dispatch.MAX_ROW_ELEMENTS + 1
    wide = torch.zeros(2, d), torch.zeros(2, d), torch.zeros(2, d)
    rest = (logits, weights, stop, status)
    return {
        "tensor lr": ((z, z0, grad, None, *rest, torch.full((5, 1), 0.1), math.inf, False), "lr is a tensor"),
        "tensor max_shift": ((z, z0, grad, None, *rest, 0.1, torch.full((5,), 2.0), False), "max_shift is a tensor"),
        "tensor normalize": ((z, z0, grad, None, *rest, 0.1, math.inf, torch.tensor(True)), "normalize is a tensor"),
        "float64": ((z.double(), z0.double(), grad.double(), None, *rest, 0.1, math.inf, False), "z is torch.float64"),
        "mixed dtypes": ((z, z0, grad.half(), None, *rest, 0.1, math.inf, False), "different dtypes"),
        "broadcast weights": ((z, z0, grad, None, logits, weights[:1], stop, status, 0.1, math.inf, False),
                              "weights has shape"),
        "broadcast logits": ((z, z0, grad, None, logits[:1], weights, stop, status, 0.1, math.inf, False),
                             "logits has shape"),
        "wide z": ((*wide, None, logits[:2], weights[:2], stop[:2], status[:2], 0.1, math.inf, False),
                   "16385 columns"),
    }  # fmt: skip


@pytest.mark.parametrize("case", list(_refused_update_cases()))
def test_auto_on_cuda_falls_back_once_for_update_inputs_the_kernel_refuses(fresh_dispatch, case):
    args, reason = _refused_update_cases()[case]
    _assert_falls_back_once(fresh_dispatch, "ascent_update", ascent_update, ascent_update_torch, args, reason)


def test_importing_the_job_modules_does_not_import_triton():
    code = (
        "import sys\n"
        "import zsteer.pipeline.engine, zsteer.cli.main, zsteer.export\n"
        "from zsteer.kernels import ascent_update, objective, dispatch\n"
        "print(sorted(m for m in sys.modules if m == 'triton' or m.startswith('triton.')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]", proc.stdout


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


def test_stop_test_in_logit_space_edges():
    # one target up (w > 0), one down (w < 0); rows: p NaN, >= 1, 1, <= 0, 0, and ordinary values
    logits = torch.tensor([[3.0, -3.0]]).repeat(8, 1)
    weights = torch.tensor([[1.0, -1.0]]).repeat(8, 1)
    p = torch.tensor([math.nan, 1.5, 1.0, -0.5, 0.0, 0.5, 0.96, 0.95])
    logits[7] = torch.tensor([3.0, math.nan])  # a NaN target logit never passes
    got = targets_reached(logits, weights, p)
    assert got.tolist() == [False, False, False, True, True, True, False, False]
    # as sigmoid(l) >= p and sigmoid(l) <= 1 - p, away from the threshold
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(500, 3, generator=g) * 3
    weights = torch.randn(500, 3, generator=g).where(torch.rand(500, 3, generator=g) < 0.6, 0.0)
    p = torch.rand(500, generator=g)
    prob = torch.sigmoid(logits)
    margin = torch.where(weights > 0, prob - p[:, None], torch.where(weights < 0, 1 - p[:, None] - prob, 1.0))
    far = (margin.abs() > 1e-4).all(dim=1)
    want = (margin >= 0).all(dim=1) & (weights != 0).any(dim=1)
    assert far.sum() > 450 and want[far].any() and (~want[far]).any()
    assert torch.equal(targets_reached(logits, weights, p)[far], want[far])
    # exactly at the threshold: l = logit(p) passes for w > 0, and l = -logit(p) for w < 0
    thr = stop_threshold(torch.tensor([0.8]))
    assert targets_reached(
        torch.stack([thr, -thr], 1), torch.tensor([[1.0, -1.0]]), torch.tensor([0.8])
    ).item()
    up = torch.nextafter(thr, torch.tensor(-math.inf))
    assert not targets_reached(up[:, None], torch.tensor([[1.0]]), torch.tensor([0.8])).item()


def test_zero_direction_moves_nothing_and_overflowed_norm_is_flagged():
    z, z0, grad, _, logits, weights, stop_prob, status = _update_args(n=4, d=3)
    grad[0] = 0.0  # zero gradient: no step, still ACTIVE, not counted as moved
    grad[1] = torch.tensor([3e38, 3e38, 0.0])  # finite, but its float32 norm overflows
    grad[2] = torch.tensor([1e-15, 0.0, 0.0])  # a step far below z's resolution: z stays as it is
    for normalize in (False, True):
        upd = ascent_update_torch(
            z, z0, grad, None, logits, weights, stop_prob, status, 0.1, math.inf, normalize
        )
        assert upd.status[0] == ACTIVE and upd.moved[0] == 0 and torch.equal(upd.z[0], z[0])
        assert upd.moved[3] == 1 and upd.status[3] == ACTIVE
        if normalize:  # the unit vector of an overflowed norm cannot be formed: flagged, not a zero step
            assert upd.status[1] == NON_FINITE and upd.moved[1] == 0 and torch.equal(upd.z[1], z[1])
            assert upd.moved[2] == 1, "normalised, the tiny gradient is a step of lr"
        else:  # without normalising, the norm is not used: z + lr * grad is finite, but 3e37 out
            assert upd.status[1] == OUT_OF_RANGE and upd.moved[1] == 0 and torch.equal(upd.z[1], z[1])
            assert upd.moved[2] == 0 and upd.status[2] == ACTIVE and torch.equal(upd.z[2], z[2])


def test_a_step_past_max_abs_z_keeps_the_row_and_says_out_of_range():
    """An absurd lr once took rows to z ~ 1e29 (latent_shift inf) with stop_reason 'steps'."""
    z, z0, grad, _, logits, weights, stop_prob, status = _update_args(n=4, d=3)
    grad[:] = torch.tensor([1.0, 0.0, 0.0])
    z[3] = torch.tensor([MAX_ABS_Z - 0.5, 0.0, 0.0])  # a step of 0.4 stays inside, one of 1e30 not
    accum = torch.ones_like(z)
    for lr, far in ((1e30, [True, True, True, True]), (0.4, [False, False, False, False])):
        upd = ascent_update_torch(z, z0, grad, accum, logits, weights, stop_prob, status, lr, math.inf, False)
        stepping = status == ACTIVE
        for i in range(4):
            if not stepping[i] or not far[i]:
                continue
            assert upd.status[i] == OUT_OF_RANGE and upd.moved[i] == 0
            assert torch.equal(upd.z[i], z[i]) and torch.equal(upd.accum[i], accum[i])
        assert (upd.z.abs() <= MAX_ABS_Z).all()
    assert stop_reasons(np.array([OUT_OF_RANGE]))[0] == "out_of_range"


def test_final_status_tests_the_targets_after_the_last_step():
    logits = torch.tensor([[5.0], [5.0], [5.0], [5.0], [-5.0], [5.0]])
    weights = torch.ones(6, 1)
    stop = torch.tensor([0.9, 0.9, 0.9, 0.9, 0.9, math.nan])
    status = torch.tensor([ACTIVE, STEPS_DONE, MAX_SHIFT, NON_FINITE, ACTIVE, ACTIVE], dtype=torch.int32)
    got = final_status(status, logits, weights, stop)
    assert got.tolist() == [TARGET_REACHED, TARGET_REACHED, MAX_SHIFT, NON_FINITE, STEPS_DONE, STEPS_DONE]
    assert got.dtype == torch.int32


_WITHOUT_TRITON = """
import importlib.util, sys
real = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a, **k: None if name == "triton" else real(name, *a, **k)
import numpy as np
import pytest
sys.exit(pytest.main(["tests/test_kernels_triton.py", "-q", "-p", "no:cacheprovider", "-k", "without_the_interpreter"]))
"""


@pytest.mark.parametrize("require", [False, True])
def test_triton_tests_fail_rather_than_skip_when_triton_is_required(require):
    env = {k: v for k, v in os.environ.items() if k != "ZSTEER_REQUIRE_TRITON"}
    if require:
        env["ZSTEER_REQUIRE_TRITON"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TRITON],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    if require:
        assert proc.returncode == 1 and "1 error" in out, out[-3000:]
        assert "ZSTEER_REQUIRE_TRITON=1 but triton is not installed" in out, out[-3000:]
    else:
        assert proc.returncode == 0 and "1 skipped" in out, out[-3000:]


def test_a_fallback_is_said_once_whatever_the_shapes(fresh_dispatch):
    """A caller whose batch size varies hears a reason once, not once per shape; another reason is new."""
    with pytest.warns(UserWarning) as record:
        dispatch.say_once("objective", "weights has shape [5, 4]; the Triton kernel takes exactly [7, 4]")
        dispatch.say_once("objective", "weights has shape [9, 4]; the Triton kernel takes exactly [3, 4]")
        dispatch.say_once("objective", "z is torch.float64")
    assert [str(r.message).split(": ", 2)[-1] for r in record] == [
        "weights has shape [5, 4]; the Triton kernel takes exactly [7, 4]", "z is torch.float64",
    ]  # fmt: skip
