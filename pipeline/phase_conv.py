"""The course's 3-channel layers on the CPU: a transposed convolution as one convolution and a pixel shuffle.

oneDNN runs a transposed convolution with 3 output channels (the generator's last layer, and the input
gradient of the classifier's first convolution) at about 30 GFLOP/s, an eighth of what it reaches on the
wide layers. Where the kernel is a multiple of the stride (k = m * s, the course's 4 = 2 * 2), the
transposed convolution splits into s * s phases, each a stride-1 convolution with an m x m kernel:

    conv_transpose2d(x, w, stride=s) == pixel_shuffle(conv2d(x, phase_weight(w, s), padding=m - 1), s)

so the 64 -> 3 layer becomes one 64 -> 12 convolution with a 2 x 2 kernel, which oneDNN runs about 2x
faster (docs/NOTES.md, "The 3-channel layers"). Same sums, in another order: equal up to rounding.
The engine orders the phase convolution's channels phase-major (``phase_major``), so that in channels_last
the interleave copies runs of s * Cout values (``interleave_phases``): pixel_shuffle's order copies one
value at a time, about 3.5x slower. The bias goes into the phase convolution (``phase_bias``).

The other direction of the pair, conv2d(g, w, stride=s), is the adjoint and already fast. So each layer
gets a custom input gradient (no weight gradient: the networks are frozen):
- ``PhaseConvTranspose``: forward by phases (bias included), input gradient by the plain convolution;
- ``ConvPhaseGrad``: forward by the plain convolution (bias fused), input gradient by phases.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .wide_conv import can_run_wide

# A transposed convolution with at most this many output channels runs by phases (and so does the input
# gradient of a convolution with at most this many input channels): oneDNN is slow only there. Measured
# at batch 128 on 2 cores: 64 -> 3 by phases 10.3 ms against 20.2 ms (docs/NOTES.md).
NARROW_CHANNELS = 4


def phase_weight(weight: torch.Tensor, stride: int) -> torch.Tensor:
    """[Cin, Cout, k, k] transposed-convolution weight -> [Cout * s * s, Cin, m, m] convolution weight,
    for a kernel that is a multiple of the stride (k = m * s).

    Output channel c * s * s + a * s + b computes the phase (a, b) of channel c (pixel_shuffle's order);
    its tap (ty, tx) is the kernel entry (a + s * (m - 1 - ty), b + s * (m - 1 - tx)): flipped, because
    a convolution correlates where the transposed one scatters.
    """
    cin, cout, kh, kw = weight.shape
    s = stride
    mh, mw = kh // s, kw // s
    taps = weight.reshape(cin, cout, mh, s, mw, s).flip(2, 4)  # [Cin, Cout, ty, a, tx, b]
    return taps.permute(1, 3, 5, 0, 2, 4).reshape(cout * s * s, cin, mh, mw)


def phase_major(phase: torch.Tensor, stride: int) -> torch.Tensor:
    """``phase_weight``'s [Cout * s * s, Cin, m, m] with its output channels reordered phase-major: channel
    (a * s + b) * Cout + c computes the phase (a, b) of channel c (what ``interleave_phases`` reads)."""
    s = stride
    cin, mh, mw = phase.shape[1:]
    return phase.reshape(-1, s * s, cin, mh, mw).transpose(0, 1).reshape(-1, cin, mh, mw)


def phase_bias(bias: torch.Tensor, stride: int) -> torch.Tensor:
    """[Cout] transposed-convolution bias -> [s * s * Cout], phase-major: each phase adds it."""
    return bias.repeat(stride * stride)


def interleave_phases(y: torch.Tensor, stride: int) -> torch.Tensor:
    """[N, s * s * C, H, W] phase-major (channel (a * s + b) * C + c) -> [N, C, H * s, W * s], where
    output pixel (s * i + a, s * j + b) of channel c is y[:, (a * s + b) * C + c, i, j]; in y's layout.

    pixel_shuffle's interleave for phase-major channels. In channels_last one copy moves runs of s * C
    contiguous values (a phase row's (b, c)); pixel_shuffle's channel order leaves runs of one."""
    n, _, h, w = y.shape
    s = stride
    if y.is_contiguous(memory_format=torch.channels_last):
        nhwc = y.permute(0, 2, 3, 1).reshape(n, h, w, s, s, -1)  # a view: [N, i, j, a, b, C]
        # Copied into a tensor of its own rather than returned as a permuted view: a custom Function's
        # output that is a view cannot be modified in place under autograd (the tanh_ after the layer).
        out = torch.empty(
            n, nhwc.shape[-1], h * s, w * s, dtype=y.dtype, device=y.device, memory_format=torch.channels_last
        )
        out.permute(0, 2, 3, 1).view(n, h, s, w, s, -1).copy_(nhwc.transpose(2, 3))  # [N, i, a, j, b, C]
        return out
    return y.reshape(n, s, s, -1, h, w).permute(0, 3, 4, 1, 5, 2).reshape(n, -1, h * s, w * s)


def transpose_by_phases(
    x: torch.Tensor,
    phase: torch.Tensor,
    stride: int,
    size: tuple[int, int],
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """conv_transpose2d(x, w, stride) (+ its bias) computed from ``phase = phase_major(phase_weight(w,
    stride), stride)`` and ``bias = phase_bias(b, stride)``: one convolution computes every phase,
    ``interleave_phases`` interleaves them. Zero-padded (no bias there) at the bottom and right to ``size``
    (a convolution's input rows that no output reads get no gradient).

    x [N, Cin, H, W] -> [N, Cout, size[0], size[1]], size >= ((H - 1) * s + k, (W - 1) * s + k)."""
    mh, mw = phase.shape[-2:]
    y = interleave_phases(F.conv2d(x, phase, bias, 1, (mh - 1, mw - 1)), stride)
    pad_h, pad_w = size[0] - y.shape[-2], size[1] - y.shape[-1]
    return F.pad(y, (0, pad_w, 0, pad_h)) if pad_h or pad_w else y


class PhaseConvTranspose(torch.autograd.Function):
    """conv_transpose2d(x, weight, stride) + bias by phases; input gradient conv2d(g, weight, stride).
    ``phase`` and ``bias`` as ``transpose_by_phases`` takes them (``bias`` may be None)."""

    @staticmethod
    def forward(x, weight, stride: int, phase, bias):  # x [N, Cin, H, W] -> [N, Cout, (H-1)s+k, (W-1)s+k]
        h, w = x.shape[-2:]
        k = weight.shape[-2:]
        size = ((h - 1) * stride + k[0], (w - 1) * stride + k[1])  # exactly the phases' output: no padding
        return transpose_by_phases(x, phase, stride, size, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, weight, stride, _, _ = inputs
        ctx.save_for_backward(weight)
        ctx.stride = stride

    @staticmethod
    def backward(ctx, grad):  # [N, Cout, Ho, Wo] -> [N, Cin, H, W]
        (weight,) = ctx.saved_tensors
        return F.conv2d(grad, weight, None, ctx.stride), None, None, None, None


class ConvPhaseGrad(torch.autograd.Function):
    """conv2d(x, weight, bias, stride); input gradient conv_transpose2d(g, weight, stride) by phases."""

    @staticmethod
    def forward(x, weight, bias, stride: int, phase):  # x [N, Cin, H, W] -> [N, Cout, Ho, Wo]
        return F.conv2d(x, weight, bias, stride)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, _, _, stride, phase = inputs
        ctx.save_for_backward(phase)
        ctx.stride, ctx.size = stride, tuple(x.shape[-2:])

    @staticmethod
    def backward(ctx, grad):  # [N, Cout, Ho, Wo] -> [N, Cin, H, W]
        (phase,) = ctx.saved_tensors
        return transpose_by_phases(grad, phase, ctx.stride, ctx.size), None, None, None, None


def can_run_by_phases(layer: nn.Module) -> bool:
    """A layer of the plain geometry (``wide_conv.can_run_wide``) whose kernel is a multiple of its stride:
    what the functions above compute."""
    return can_run_wide(layer) and all(k % layer.stride[0] == 0 for k in layer.kernel_size)


def runs_by_phases(layer: nn.Module) -> bool:
    """Whether the engine runs ``layer`` by phases: the narrow layers (see NARROW_CHANNELS) that can."""
    if not can_run_by_phases(layer):
        return False
    if isinstance(layer, nn.ConvTranspose2d):
        return layer.out_channels <= NARROW_CHANNELS
    return layer.in_channels <= NARROW_CHANNELS


class PhaseLayer(nn.Module):
    """A frozen narrow Conv2d / ConvTranspose2d that runs through the functions above.

    It shares the layer's weight and bias and holds the phase weight (``phase_major(phase_weight(...))``)
    and, for a transposed layer, the phase bias (``phase_bias``) as buffers, moved and cast with the
    network."""

    def __init__(self, layer: nn.Conv2d | nn.ConvTranspose2d):
        super().__init__()
        if not can_run_by_phases(layer):
            raise ValueError(f"{layer} does not run by phases")
        self.transposed = isinstance(layer, nn.ConvTranspose2d)
        self.stride = layer.stride[0]
        self.weight, self.bias = layer.weight, layer.bias
        with torch.no_grad():
            # A Conv2d weight [Cout, Cin, k, k] is the weight of its adjoint transposed convolution.
            phase = phase_major(phase_weight(layer.weight.detach(), self.stride), self.stride)
            bias = None
            if self.transposed and layer.bias is not None:
                bias = phase_bias(layer.bias.detach(), self.stride)
        # Laid out (channels_last) and cast with the network by its .to().
        self.register_buffer("phase", phase.contiguous())
        self.register_buffer("phase_bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.transposed:
            return PhaseConvTranspose.apply(x, self.weight, self.stride, self.phase, self.phase_bias)
        return ConvPhaseGrad.apply(x, self.weight, self.bias, self.stride, self.phase)
