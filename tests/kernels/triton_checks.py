"""Triton kernels against their torch references, element by element.

Not collected by a plain ``pytest`` run (the file name does not match test_*.py): Triton's interpreter
must be switched on before triton is first imported, which another test of the same session may already
have done. tests/test_kernels_triton.py runs this file in a fresh process with TRITON_INTERPRET=1. On a
CUDA machine run it directly (``python -m pytest tests/kernels/triton_checks.py``): the same checks then
compile the kernels and run them on the GPU (``ZSTEER_REQUIRE_CUDA=1`` makes a missing GPU an error
instead of a skip: benchmarks/gpu_check.sh runs it so).
"""

from __future__ import annotations

import math
import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# benchmarks/gpu_check.sh sets ZSTEER_REQUIRE_CUDA=1: on the GPU machine a skip (or the interpreter) would
# pass without a single kernel compiled for the GPU, so it is an error there.
if os.environ.get("ZSTEER_REQUIRE_CUDA") == "1" and (INTERPRET or not torch.cuda.is_available()):
    raise RuntimeError(
        "ZSTEER_REQUIRE_CUDA=1: these checks must run compiled on a CUDA device "
        f"(TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')!r}, cuda available: {torch.cuda.is_available()})"
    )
if not INTERPRET and not torch.cuda.is_available():
    pytest.skip(
        "needs CUDA, or TRITON_INTERPRET=1 set before triton is first imported "
        "(tests/test_kernels_triton.py runs this file so)",
        allow_module_level=True,
    )

from zsteer.core.status import ACTIVE, MAX_SHIFT, NON_FINITE, OUT_OF_RANGE, STEPS_DONE, TARGET_REACHED  # noqa: E402
from zsteer.kernels._triton_ascent_update import ascent_update_triton  # noqa: E402
from zsteer.kernels._triton_objective import objective_triton  # noqa: E402
from zsteer.kernels.ascent_update import (  # noqa: E402
    UpdateResult,
    ascent_update,
    ascent_update_torch,
)
from zsteer.kernels.objective import objective, objective_torch  # noqa: E402

DEVICE = "cpu" if INTERPRET else "cuda"
# Non-finite inputs are part of the cases: the interpreter's numpy warns about inf - inf and the like.
pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")
# (rtol, atol) of a kernel result against the reference. Half-precision results are compared with the
# reference run in float32 and rounded once, which is what the kernel computes.
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2)}


