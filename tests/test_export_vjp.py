"""The hand-written input-gradients (export/vjp.py, export/graphs.py) against torch autograd, in torch.

Like with like: the models have real gain (tests/exportkit.py; random-init course models have input
gradients near 1e-8, below fp32 resolution) and both paths share one EditNet, so their forwards are
bit-identical and only the backward's rounding differs. The 10-step comparison is made step by step
from the engine's own states (teacher forcing): a free-running comparison of two trajectories measures
how this iteration amplifies an ulp (ReLU kinks, and delta / ||delta|| right after step 0, where
||delta|| is tiny), not the VJP; ``test_free_running_drift_is_amplification`` shows that effect.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from exportkit import gain_models, update_edge_cases
from torch import nn

from zsteer.core.errors import ExportError
from zsteer.core.status import MAX_SHIFT, NON_FINITE, STEPS_DONE, TARGET_REACHED
from zsteer.export.graphs import EditVJP, build_edit_vjp, update_rows
from zsteer.export.vjp import BilinearResize, VJPStack
from zsteer.kernels.ascent_update import ascent_update_torch
from zsteer.pipeline.engine import AscentConfig, AscentEngine, EngineConfig, default_preserve
from zsteer.pipeline.network import EditNet

RTOL = 1e-4


def _autograd_vjp(stack: nn.Module, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(stack(x), x, g)
    return grad


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize(
    "layers, shape",
    [
        # Strided convs whose input size is not a multiple of the stride: the adjoint needs output padding.
        (
            [nn.Conv2d(3, 5, 4, stride=3), nn.BatchNorm2d(5), nn.LeakyReLU(0.2), nn.Conv2d(5, 4, 3, 2)],
            (3, 17, 17),
        ),
        ([nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2), nn.ReLU(), nn.Tanh()], (4, 12, 11)),
        # The masks are read from the activations' outputs; a negative or zero slope, or one above 1, is
        # where that needs care (a negative slope's output is > 0 on both sides: its input is taped).
        (
            [nn.Conv2d(3, 5, 3), nn.LeakyReLU(-0.3), nn.Conv2d(5, 5, 3), nn.LeakyReLU(0.0)]
            + [nn.Conv2d(5, 4, 3), nn.LeakyReLU(1.5)],
            (3, 11, 11),
        ),
        (
            [
                nn.ConvTranspose2d(6, 4, 3, stride=2),
                nn.BatchNorm2d(4),
                nn.ReLU(),
                nn.ConvTranspose2d(4, 2, 4, 2),
            ],
            (6, 1, 1),
        ),
        (
            [nn.ConvTranspose2d(4, 6, 3, stride=3, padding=1, output_padding=1, groups=2), nn.Tanh()],
            (4, 5, 4),
        ),
    ],
)
def test_stack_backward_matches_autograd(layers, shape):
    torch.manual_seed(0)
    for layer in layers:
        if isinstance(layer, nn.BatchNorm2d):  # eval-mode statistics that are not the identity
            layer.running_mean.normal_(0, 0.2)
            layer.running_var.uniform_(0.5, 2.0)
            layer.weight.data.uniform_(0.5, 1.5)
    ref = nn.Sequential(*layers).eval()
    stack = VJPStack(layers, shape)
    x = torch.randn(6, *shape)
    y, tape = stack.forward_tape(x)
    torch.testing.assert_close(y, ref(x), rtol=1e-5, atol=1e-6)
    g = torch.randn_like(y)
    assert _rel(stack.backward(g, tape), _autograd_vjp(ref, x, g)) < 1e-5


def test_multiplied_masks_equal_where_masks():
    """The default backward multiplies the ReLU / LeakyReLU masks in (onnxruntime's Where is slow); for
    finite gradients the result is bit-identical to the torch.where form, zeros at exactly 0 included."""
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.LeakyReLU(0.2), nn.Conv2d(8, 4, 3)]
    fast, slow = VJPStack(layers, (3, 12, 12)), VJPStack(layers, (3, 12, 12), mask_by_multiply=False)
    x = torch.randn(5, 3, 12, 12)
    x[:, :, :4] = 0.0  # a zero input patch: pre-activations equal to the bias, some of them <= 0
    y, tape = fast.forward_tape(x)
    tape[1][0] = 0.0  # a ReLU pre-activation exactly at 0: gradient 0 in both forms
    g = torch.randn_like(y)
    assert torch.equal(fast.backward(g, tape), slow.backward(g, tape))


def test_unsupported_layer_is_refused_by_name():
    with pytest.raises(ExportError, match="layer 1.*Dropout has no hand-written input-gradient"):
        VJPStack([nn.Conv2d(3, 4, 3), nn.Dropout(0.1)], (3, 8, 8), "classifier")
    with pytest.raises(ExportError, match="padding_mode='reflect'"):
        VJPStack([nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")], (3, 8, 8))


def test_edit_net_with_unsupported_layer_is_an_export_error():
    gen, cls = gain_models()
    cls.module.classifier.append(nn.Sigmoid())
    with pytest.raises(ExportError, match="Sigmoid is not supported"):
        build_edit_vjp(gen, cls)


@pytest.mark.parametrize("in_hw, out_hw", [((28, 28), (64, 64)), ((64, 48), (31, 64))])
def test_bilinear_resize_matches_torch_and_its_adjoint(in_hw, out_hw):
    resize = BilinearResize(in_hw, out_hw)
    x = torch.randn(2, 3, *in_hw)
    torch.testing.assert_close(
        resize(x), F.interpolate(x, size=out_hw, mode="bilinear", align_corners=False), rtol=1e-5, atol=1e-6
    )
    g = torch.randn(2, 3, *out_hw)
    ref = _autograd_vjp(lambda t: F.interpolate(t, size=out_hw, mode="bilinear", align_corners=False), x, g)
    assert _rel(resize.backward(g), ref) < 1e-5


def _record_engine_steps(net: EditNet, config: AscentConfig, z, weights, labels=None):
    """Run the autograd engine and keep every step's inputs and outputs (its own trajectory)."""
    engine = AscentEngine(net, config, EngineConfig(batch_size=128, compile="off", impl="torch"))
    calls = []

    def step(z_in, logits0, w, p, penalty):
        out = engine._grad_step(z_in, logits0, w, p, penalty)
        calls.append((z_in.clone(), None if logits0 is None else logits0.clone(), w, p, penalty, out))
        return out

    engine._step = step
    engine.edit(z, weights, default_preserve(weights), labels, render=False)
    return calls


def _targets(n: int, a: int) -> torch.Tensor:
    w = torch.zeros(n, a)
    w[:, 0] = 1.0
    w[::2, 1] = -0.5
    return w


def _teacher_forced(vjp: EditVJP, calls) -> float:
    """Worst per-row relative difference of d score / d z_in over all recorded steps."""
    worst = 0.0
    assert len(calls) == 10
    for z_in, logits0, w, p, penalty, (logits_a, _, grad_a) in calls:
        logits_m, _, grad_m = vjp.grad_step(z_in, logits0, w, p, penalty)
        assert torch.equal(logits_m, logits_a)  # same forward: bit-identical logits
        scale = grad_a.abs().amax(dim=1).clamp_min(1e-12)
        worst = max(worst, float(((grad_m - grad_a).abs().amax(dim=1) / scale).max()))
    return worst


@pytest.fixture(scope="module")
def small(gain_pair):
    return build_edit_vjp(*gain_pair)


@pytest.mark.parametrize("n", [1, 8, 128])
@pytest.mark.parametrize("lab_compat", [False, True])
def test_ten_steps_match_autograd(small, n, lab_compat):
    net, vjp = small
    z = torch.randn(n, net.z_dim, generator=torch.Generator().manual_seed(n))
    config = AscentConfig(steps=10, penalty=0.3, lab_compat=lab_compat, lr=0.5 if lab_compat else None)
    calls = _record_engine_steps(net, config, z, _targets(n, vjp.n_logits))
    assert calls[1][-1][2].abs().max() > 1e-2  # real gain: gradients far above fp32 resolution
    assert _teacher_forced(vjp, calls) < RTOL


@pytest.mark.parametrize("n", [1, 8, 128])
def test_ten_steps_match_autograd_conditional_with_resize(n):
    # C1W4A-style 28x28 one-channel generator feeding a 64x64 three-channel classifier.
    gen, cls = gain_models(z_dim=6, hidden_dim=8, n_attributes=4, n_labels=10, conditional_kind=True,
                           im_chan=1, class_chan=3)  # fmt: skip
    net, vjp = build_edit_vjp(gen, cls)
    assert vjp.resize is not None and vjp.expand == 3
    g = torch.Generator().manual_seed(n)
    z, labels = torch.randn(n, 6, generator=g), torch.randint(0, 10, (n,), generator=g)
    calls = _record_engine_steps(net, AscentConfig(steps=10, penalty=0.3), z, _targets(n, 4), labels)
    assert calls[0][0].shape == (max(n, 2), 16)  # z and the one-hot label (one row is padded to two)
    assert _teacher_forced(vjp, calls) < RTOL


def test_step_zero_penalty_gradient_is_exactly_zero(small):
    """At step 0 delta is exactly 0: the penalty adds nothing, even with a huge lambda."""
    net, vjp = small
    z = torch.randn(16, net.z_dim)
    w = _targets(16, vjp.n_logits)
    _, _, with_penalty = vjp.grad_step(z, None, w, default_preserve(w), 1e6)
    _, _, without = vjp.grad_step(z, None, w, default_preserve(w), 0.0)
    assert torch.equal(with_penalty, without)


@pytest.mark.slow
def test_free_running_drift_is_amplification(small):
    """Why the 10-step test is teacher-forced: the prototype's drift, reproduced and explained.

    Free-running, the two gradient paths start bit-identical, yet a few of 128 rows end far apart: right
    after step 0 ||delta|| is ~1e-3 for some rows, so an ulp of difference in z moves delta / ||delta||
    by ~1e-4, and a ReLU whose pre-activation is within an ulp of 0 flips its mask. Most rows agree to
    ~1e-6; the worst are orders of magnitude apart from the typical row (at 128 rows, seed 128: two rows
    near 1e-2, the prototype's "drift at batch 128"; with 8 rows there are usually none).
    """
    net, vjp = small
    n = 32
    z = torch.randn(n, net.z_dim, generator=torch.Generator().manual_seed(n))
    w = _targets(n, vjp.n_logits)
    config = AscentConfig(steps=10, penalty=0.3)
    autograd = AscentEngine(net, config, EngineConfig(compile="off", impl="torch"))
    manual = AscentEngine(net, config, EngineConfig(compile="off", impl="torch"))
    manual._step = vjp.grad_step
    ra = autograd.edit(z, w, default_preserve(w), render=False)
    rm = manual.edit(z, w, default_preserve(w), render=False)
    da, dm = ra.z_edited - z, rm.z_edited - z
    per_row = (da - dm).abs().amax(dim=1) / da.abs().amax(dim=1)
    assert float(per_row.median()) < 1e-5  # the typical row: rounding only
    assert (per_row < RTOL).float().mean() > 0.9


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("lab", [False, True])
@pytest.mark.parametrize("max_shift", [math.inf, 0.5])
def test_update_rows_matches_reference(normalize, lab, max_shift):
    z, z0, grad, accum, logits, weights, stop_prob, status = update_edge_cases()
    accum = accum if lab else None
    ref = ascent_update_torch(
        z, z0, grad, accum, logits, weights, stop_prob, status, 0.3, max_shift, normalize
    )
    out = update_rows(
        z, z0, grad, accum, logits, weights, stop_prob, status,
        torch.tensor(0.3), torch.tensor(max_shift), torch.tensor(normalize),
    )  # fmt: skip
    new_z, new_accum, grad_norm, shift, new_status, moved = out
    assert torch.equal(new_status, ref.status) and new_status.dtype == torch.int32
    assert torch.equal(moved, ref.moved)
    torch.testing.assert_close(new_z, ref.z, rtol=0, atol=0)
    torch.testing.assert_close(grad_norm, ref.grad_norm, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(shift, ref.shift, rtol=0, atol=0)
    if lab:
        torch.testing.assert_close(new_accum, ref.accum, rtol=0, atol=0, equal_nan=True)
    codes = set(new_status.tolist())
    assert {STEPS_DONE, TARGET_REACHED, NON_FINITE} <= codes
    assert (MAX_SHIFT in codes) == (max_shift < math.inf)


def test_vjp_modules_move_like_any_module():
    """VJPStack once named a method ``_apply``, shadowing nn.Module._apply: ``.to()``, ``.double()`` and
    ``.cuda()`` of an EditVJP then raised TypeError. Moved to float64, it still matches autograd."""
    generator, classifier = gain_models(z_dim=4, hidden_dim=4, n_attributes=3)
    net, vjp = build_edit_vjp(generator, classifier)
    vjp = vjp.double()
    z = torch.randn(3, 4, dtype=torch.float64)
    logits, tape = vjp.forward_tape(z)
    g = torch.randn_like(logits)
    ref = _autograd_vjp(net.double(), z, g)
    assert vjp.backward(g, tape).dtype == torch.float64
    torch.testing.assert_close(vjp.backward(g, tape), ref, rtol=1e-9, atol=1e-12)
