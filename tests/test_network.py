"""EditNet (pipeline/network.py): the folded, channels_last network against the modules it was built from."""

from __future__ import annotations

import pytest
import torch
from exportkit import gain_models
from torch import nn

from zsteer.pipeline.network import EditNet
from zsteer.pipeline.phase_conv import PhaseLayer
from zsteer.pipeline.wide_conv import WideLayer, transpose_then_bias


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    "geometry",
    [
        dict(kernel_size=3, stride=2),
        dict(kernel_size=4, stride=2, padding=1, output_padding=1),
        dict(kernel_size=3, stride=3, dilation=2, groups=2),
    ],
)
def test_bias_after_the_transposed_conv_is_the_layer(bias, geometry):
    torch.manual_seed(0)
    layer = nn.ConvTranspose2d(6, 4, bias=bias, **geometry).eval()
    x = torch.randn(5, 6, 7, 9)
    with torch.no_grad():
        torch.testing.assert_close(transpose_then_bias(layer, x), layer(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fast_forms", [True, False])
@pytest.mark.parametrize("channels_last", [True, False])
def test_generate_and_classify_match_the_course_modules(channels_last, fast_forms):
    generator, classifier = gain_models(z_dim=8, hidden_dim=8, n_attributes=5)
    net = EditNet(generator, classifier, channels_last=channels_last, fast_forms=fast_forms)
    assert sum(isinstance(m, PhaseLayer) for m in net.modules()) == (2 if fast_forms else 0)
    # every other convolution: the generator's four wide transposed ones, the classifier's three wide ones
    assert sum(isinstance(m, WideLayer) for m in net.modules()) == (7 if fast_forms else 0)
    z = torch.randn(9, 8)
    with torch.no_grad():
        images = generator.module(z)
        torch.testing.assert_close(net.generate(z), images, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(net(z), classifier.module(images), rtol=1e-4, atol=1e-4)


def test_the_fast_input_gradient_is_autograd_through_the_plain_layers():
    """The engine's VJP (in-place activations, the convolutions' fast forms) against autograd through
    the same folded layers run plainly, in float64 so that only the algebra is compared."""
    generator, classifier = gain_models(z_dim=8, hidden_dim=8, n_attributes=5)
    fast = EditNet(generator, classifier, fast_forms=True).double()
    plain = EditNet(generator, classifier, fast_forms=False).double()
    z = torch.randn(7, 8, dtype=torch.float64)
    grad = torch.randn(7, 5, dtype=torch.float64)
    logits, vjp = torch.func.vjp(fast, z)
    (got,) = vjp(grad)
    leaf = z.clone().requires_grad_(True)
    want_logits = plain.cls(plain.gen(leaf.view(7, 8, 1, 1))).flatten(1)  # the Sequentials, no fast path
    (want,) = torch.autograd.grad(want_logits, leaf, grad)
    torch.testing.assert_close(logits, want_logits.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