def _rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _close(got: torch.Tensor, want: torch.Tensor, dtype=torch.float32, what: str = "") -> None:
    assert got.dtype == want.dtype, what
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(got.cpu(), want.cpu(), rtol=rtol, atol=atol, equal_nan=True, msg=what or None)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal element by element, NaN where the other has NaN."""
    return bool(torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0)))


def _poisoned_like(t: torch.Tensor, fill: float) -> torch.Tensor:
    if t.is_floating_point():
        return torch.full_like(t, fill)
    return torch.full_like(t, -12345 if math.isnan(fill) else int(fill))


# ----------------------------------------------------------------------------------------------- objective


def _objective_inputs(n: int, a: int, preserve: str, seed: int):
    g = _rng(seed)
    logits = torch.randn(n, a, generator=g) * 3  # [N, A]
    logits0 = logits + torch.randn(n, a, generator=g) * 0.5
    logits0[::5] = logits[::5]  # delta exactly 0: the gradient must be the weights, not NaN
    targets = torch.rand(n, a, generator=g) < 0.3
    weights = torch.where(targets, torch.randn(n, a, generator=g), 0.0)  # signed targets, 0 elsewhere
    if preserve == "all":
        keep = torch.ones(n, a)
    elif preserve == "none":
        keep = torch.zeros(n, a)
    else:
        keep = (torch.rand(n, a, generator=g) < 0.5).float()
    return [t.to(DEVICE) for t in (logits, logits0, weights, keep)]


@pytest.mark.parametrize("preserve", ["all", "none", "mixed"])
@pytest.mark.parametrize("a", [1, 2, 40])
@pytest.mark.parametrize("n", [1, 7, 31, 257])
def test_objective_matches_reference(n, a, preserve):
    args = _objective_inputs(n, a, preserve, seed=n * 100 + a)
    want_score, want_grad = objective_torch(*args, 0.7)
    # Poisoned buffers, twice with different poison: an element the kernel skipped would differ.
    outs = []
    for fill in (math.nan, 7777.0):
        out = (_poisoned_like(want_score, fill), _poisoned_like(want_grad, fill))
        score, grad = objective_triton(*args, 0.7, out=out)
        assert score is out[0] and grad is out[1]
        outs.append((score.clone(), grad.clone()))
    assert _same_bits(outs[0][0], outs[1][0]) and _same_bits(outs[0][1], outs[1][1]), "unwritten outputs"
    score, grad = outs[0]
    _close(score, want_score, what="score")
    _close(grad, want_grad, what="grad_logits")
    zero = grad[::5]
    assert torch.isfinite(zero).all() and torch.equal(zero, args[2][::5]), "delta = 0 must give the weights"


@pytest.mark.parametrize("penalty", [0.0, 2.5])
def test_objective_penalty_values(penalty):
    args = _objective_inputs(33, 40, "mixed", seed=3)
    want = objective_torch(*args, penalty)
    got = objective_triton(*args, penalty)
    _close(got[0], want[0])
    _close(got[1], want[1])


def test_objective_non_finite_logits_like_reference():
    logits, logits0, weights, keep = _objective_inputs(12, 40, "mixed", seed=4)
    logits[1, 3] = math.nan
    logits[2, 0] = math.inf
    logits0[3, 5] = -math.inf
    logits[4] = math.nan
    want = objective_torch(logits, logits0, weights, keep, 0.7)
    got = objective_triton(logits, logits0, weights, keep, 0.7)
    _close(got[0], want[0], what="score")
    _close(got[1], want[1], what="grad_logits")


def test_objective_strided_broadcast_and_bool_inputs():
    n, a = 29, 40
    logits, logits0, weights, keep = _objective_inputs(n, a, "mixed", seed=5)
    logits_t = logits.t().contiguous().t()  # column-major
    logits0_s = torch.cat([logits0, logits0], dim=1)[:, ::2]  # column stride 2
    logits0_s = logits0_s.copy_(logits0)
    w_row = weights[0]  # [A], broadcast over the rows
    keep_b = keep.bool()
    assert not logits_t.is_contiguous() and not logits0_s.is_contiguous()
    want = objective_torch(logits_t, logits0_s, w_row, keep_b, 0.7)
    got = objective_triton(logits_t, logits0_s, w_row, keep_b, 0.7)
    _close(got[0], want[0])
    _close(got[1], want[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_objective_half_precision(dtype):
    args = [t.to(dtype) for t in _objective_inputs(65, 40, "mixed", seed=6)]
    score, grad = objective_triton(*args, 0.7)
    native = objective_torch(*args, 0.7)
    assert score.dtype == native[0].dtype == dtype and grad.dtype == native[1].dtype
    want = objective_torch(*[t.float() for t in args], 0.7)
    _close(score, want[0].to(dtype), dtype)
    _close(grad, want[1].to(dtype), dtype)
    # The reference computing in half differs only by its roundings.
    torch.testing.assert_close(score.float(), native[0].float(), rtol=0.05, atol=0.05)


def test_objective_mixed_dtypes_promote_like_torch():
    logits, logits0, weights, keep = _objective_inputs(9, 40, "mixed", seed=7)
    args = (logits.half(), logits0.half(), weights, keep)
    got = objective_triton(*args, 0.7)
    assert got[0].dtype == got[1].dtype == objective_torch(*args, 0.7)[0].dtype == torch.float32
    # The kernel subtracts the half logits in float32; the reference rounds the difference to half first.
    want = objective_torch(*[t.float() for t in args], 0.7)
    _close(got[0], want[0])
    _close(got[1], want[1])


def test_objective_rejects_other_dtypes_and_shapes():
    logits, logits0, weights, keep = _objective_inputs(4, 3, "mixed", seed=8)
    with pytest.raises(TypeError, match="float64"):
        objective_triton(logits.double(), logits0, weights, keep, 0.7)
    with pytest.raises(TypeError, match="int64"):
        objective_triton(logits.long(), logits0, weights, keep, 0.7)
    with pytest.raises(ValueError, match=r"\[N, A\]"):
        objective_triton(logits[0], logits0[0], weights[0], keep[0], 0.7)
    with pytest.raises(ValueError, match="out"):
        objective_triton(logits, logits0, weights, keep, 0.7, out=(torch.empty(5), torch.empty(4, 3)))


def test_objective_no_rows():
    args = [torch.empty(0, 40, device=DEVICE) for _ in range(4)]
    score, grad = objective_triton(*args, 0.7)
    assert score.shape == (0,) and grad.shape == (0, 40)


def test_objective_dispatch_triton():
    args = _objective_inputs(10, 40, "mixed", seed=9)
    got = objective(*args, 0.7, impl="triton")
    want = objective_triton(*args, 0.7)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


# ------------------------------------------------------------------------------------------ ascent_update


ROW_MODES = ("mixed", "all_active", "all_active_never_stop", "all_frozen")


def _update_inputs(n: int, d: int, a: int, seed: int, with_accum: bool, rows: str = "mixed"):
    """Rows of every kind: frozen, reaching now, never stopping, capped, with non-finite gradients.

    ``rows``: "mixed" (all of those), "all_active" (none frozen), "all_active_never_stop" (none frozen,
    stop_prob NaN everywhere) or "all_frozen" (every row stopped before, with NaN gradients: never read).
    """
    g = _rng(seed)
    z0 = torch.randn(n, d, generator=g)  # [N, D]
    radius = torch.rand(n, 1, generator=g) * 1.5  # some rows start past the cap of 1.0
    step = torch.randn(n, d, generator=g)
    z = z0 + radius * step / step.norm(dim=1, keepdim=True)
    grad = torch.randn(n, d, generator=g)
    grad *= torch.rand(n, 1, generator=g) * 2 / grad.norm(dim=1, keepdim=True)  # steps of 0 to 0.6 at lr 0.3
    grad[::7] = 0.0  # a zero gradient: normalisation must give a zero step, not NaN
    accum = None
    if with_accum:
        accum = torch.randn(n, d, generator=g)
        accum *= torch.rand(n, 1, generator=g) / accum.norm(dim=1, keepdim=True)
    logits = torch.randn(n, a, generator=g) * 2  # [N, A]
    weights = torch.where(torch.rand(n, a, generator=g) < 0.4, torch.randn(n, a, generator=g), 0.0)
    weights[::4] = 0.0  # rows without targets never reach

    # Per row: the smallest target margin; a stop probability below it is reached, above it is not.
    prob = torch.sigmoid(logits)
    margin = torch.where(weights > 0, prob, torch.where(weights < 0, 1 - prob, 1.0)).amin(dim=1)  # [N]
    kind = torch.arange(n) % 3
    stop_prob = torch.where(kind == 0, math.nan, torch.where(kind == 1, margin * 0.5, (margin + 1) / 2))

    if rows == "all_active_never_stop":
        stop_prob = torch.full((n,), math.nan)

    status = torch.full((n,), ACTIVE, dtype=torch.int32)
    codes = torch.tensor([STEPS_DONE, TARGET_REACHED, MAX_SHIFT, NON_FINITE], dtype=torch.int32)
    if rows == "mixed":
        frozen = torch.rand(n, generator=g) < 0.3
        status[frozen] = codes[torch.randint(0, 4, (n,), generator=g)][frozen]
    elif rows == "all_frozen":
        status = codes[torch.arange(n) % 4]
    for i in range(2, n, 6):  # NaN, +inf, -inf in one gradient element
        grad[i, i % d] = (math.nan, math.inf, -math.inf)[(i // 6) % 3]
    if n > 4 and d > 1:  # finite gradient, but its norm and the step overflow float32
        # (d > 1: for one element torch's norm returns |x| where x * x overflows.)
        z[4, 0], grad[4, 0] = 3.3e38, 1e38
    if n > 5 and d > 1:  # finite gradient and step, but the float32 norm overflows: NON_FINITE if normalised
        grad[5, :2] = 3e38  # (and, not normalised, a finite step past MAX_ABS_Z: OUT_OF_RANGE)
    for i in range(6, n, 50):  # a finite step of 0.3 from 999.9: just past MAX_ABS_Z, under the cap
        z0[i, 0] = 999.9
        z[i], grad[i] = z0[i], 0.0
        grad[i, 0] = 1.0
    if rows == "all_frozen":
        grad = torch.full_like(grad, math.nan)  # never read for frozen rows
    tensors = (z, z0, grad, accum, logits, weights, stop_prob, status)
    return [None if t is None else t.to(DEVICE) for t in tensors]


def _poisoned_result(want: UpdateResult, fill: float) -> UpdateResult:
    return UpdateResult(*(None if t is None else _poisoned_like(t, fill) for t in want))


def _check_update(got: UpdateResult, want: UpdateResult, dtype=torch.float32) -> None:
    assert (got.accum is None) == (want.accum is None)
    assert torch.equal(got.status.cpu(), want.status.cpu()), "status"
    assert torch.equal(got.moved.cpu(), want.moved.cpu()), "moved"
    assert got.status.dtype == want.status.dtype and got.moved.dtype == torch.int32
    for name in ("z", "accum", "grad_norm", "shift"):
        if getattr(want, name) is not None:
            _close(getattr(got, name), getattr(want, name), dtype, what=name)


@pytest.mark.parametrize("rows", ROW_MODES)
@pytest.mark.parametrize("max_shift", [math.inf, 1.0])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("with_accum", [False, True])
@pytest.mark.parametrize(
    "n,d,a",
    [(1, 1, 1), (1, 64, 40), (7, 100, 2), (7, 1, 40), (31, 64, 1), (31, 100, 40),
     (257, 64, 40), (257, 100, 2), (257, 1, 1)],
)  # fmt: skip
def test_ascent_update_matches_reference(n, d, a, with_accum, normalize, max_shift, rows):
    args = _update_inputs(n, d, a, seed=n * 1000 + d * 10 + a, with_accum=with_accum, rows=rows)
    want = ascent_update_torch(*args, 0.3, max_shift, normalize)
    results = []
    for fill in (math.nan, -7777.0):
        out = _poisoned_result(want, fill)
        got = ascent_update_triton(*args, 0.3, max_shift, normalize, out=out)
        assert got is out
        results.append(UpdateResult(*(None if t is None else t.clone() for t in got)))
    for first, second in zip(*results, strict=True):
        assert first is None or _same_bits(first, second), "the kernel left output elements unwritten"
    _check_update(results[0], want)
    got, (z, _, _, accum, *_, status) = results[0], args
    if rows == "all_frozen":  # passed through exactly, the NaN gradients never read
        assert torch.equal(got.z, z) and (accum is None or torch.equal(got.accum, accum))
        assert torch.equal(got.status, status) and not got.moved.any() and not got.grad_norm.any()
    if rows == "all_active_never_stop":
        assert not (got.status == TARGET_REACHED).any()
    if n > 5 and d > 1 and normalize and status[5] == ACTIVE:
        assert got.status[5] == NON_FINITE, "a normalised step with an overflowed norm is flagged"


def test_update_inputs_cover_every_case():
    """The generated rows reach every branch of the update (else the comparisons above prove less)."""
    args = _update_inputs(257, 64, 40, seed=11, with_accum=True)
    want = ascent_update_torch(*args, 0.3, 1.0, False)
    status_in = args[7].cpu()
    new = want.status[status_in == ACTIVE]
    for code in (ACTIVE, TARGET_REACHED, MAX_SHIFT, NON_FINITE, OUT_OF_RANGE):
        assert (new == code).any(), code
    assert (want.moved == 0).any() and (want.moved == 1).any()


def test_ascent_update_strided_inputs_and_int64_status():
    n, d, a = 45, 64, 40
    z, z0, grad, accum, logits, weights, stop_prob, status = _update_inputs(n, d, a, 14, True)
    wide = torch.cat([grad, torch.randn(n, 10, device=DEVICE)], dim=1)
    grad_s = wide[:, :d]  # as the engine's grad_in[:, :z_dim] for a conditional generator
    z_t = z.t().contiguous().t()
    stop_s = torch.stack([stop_prob, stop_prob], dim=1)[:, 0]
    status64 = status.long()
    assert not grad_s.is_contiguous() and not z_t.is_contiguous() and not stop_s.is_contiguous()
    args = (z_t, z0, grad_s, accum, logits, weights, stop_s, status64)
    want = ascent_update_torch(*args, 0.3, 1.0, False)
    got = ascent_update_triton(*args, 0.3, 1.0, False)
    assert got.status.dtype == torch.int64
    _check_update(got, want)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_ascent_update_half_precision(dtype):
    z, z0, grad, accum, logits, weights, stop_prob, status = _update_inputs(64, 64, 40, 15, True)
    z[4, 0], grad[4, 0] = 1.0, 1.0  # the overflow row is a float32 case
    z[6::50, 0] = z0[6::50, 0] = 1.0  # so are the steps just past MAX_ABS_Z (999.9 is 1000 in bfloat16)
    half = [t.to(dtype) for t in (z, z0, grad, accum, logits, weights, stop_prob)]
    got = ascent_update_triton(*half[:6], half[6], status, 0.3, 1.0, True)
    want = ascent_update_torch(*[t.float() for t in half], status, 0.3, 1.0, True)
    rounded = UpdateResult(*(t.to(dtype) if t.is_floating_point() else t for t in want))
    _check_update(got, rounded, dtype)


def test_ascent_update_rejects_bad_inputs():
    z, z0, grad, accum, logits, weights, stop_prob, status = _update_inputs(6, 8, 3, 16, True)
    rest = (logits, weights, stop_prob, status, 0.3, 1.0, False)
    with pytest.raises(TypeError, match="float64"):
        ascent_update_triton(z.double(), z0.double(), grad.double(), None, *rest)
    with pytest.raises(TypeError, match="one dtype"):
        ascent_update_triton(z, z0, grad.half(), accum, *rest)
    with pytest.raises(ValueError, match="grad has shape"):
        ascent_update_triton(z, z0, grad[:5], accum, *rest)
    with pytest.raises(TypeError, match="integer codes"):
        ascent_update_triton(z, z0, grad, accum, logits, weights, stop_prob, status.float(), 0.3, 1.0, False)
    with pytest.raises(ValueError, match="out.accum"):
        want = ascent_update_torch(z, z0, grad, accum, *rest)
        ascent_update_triton(z, z0, grad, accum, *rest, out=want._replace(accum=None))


def test_ascent_update_no_rows():
    args = _update_inputs(0, 64, 40, 17, True)
    got = ascent_update_triton(*args, 0.3, 1.0, False)
    assert got.z.shape == (0, 64) and got.status.shape == (0,)


def test_ascent_update_dispatch_triton():
    args = _update_inputs(19, 64, 40, 18, False)
    got = ascent_update(*args, 0.3, 1.0, True, impl="triton")
    want = ascent_update_triton(*args, 0.3, 1.0, True)
    for x, y in zip(got, want, strict=True):
        assert x is None or _same_bits(x, y)


# ------------------------------------------------------------------------------ out= buffers, operators

MARGIN = 3


def _strided_view(shape: tuple[int, ...], dtype, fill: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(a poisoned buffer, a view into it of ``shape`` with column stride 2 and margins on every side)."""
    if len(shape) == 1:
        big = torch.empty(3 * shape[0] + 2 * MARGIN, dtype=dtype, device=DEVICE)
        view = big[MARGIN : MARGIN + 3 * shape[0] : 3]
    else:
        rows, cols = shape
        big = torch.empty(rows + 2 * MARGIN, 2 * cols + 2 * MARGIN, dtype=dtype, device=DEVICE)
        view = big[MARGIN : MARGIN + rows, MARGIN : MARGIN + 2 * cols : 2]
    big.copy_(_poisoned_like(big, fill))
    assert tuple(view.shape) == shape and view.stride()[-1] > 1 and view.storage_offset() > 0
    return big, view


