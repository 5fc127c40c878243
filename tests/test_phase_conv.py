"""The 3-channel layers by phases (pipeline/phase_conv.py) against torch's own convolutions and autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zsteer.pipeline.phase_conv import (
    PhaseLayer,
    can_run_by_phases,
    interleave_phases,
    phase_bias,
    phase_major,
    phase_weight,
    runs_by_phases,
    transpose_by_phases,
)

# (dtype, rtol, atol): float64 checks the algebra; float32 and bfloat16 the rounding the engine sees.
TOLERANCES = [(torch.float64, 1e-10, 1e-10), (torch.float32, 1e-4, 1e-4), (torch.bfloat16, 4e-2, 4e-2)]


def _input_gradient(
    layer: nn.Module, x: torch.Tensor, grad: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = x.clone().requires_grad_(True)
    y = layer(leaf)
    (gx,) = torch.autograd.grad(y, leaf, grad)
    return y.detach(), gx


def _assert_same_layer(fast: nn.Module, layer: nn.Module, x: torch.Tensor, rtol: float, atol: float) -> None:
    """``fast`` gives ``layer``'s output and autograd's input gradient for a random output gradient."""
    with torch.no_grad():
        grad = torch.randn_like(layer(x))
    y_ref, g_ref = _input_gradient(layer, x, grad)
    y, g = _input_gradient(fast, x, grad)
    torch.testing.assert_close(y, y_ref, rtol=rtol, atol=atol)
    torch.testing.assert_close(g, g_ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize(("dtype", "rtol", "atol"), TOLERANCES)
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize(
    ("cin", "cout", "kernel", "stride", "size"),
    [
        (5, 3, 4, 2, (7, 9)),
        (6, 1, 6, 3, (5, 4)),
        (4, 2, (4, 2), 2, (3, 6)),
        (3, 3, 2, 1, (5, 5)),
    ],
)
def test_transposed_layer_by_phases_is_the_layer(
    dtype, rtol, atol, memory_format, cin, cout, kernel, stride, size
):
    torch.manual_seed(0)
    layer = nn.ConvTranspose2d(cin, cout, kernel, stride).eval().requires_grad_(False)
    fast = PhaseLayer(layer)
    layer, fast = layer.to(dtype, memory_format=memory_format), fast.to(dtype, memory_format=memory_format)
    x = torch.randn(3, cin, *size, dtype=dtype).contiguous(memory_format=memory_format)
    _assert_same_layer(fast, layer, x, rtol, atol)


@pytest.mark.parametrize(("dtype", "rtol", "atol"), TOLERANCES)
@pytest.mark.parametrize(
    ("cin", "cout", "kernel", "stride", "size"),
    # (11 - 4) % 2 == 1 and (10 - 6) % 3 == 1: the last input row and column read by no output
    [(3, 5, 4, 2, (11, 12)), (1, 4, 6, 3, (10, 9)), (2, 3, 4, 4, (8, 13)), (3, 2, 1, 1, (4, 3))],
)
def test_convolution_with_its_gradient_by_phases_is_the_layer(
    dtype, rtol, atol, cin, cout, kernel, stride, size
):
    torch.manual_seed(1)
    layer = nn.Conv2d(cin, cout, kernel, stride).eval().requires_grad_(False).to(dtype)
    fast = PhaseLayer(layer)
    x = torch.randn(2, cin, *size, dtype=dtype)
    _assert_same_layer(fast, layer, x, rtol, atol)


def test_phase_weight_reproduces_conv_transpose_exactly_in_float64():
    torch.manual_seed(2)
    w = torch.randn(4, 3, 6, 4, dtype=torch.float64)  # rectangular kernel, stride 2: m = (3, 2)
    x = torch.randn(2, 4, 5, 7, dtype=torch.float64)
    ref = F.conv_transpose2d(x, w, None, 2)
    got = transpose_by_phases(x, phase_major(phase_weight(w, 2), 2), 2, tuple(ref.shape[-2:]))
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_the_phase_bias_is_the_transposed_convolutions_bias_in_float64():
    torch.manual_seed(4)
    w, b = torch.randn(5, 3, 6, 6, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    x = torch.randn(2, 5, 4, 3, dtype=torch.float64)
    ref = F.conv_transpose2d(x, w, b, 3)
    got = transpose_by_phases(
        x, phase_major(phase_weight(w, 3), 3), 3, tuple(ref.shape[-2:]), phase_bias(b, 3)
    )
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize(("channels", "stride"), [(3, 2), (1, 3), (2, 1)])
def test_interleave_phases_is_pixel_shuffle_of_the_phase_major_channels(memory_format, channels, stride):
    """The same values moved, bit for bit, and the result in the input's layout."""
    y = torch.randn(3, stride * stride * channels, 5, 4).contiguous(memory_format=memory_format)
    # phase-major (a * s + b) * C + c -> pixel_shuffle's c * s * s + a * s + b
    shuffle_order = y.reshape(3, stride * stride, channels, 5, 4).transpose(1, 2).reshape(y.shape)
    got = interleave_phases(y, stride)
    assert torch.equal(got, F.pixel_shuffle(shuffle_order, stride))
    assert got.is_contiguous(memory_format=memory_format)


def test_the_vjp_the_engine_takes_goes_through_the_custom_gradients():
    torch.manual_seed(3)
    layer = nn.Conv2d(3, 4, 4, 2).eval().requires_grad_(False).double()
    fast = PhaseLayer(layer)
    x = torch.randn(2, 3, 10, 10, dtype=torch.float64)
    y, vjp = torch.func.vjp(fast, x)
    grad = torch.randn_like(y)
    (g,) = vjp(grad)
    torch.testing.assert_close(g, _input_gradient(layer, x, grad)[1], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    ("layer", "engine_uses", "possible"),
    [
        (nn.ConvTranspose2d(64, 3, 4, 2), True, True),  # the course generator's last layer
        (nn.Conv2d(3, 64, 4, 2), True, True),  # the course classifier's first layer
        (nn.ConvTranspose2d(128, 64, 4, 2), False, True),  # wide: oneDNN is fast there
        (nn.ConvTranspose2d(64, 3, 3, 2), False, False),  # kernel not a multiple of the stride
        (nn.Conv2d(3, 64, 4, 2, padding=1), False, False),
        (nn.ConvTranspose2d(64, 3, 4, 2, output_padding=1), False, False),
        (nn.ConvTranspose2d(64, 3, 1, 2), False, False),  # kernel smaller than the stride
        (nn.ReLU(), False, False),
    ],
)
def test_which_layers_run_by_phases(layer, engine_uses, possible):
    assert runs_by_phases(layer) is engine_uses
    assert can_run_by_phases(layer) is possible
    if not possible and isinstance(layer, nn.Conv2d | nn.ConvTranspose2d):
        with pytest.raises(ValueError, match="does not run by phases"):
            PhaseLayer(layer)
