"""Input-gradients (VJPs) of frozen layer stacks, written with forward ops only.

torch.onnx.export cannot export autograd (neither ``torch.autograd.grad`` nor ``torch.func``), so the
gradient of the edit score with respect to z is spelled out layer by layer, in reverse:

- Conv2d: the adjoint is a ConvTranspose2d with the same weights, stride, padding, dilation and groups,
  with the output padding that gives back the input's size (a strided conv drops trailing rows);
- ConvTranspose2d: the adjoint is a Conv2d with the same weights and geometry;
- eval-mode BatchNorm2d: a per-channel affine map, so its adjoint is the same per-channel scale
  (EditNet folds it into the convolution anyway);
- ReLU / LeakyReLU: the incoming gradient masked where the activation's output is > 0, which is exactly
  where the pre-activation is (for a LeakyReLU slope >= 0). The mask is multiplied in rather than
  selected with where, which onnxruntime runs much slower, and it is read from the output so that the
  exported forward reads a convolution's output only through its activation: onnxruntime then fuses the
  two (see ``VJPStack``);
- Tanh: times 1 - y^2, with y the layer's output;
- the classifier's bilinear input resize: two interpolation matrices, so the adjoint is their transposes;
- a 1-channel image fed to a 3-channel classifier (expand): the sum over the channels.

Any sequential stack of these layers works; anything else is refused by name. Spatial sizes are fixed by
the stack (z enters as [N, input_dim, 1, 1]), so the output paddings are found once at build time; only
the batch axis is dynamic.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zsteer.core.errors import ExportError

VJP_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.ReLU, nn.LeakyReLU, nn.Tanh)


def _check_layer(layer: nn.Module, where: str) -> None:
    """Refuse, by name, a layer whose input-gradient is not written here."""
    if not isinstance(layer, VJP_LAYERS):
        raise ExportError(
            f"{where}: layer {type(layer).__name__} has no hand-written input-gradient "
            f"(supported: {', '.join(t.__name__ for t in VJP_LAYERS)})"
        )
    if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d):
        if isinstance(layer.padding, str):
            raise ExportError(
                f"{where}: {type(layer).__name__} with padding={layer.padding!r} is not supported"
            )
        if layer.padding_mode != "zeros":
            raise ExportError(
                f"{where}: {type(layer).__name__} with padding_mode={layer.padding_mode!r} is not supported"
            )
    if isinstance(layer, nn.BatchNorm2d) and (layer.running_mean is None or layer.running_var is None):
        raise ExportError(f"{where}: BatchNorm2d without running statistics cannot be frozen")


class VJPStack(nn.Module):
    """A frozen sequential stack with a forward that keeps what its backward needs.

    ``forward_tape(x)`` returns the output and a tape (one entry per layer); ``backward(g, tape)`` returns
    the gradient with respect to ``x`` of ``sum(g * output)``.
    """

    def __init__(
        self,
        layers: Sequence[nn.Module],
        input_shape: tuple[int, int, int],
        name: str = "stack",
        mask_by_multiply: bool = True,
    ):
        super().__init__()
        # onnxruntime's CPU Where is several times slower than a Mul (about 3x for a masked copy, 5x with
        # three full-size operands, measured at the course's 128 x 64 x 31 x 31): the activation masks of
        # the backward are multiplied in by default. Same values for finite gradients; an inf or NaN
        # gradient under a closed ReLU becomes NaN instead of 0 (False keeps torch.where, for comparison).
        self.mask_by_multiply = mask_by_multiply
        for i, layer in enumerate(layers):
            _check_layer(layer, f"{name} layer {i}")
        self.layers = nn.ModuleList(_frozen_copy(layer) for layer in layers)
        # Per Conv2d: the output padding of its adjoint ConvTranspose2d, found by running the shapes once.
        self.adjoint_padding: list[tuple[int, int]] = []
        # Per BatchNorm2d: scale and shift of its eval-mode affine map, as [1, C, 1, 1] buffers.
        self.bn_index: dict[int, int] = {}
        x = torch.zeros(1, *input_shape)
        with torch.no_grad():
            for i, layer in enumerate(self.layers):
                if isinstance(layer, nn.BatchNorm2d):
                    scale = (layer.weight if layer.affine else 1.0) / torch.sqrt(
                        layer.running_var + layer.eps
                    )
                    shift = (layer.bias if layer.affine else 0.0) - layer.running_mean * scale
                    self.bn_index[i] = len(self.bn_index)
                    self.register_buffer(f"bn_scale_{i}", scale.reshape(1, -1, 1, 1).clone())
                    self.register_buffer(f"bn_shift_{i}", shift.reshape(1, -1, 1, 1).clone())
                y = self._run_layer(i, layer, x)
                if isinstance(layer, nn.Conv2d):
                    self.adjoint_padding.append(_adjoint_output_padding(layer, x.shape[-2:], y.shape[-2:]))
                x = y
        self.output_shape = tuple(x.shape[1:])  # (C, H, W) of one row

    def _run_layer(self, i: int, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if isinstance(layer, nn.BatchNorm2d):
            return x * getattr(self, f"bn_scale_{i}") + getattr(self, f"bn_shift_{i}")
        if isinstance(layer, nn.ReLU):
            return F.relu(x)  # never in place: the tape keeps the pre-activation
        if isinstance(layer, nn.LeakyReLU):
            return F.leaky_relu(x, layer.negative_slope)
        if isinstance(layer, nn.Tanh):
            return torch.tanh(x)
        return layer(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The stack's output alone (no tape)."""
        for i, layer in enumerate(self.layers):
            x = self._run_layer(i, layer, x)
        return x

    def forward_tape(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """Output and tape: the output of each Tanh, ReLU and LeakyReLU (the pre-activation of a LeakyReLU
        with a negative slope, whose output is > 0 on both sides)."""
        tape: list[torch.Tensor | None] = []
        for i, layer in enumerate(self.layers):
            y = self._run_layer(i, layer, x)
            if isinstance(layer, nn.LeakyReLU) and layer.negative_slope < 0:
                tape.append(x)
            elif isinstance(layer, nn.ReLU | nn.LeakyReLU | nn.Tanh):
                # The output, not the pre-activation: the exported forward then reads the convolution's
                # output only through the activation, and onnxruntime fuses the two (docs/NOTES.md).
                tape.append(y)
            else:
                tape.append(None)  # linear layers need nothing: their adjoint depends on the weights only
            x = y
        return x, tape

    def backward(self, g: torch.Tensor, tape: list[torch.Tensor | None]) -> torch.Tensor:
        """d sum(g * output) / d input, from the tape of ``forward_tape``."""
        conv_i = sum(isinstance(layer, nn.Conv2d) for layer in self.layers)
        for i in range(len(self.layers) - 1, -1, -1):
            layer, saved = self.layers[i], tape[i]
            if isinstance(layer, nn.ReLU):
                # torch's threshold_backward: 0 at exactly 0 as well (saved = relu(x) > 0 where x > 0).
                # Greater and Cast, not Sign: onnxruntime's Sign ran 2x slower than the two (docs/NOTES.md).
                mul = self.mask_by_multiply
                g = g * (saved > 0).to(g.dtype) if mul else torch.where(saved > 0, g, 0.0)
            elif isinstance(layer, nn.LeakyReLU):
                slope = layer.negative_slope
                if self.mask_by_multiply and 0.0 <= slope <= 1.0:
                    # saved = leaky_relu(x), > 0 exactly where x > 0; max(mask, slope) is exactly 1 or slope,
                    # so the same products as the where below; a Greater, Cast, Clip and Mul, which
                    # onnxruntime runs about 3x faster than a Where.
                    g = g * (saved > 0).to(g.dtype).clamp(min=slope)
                else:
                    g = torch.where(saved > 0, g, g * slope)
            elif isinstance(layer, nn.Tanh):
                g = g * (1 - saved * saved)
            elif isinstance(layer, nn.BatchNorm2d):
                g = g * getattr(self, f"bn_scale_{i}")
            elif isinstance(layer, nn.Conv2d):
                conv_i -= 1
                g = F.conv_transpose2d(
                    g, layer.weight, stride=layer.stride, padding=layer.padding,
                    output_padding=self.adjoint_padding[conv_i], groups=layer.groups, dilation=layer.dilation,
                )  # fmt: skip
            else:  # ConvTranspose2d
                g = F.conv2d(
                    g, layer.weight, stride=layer.stride, padding=layer.padding,
                    dilation=layer.dilation, groups=layer.groups,
                )  # fmt: skip
        return g


def _adjoint_output_padding(conv: nn.Conv2d, in_hw, out_hw) -> tuple[int, int]:
    """Output padding that makes conv_transpose2d of an ``out_hw`` map give back ``in_hw``.

    A strided conv ignores the trailing ``(H + 2p - d(k-1) - 1) mod s`` input rows; the adjoint gives them
    gradient 0 by growing its output by that many rows (always < stride, as ONNX requires).
    """
    pads = []
    for ax in range(2):
        s, p, d, k = conv.stride[ax], conv.padding[ax], conv.dilation[ax], conv.kernel_size[ax]
        pads.append(int(in_hw[ax]) - ((int(out_hw[ax]) - 1) * s - 2 * p + d * (k - 1) + 1))
    return pads[0], pads[1]


@torch.no_grad()
def _frozen_copy(layer: nn.Module) -> nn.Module:
    """An eval-mode, requires_grad-free copy with contiguous weights (EditNet's may be channels_last)."""
    if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d):
        kwargs = {"output_padding": layer.output_padding} if isinstance(layer, nn.ConvTranspose2d) else {}
        copy = type(layer)(
            layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
            groups=layer.groups, bias=layer.bias is not None, dilation=layer.dilation, **kwargs,
        )  # fmt: skip
        copy.weight.copy_(layer.weight.contiguous())
        if layer.bias is not None:
            copy.bias.copy_(layer.bias)
    elif isinstance(layer, nn.BatchNorm2d):
        copy = nn.BatchNorm2d(layer.num_features, layer.eps, affine=layer.affine)
        copy.load_state_dict(layer.state_dict())
    elif isinstance(layer, nn.LeakyReLU):
        copy = nn.LeakyReLU(layer.negative_slope)
    else:
        copy = type(layer)()
    copy.eval()
    for p in copy.parameters():
        p.requires_grad_(False)
    return copy