def _untouched(big: torch.Tensor, view: torch.Tensor, fill: float) -> bool:
    """Every element of ``big`` outside ``view`` still holds the poison."""
    outside = torch.ones_like(big, dtype=torch.bool)
    outside_view = outside.as_strided(view.shape, view.stride(), view.storage_offset() - big.storage_offset())
    outside_view.fill_(False)
    rest = big[outside]
    return _same_bits(rest.double(), _poisoned_like(rest, fill).double())


@pytest.mark.parametrize("fill", [math.nan, 4321.0])
@pytest.mark.parametrize("n,a", [(1, 1), (13, 40), (70, 3)])
def test_objective_writes_only_its_strided_out_buffers(n, a, fill):
    args = _objective_inputs(n, a, "mixed", seed=21 + n)
    want = objective_torch(*args, 0.7)
    (big_s, score), (big_g, grad) = (
        _strided_view((n,), want[0].dtype, fill),
        _strided_view((n, a), want[1].dtype, fill),
    )
    got = objective_triton(*args, 0.7, out=(score, grad))
    assert got[0] is score and got[1] is grad
    _close(score, want[0], what="score")
    _close(grad, want[1], what="grad_logits")
    assert _untouched(big_s, score, fill) and _untouched(big_g, grad, fill), "wrote outside its out= views"


@pytest.mark.parametrize("with_accum", [False, True])
@pytest.mark.parametrize("fill", [math.nan, -4321.0])
@pytest.mark.parametrize("n,d,a", [(1, 1, 1), (9, 64, 40), (37, 5, 3)])
def test_ascent_update_writes_only_its_strided_out_buffers(n, d, a, fill, with_accum):
    args = _update_inputs(n, d, a, seed=31 + n, with_accum=with_accum)
    want = ascent_update_torch(*args, 0.3, 1.0, True)
    bigs, views = {}, {}
    for name, t in want._asdict().items():
        if t is not None:
            bigs[name], views[name] = _strided_view(tuple(t.shape), t.dtype, fill)
    out = UpdateResult(**{name: views.get(name) for name in UpdateResult._fields})
    got = ascent_update_triton(*args, 0.3, 1.0, True, out=out)
    assert got is out
    _check_update(got, want)
    for name in views:
        assert _untouched(bigs[name], views[name], fill), f"wrote outside out.{name}"


def test_operators_are_registered_and_match_the_references():
    """zsteer::objective and zsteer::ascent_update (torch.library.triton_op), called as operators."""
    args = _objective_inputs(23, 40, "mixed", seed=41)
    want = objective_torch(*args, 0.7)
    got = torch.ops.zsteer.objective(*args, 0.7)
    _close(got[0], want[0])
    _close(got[1], want[1])
    for with_accum in (False, True):
        uargs = _update_inputs(23, 64, 40, seed=42, with_accum=with_accum)
        want_u = ascent_update_torch(*uargs, 0.3, 1.0, True)
        z, acc, *rest = torch.ops.zsteer.ascent_update(*uargs, 0.3, 1.0, True)
        assert acc.numel() == 0 if not with_accum else acc.shape == z.shape
        _check_update(UpdateResult(z, acc if with_accum else None, *rest), want_u)