class BilinearResize(nn.Module):
    """``F.interpolate(x, size, mode="bilinear")`` (align_corners=False) as two matrix products.

    Bilinear resizing is separable: out = R_h @ x @ R_w^T, so its adjoint is R_h^T @ g @ R_w. The
    matrices are made by resizing identity matrices with torch itself, so the weights are torch's.
    """

    def __init__(self, in_hw: tuple[int, int], out_hw: tuple[int, int]):
        super().__init__()
        self.out_hw = (int(out_hw[0]), int(out_hw[1]))
        rh, rw = _interp_matrix(in_hw[0], out_hw[0]), _interp_matrix(in_hw[1], out_hw[1])
        self.register_buffer("rh", rh)  # [Ho, Hi]
        self.register_buffer("rh_t", rh.t().contiguous())  # [Hi, Ho]
        self.register_buffer("rw", rw)  # [Wo, Wi]
        self.register_buffer("rw_t", rw.t().contiguous())  # [Wi, Wo]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, Hi, Wi] -> [N, C, Ho, Wo]
        return torch.matmul(torch.matmul(self.rh, x), self.rw_t)

    def backward(self, g: torch.Tensor) -> torch.Tensor:  # [N, C, Ho, Wo] -> [N, C, Hi, Wi]
        return torch.matmul(torch.matmul(self.rh_t, g), self.rw)


def _interp_matrix(n_in: int, n_out: int) -> torch.Tensor:  # [n_out, n_in]
    """Row j holds the weights torch's bilinear resize gives the inputs for output j (along one axis)."""
    eye = torch.eye(n_in).reshape(n_in, 1, n_in, 1)  # n_in one-hot "images" of size n_in x 1
    out = F.interpolate(eye, size=(n_out, 1), mode="bilinear", align_corners=False)  # [n_in, 1, n_out, 1]
    return out.reshape(n_in, n_out).t().contiguous()