# ---------------------------------------------------------------------------------------------- engine


def _engine_models():
    from zsteer.pipeline.checkpoints import LoadedModel
    from zsteer.pipeline.models import ClassifierSpec, CourseClassifier, CourseGenerator, GeneratorSpec

    torch.manual_seed(0)
    gspec, cspec = GeneratorSpec(z_dim=16, hidden_dim=4), ClassifierSpec(n_classes=6, hidden_dim=4)
    modules = CourseGenerator(16, 3, 4), CourseClassifier(3, 6, 4)
    with torch.no_grad():  # real gain: default-init models have input gradients below fp32 resolution
        for layer in (m for module in modules for m in module.modules()):
            if isinstance(layer, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
                fan = layer.weight[0].numel() if isinstance(layer, torch.nn.Conv2d) else layer.weight.shape[0]
                layer.weight.normal_(0.0, math.sqrt(2.0 / fan))
    gen = LoadedModel(modules[0].eval(), gspec, "g", "g")
    cls = LoadedModel(modules[1].eval(), cspec, "c", "c", tuple("abcdef"))
    return gen, cls


def _engine_edit(impl: str, mode: str, compile: str = "off"):
    from zsteer.pipeline.engine import AscentConfig, EngineConfig, default_preserve, make_engine

    gen, cls = _engine_models()
    n = 11
    z = torch.randn(n, 16, generator=_rng(1))
    weights = torch.zeros(n, 6)
    weights[:, 1], weights[:, 4] = 1.0, -0.5
    budget = torch.tensor([4, 2, 3], dtype=torch.int32).repeat(4)[:n]  # 4 steps reach the cap, 2 or 3 do not
    if mode == "lab":
        # Normalised steps: random-init models have tiny gradients, but unit steps still move every row.
        stop = torch.where(torch.arange(n) % 2 == 0, math.nan, 0.5)
        ascent = AscentConfig(steps=4, lr=0.12, normalize=True, max_shift=0.45, lab_compat=True)
    else:  # clean mode: fresh gradients, no accum, plain gradient steps; a stop probability on most rows
        stop = torch.where(torch.arange(n) % 4 == 0, math.nan, 0.5)
        ascent = AscentConfig(steps=4, lr=1.0, penalty=0.3, max_shift=3.0)
    engine = make_engine(gen, cls, ascent, EngineConfig(batch_size=8, compile=compile, impl=impl))
    result = engine.edit(
        z, weights, default_preserve(weights), max_steps=budget, stop_prob=stop, render=False
    )
    return engine, result


def _check_engine_results(got, want) -> None:
    assert torch.equal(got.status, want.status) and torch.equal(got.steps_taken, want.steps_taken)
    torch.testing.assert_close(got.z_edited, want.z_edited, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.logits_after, want.logits_after, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["lab", "clean"])
def test_engine_with_triton_kernels_matches_torch(mode):
    """The engine's whole edit (objective + update + compaction) with impl="triton" against "torch"."""
    _, want = _engine_edit("torch", mode)
    engine, got = _engine_edit("triton", mode)
    assert engine.kernel_impls == {"objective": "triton", "ascent_update": "triton"}
    wanted = {STEPS_DONE, TARGET_REACHED, MAX_SHIFT}
    assert wanted <= set(want.status.tolist()), f"cover the stop reasons: {want.status.tolist()}"
    assert (want.steps_taken > 0).any() and (want.steps_taken < 4).any()
    _check_engine_results(got, want)


def test_engine_honours_triton_under_compile_on():
    """compile="on" with impl="triton": the interpreter cannot be traced, so the step runs uncompiled with
    the Triton kernels (said once) rather than silently using the reference."""
    _, want = _engine_edit("torch", "clean")
    with pytest.warns(UserWarning, match="step runs uncompiled") as record:
        engine, got = _engine_edit("triton", "clean", compile="on")
    assert len([w for w in record if "step runs uncompiled" in str(w.message)]) == 1
    assert engine.kernel_impls == {"objective": "triton", "ascent_update": "triton"} and not engine.compiled
    _check_engine_results(got, want)
