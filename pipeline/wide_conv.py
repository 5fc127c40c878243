"""The course's wide layers on the CPU: a layer with a tiny map on one side as one batch-wide GEMM.

oneDNN runs the course's wide convolutions at 220-280 GFLOP/s on 2 cores, except where one side of the
layer is a tiny map. The generator's 512 -> 256 transposed convolution reads 3 x 3 pixels per image and
ran at about 110 GFLOP/s; the classifier's 128 -> 256 convolution writes 4 x 4 and ran at 150-190. There
each image is too small for oneDNN's blocking, but the whole batch is one good GEMM. With the small side's
channels in the rows and (kernel tap, other channel) in the columns, ``taps`` [C_small, kh * kw * C_big]:

    transposed convolution (small -> big):  cols = X [N*h*w, C_small] @ taps, then each tap's block of
                                            cols is added into the big map at its stride (col2im);
    convolution (big -> small):             cols [N*h*w, kh*kw*C_big] gathered from the big map at each
                                            tap (im2col), then cols @ taps^T.

The two are each other's adjoint, so a layer runs one form forward and the other as its input gradient.
The maps are channels_last, so every tap's block is a strided view with contiguous channels. Probe at
batch 128, 2 threads (docs/NOTES.md, "The wide layers"): 512 -> 256 forward 24.5 -> 9.8 ms and input
gradient 21.1 -> 10.4; 128 -> 256 k4 s3 forward 11.5 -> 9.8 and input gradient 14.3 -> 10.1. On 7 x 7
the two tied, and on 15 x 15 the GEMM form was 2x slower: the col2im / im2col passes grow with the big map.

torch has no batch-wide col2im for channels_last maps (``F.fold`` takes [N, C*k*k, L] per image and was
slower, docs/NOTES.md), hence the strided adds here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# A layer runs as a GEMM where its small side has at most this many pixels per image: the course's 1 x 1,
# 3 x 3 and 4 x 4 maps; 7 x 7 (49) tied with oneDNN, and larger maps lost (module docstring).
GEMM_MAX_PIXELS = 16

# The dtypes the GEMM forms run in. In bf16, oneDNN's AMX convolutions were as fast or faster (the whole
# edit, interleaved best of 6: 932 ms with the GEMM forms against 906 without).
GEMM_DTYPES = (torch.float32, torch.float64)

# The GEMMs run as one torch.bmm over blocks of exactly GEMM_BLOCK_ROWS rows (the last block padded), at
# least MIN_BLOCKS of them. A row's bits must not depend on its batch or on the thread count
# (docs/ARCHITECTURE.md, "Batch invariance"), and MKL's sgemm gives neither: a row's bits changed with the
# row count ([M, 2048] @ [2048, 256] at every M from 1 to 128 tried) and, where K >= 2048, with 1 or 2
# threads (it splits the sum over K between threads). torch's bmm hands two or more blocks to MKL's batched
# GEMM, which runs each block on one thread: every block came out as a 1-thread sgemm of its rows, bit for
# bit, at 1 and 2 threads and 2 to 17 blocks, and a row's bits did not depend on its position in a block of
# 32, 64 or 128 rows in any probe on the course's shapes (tests/test_wide_conv.py holds both). 64 rows
# were the fastest of the three over the course's GEMMs (docs/NOTES.md, "The wide layers"): at batch 128,
# 31.0 ms a step against 33.9 in 128-row blocks and 36.7 for the earlier loop of 2-thread mm calls; at
# batch 8, where a second block is mostly padding, 3.9 against 7.9 and 4.4.
GEMM_BLOCK_ROWS = 64
MIN_BLOCKS = 2  # one block goes down bmm's single-GEMM path, a multi-thread sgemm again


def tap_matrix(weight: torch.Tensor) -> torch.Tensor:
    """A layer's weight as ``taps`` [C_small, kh * kw * C_big], columns in (ky, kx, channel) order.

    A ConvTranspose2d weight is [C_in, C_out, kh, kw] (its small side is the input); a Conv2d weight is
    [C_out, C_in, kh, kw] (its small side is the output): the same permutation serves both."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1).contiguous()


def _patches(big: torch.Tensor, kernel: tuple[int, int], stride: int, small_hw: tuple[int, int]):
    """The kernel-tap view of ``big`` [N, H, W, C] (NHWC) that im2col reads: [N, h, w, kh, kw, C] with
    [n, i, j, ky, kx] = big[n, ky + s*i, kx + s*j]. One strided view, so im2col is one copy."""
    (h, w), (kh, kw) = small_hw, kernel
    sn, sy, sx, sc = big.stride()
    return big.as_strided(
        (big.shape[0], h, w, kh, kw, big.shape[3]),
        (sn, stride * sy, stride * sx, sy, sx, sc),
        big.storage_offset(),
    )


def _tap_groups(big: torch.Tensor, kernel: tuple[int, int], stride: int, small_hw: tuple[int, int]):
    """For col2im: the kernel taps in groups whose pixels of ``big`` [N, H, W, C] (NHWC) do not overlap,
    each as one strided view [N, h, a, w, b, C] of big (``[n, i, p, j, q] = big[n, ys + s*i + p,
    xs + s*j + q]``) with the group's first tap (ys, xs) and size (a, b).

    Taps ky and ky + s land on overlapping rows, taps ky < s never do: group gy holds ky in
    [gy*s, gy*s + s), so a k x k kernel with stride s needs ceil(k/s)^2 strided adds instead of k*k. Groups
    come in (gy, gx) order, so each pixel's contributions are summed in the same (ky, kx) order as tap by
    tap: the same bits."""
    (h, w), (kh, kw) = small_hw, kernel
    sn, sy, sx, sc = big.stride()
    for ys in range(0, kh, stride):
        for xs in range(0, kw, stride):
            a, b = min(stride, kh - ys), min(stride, kw - xs)
            view = big.as_strided(
                (big.shape[0], h, a, w, b, big.shape[3]),
                (sn, stride * sy, sy, stride * sx, sx, sc),
                big.storage_offset() + ys * sy + xs * sx,
            )
            yield ys, xs, a, b, view


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> its [N, H, W, C] view (no copy when x is channels_last)."""
    return x.permute(0, 2, 3, 1)


def block_matmul(
    a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``a @ b`` (+ ``bias``) into ``out`` (new if None), as one bmm over blocks of GEMM_BLOCK_ROWS rows of
    ``a`` (at least MIN_BLOCKS), so that each row's bits depend neither on how many rows came with it nor on
    the thread count. a [M, K], b [K, C] -> [M, C]."""
    m, k = a.shape
    # At least one block per thread: with fewer, MKL's batched GEMM splits a block between threads again.
    blocks = max(-(-m // GEMM_BLOCK_ROWS), MIN_BLOCKS, torch.get_num_threads())
    rows = blocks * GEMM_BLOCK_ROWS
    if rows > m:
        a = torch.cat([a, a.new_zeros(rows - m, k)])
    in_place = out is not None and rows == m and out.is_contiguous()
    dst = out if in_place else a.new_empty(rows, b.shape[1])
    torch.bmm(
        a.reshape(blocks, GEMM_BLOCK_ROWS, k),  # a view when a is contiguous
        b.expand(blocks, *b.shape),
        out=dst.view(blocks, GEMM_BLOCK_ROWS, -1),
    )
    if bias is not None:
        dst[:m].add_(bias)
    if in_place or out is None:
        return dst[:m]
    return out.copy_(dst[:m])


def transpose_by_gemm(
    x: torch.Tensor, taps: torch.Tensor, kernel: tuple[int, int], stride: int, size: tuple[int, int]
) -> torch.Tensor:
    """conv_transpose2d(x, w, stride), zero-padded at the bottom and right to ``size``, from
    ``taps = tap_matrix(w)``. x [N, C_small, h, w] -> [N, C_big, *size] (channels_last)."""
    n, c_small, h, w = x.shape
    c_big = taps.shape[1] // (kernel[0] * kernel[1])
    rows = _nhwc(x).reshape(n * h * w, c_small)  # a view when x is channels_last
    cols = block_matmul(rows, taps).view(n, h, w, kernel[0], kernel[1], c_big)
    # Overlapping taps are summed in fp32 whatever the network's precision, as oneDNN sums them.
    acc = torch.promote_types(x.dtype, torch.float32)
    big = torch.empty(n, c_big, *size, dtype=acc, device=x.device, memory_format=torch.channels_last).zero_()
    for ys, xs, a, b, view in _tap_groups(_nhwc(big), kernel, stride, (h, w)):
        # col2im: cols [N, h, w, a, b, C] of the group's taps, as [N, h, a, w, b, C] like its view of big
        view += cols[:, :, :, ys : ys + a, xs : xs + b].permute(0, 1, 3, 2, 4, 5)
    return big.to(x.dtype)


def conv_by_gemm(
    big: torch.Tensor,
    taps: torch.Tensor,
    kernel: tuple[int, int],
    stride: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """conv2d(big, w, bias, stride) from ``taps = tap_matrix(w)``.
    big [N, C_big, H, W] -> [N, C_small, h, w] (channels_last)."""
    n, c_big, height, width = big.shape
    h, w = (height - kernel[0]) // stride + 1, (width - kernel[1]) // stride + 1
    cols = big.new_empty(n, h, w, kernel[0], kernel[1], c_big)  # [N, h, w, ky, kx, C_big]
    cols.copy_(_patches(_nhwc(big), kernel, stride, (h, w)))  # im2col
    out = torch.empty(
        n, taps.shape[0], h, w, dtype=big.dtype, device=big.device, memory_format=torch.channels_last
    )
    block_matmul(cols.view(n * h * w, -1), taps.t(), bias, out=_nhwc(out).view(n * h * w, -1))
    return out


class TransposeByGemm(torch.autograd.Function):
    """conv_transpose2d by GEMM + col2im; input gradient conv2d by im2col + GEMM."""

    @staticmethod
    def forward(x, taps, kernel, stride: int):  # x [N, C_in, h, w] -> [N, C_out, (h-1)s+kh, (w-1)s+kw]
        h, w = x.shape[-2:]
        size = ((h - 1) * stride + kernel[0], (w - 1) * stride + kernel[1])
        return transpose_by_gemm(x, taps, kernel, stride, size)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, taps, kernel, stride = inputs
        ctx.save_for_backward(taps)
        ctx.kernel, ctx.stride = kernel, stride

    @staticmethod
    def backward(ctx, grad):  # [N, C_out, Ho, Wo] -> [N, C_in, h, w]
        (taps,) = ctx.saved_tensors
        return conv_by_gemm(grad, taps, ctx.kernel, ctx.stride), None, None, None


class ConvByGemm(torch.autograd.Function):
    """conv2d by im2col + GEMM (bias fused); input gradient conv_transpose2d by GEMM + col2im."""

    @staticmethod
    def forward(x, taps, bias, kernel, stride: int):  # x [N, C_in, H, W] -> [N, C_out, h, w]
        return conv_by_gemm(x, taps, kernel, stride, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, taps, _, kernel, stride = inputs
        ctx.save_for_backward(taps)
        ctx.kernel, ctx.stride, ctx.size = kernel, stride, tuple(x.shape[-2:])

    @staticmethod
    def backward(ctx, grad):  # [N, C_out, h, w] -> [N, C_in, H, W]
        (taps,) = ctx.saved_tensors
        return transpose_by_gemm(grad, taps, ctx.kernel, ctx.stride, ctx.size), None, None, None, None


def can_run_wide(layer: nn.Module) -> bool:
    """A Conv2d / ConvTranspose2d of the plain geometry: no padding, dilation, groups or output padding, and
    one stride for both sides. What the functions above (and pipeline/phase_conv.py's) compute."""
    if not isinstance(layer, nn.Conv2d | nn.ConvTranspose2d):
        return False
    return (
        layer.padding == (0, 0)
        and layer.dilation == (1, 1)
        and layer.groups == 1
        and tuple(getattr(layer, "output_padding", (0, 0))) == (0, 0)
        and layer.stride[0] == layer.stride[1]
    )


def add_bias_(y: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``y`` [N, C, H, W], a fresh convolution output, with ``bias`` [C] added in place."""
    return y if bias is None else y.add_(bias.view(1, -1, 1, 1))


def transpose_then_bias(layer: nn.ConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` with the bias added after the transposed convolution instead of inside it.

    On the CPU, torch's conv_transpose2d with a bias ran the course generator's 128 -> 64 layer (batch
    128, channels_last) in 24 ms against 12 ms without one, and a separate add costs about 2 ms:
    ``python benchmarks/ascent.py`` measures the whole edit. Same values up to the rounding of one add.
    """
    y = F.conv_transpose2d(
        x, layer.weight, None, layer.stride, layer.padding, layer.output_padding, layer.groups, layer.dilation
    )
    return add_bias_(y, layer.bias)


class WideLayer(nn.Module):
    """A frozen Conv2d / ConvTranspose2d run in the forms above where its small side has at most
    GEMM_MAX_PIXELS pixels per image (decided per call, from the input's shape), else as the layer itself.

    It holds the layer (parameters shared, not copied) and ``taps`` (``tap_matrix``) as a buffer, moved and
    cast with the network. A transposed layer adds its bias after the convolution, as the network's other
    transposed layers do (``transpose_then_bias``)."""

    def __init__(self, layer: nn.Conv2d | nn.ConvTranspose2d):
        super().__init__()
        if not can_run_wide(layer):
            raise ValueError(f"{layer} does not run as a wide layer")
        self.layer = layer
        self.transposed = isinstance(layer, nn.ConvTranspose2d)
        self.stride, self.kernel = layer.stride[0], tuple(layer.kernel_size)
        with torch.no_grad():
            taps = tap_matrix(layer.weight.detach())
        # A plain 2-D matrix: the network's channels_last .to() leaves its layout alone.
        self.register_buffer("taps", taps)

    def small_side_pixels(self, x: torch.Tensor) -> int:
        """Pixels per image on the layer's small side for input ``x`` [N, C, H, W]."""
        if self.transposed:
            return x.shape[-2] * x.shape[-1]
        (kh, kw), s = self.kernel, self.stride
        return ((x.shape[-2] - kh) // s + 1) * ((x.shape[-1] - kw) // s + 1)

    def runs_by_gemm(self, x: torch.Tensor) -> bool:
        """Whether input ``x`` goes through the GEMM forms: a small map, on the CPU, in fp32 / fp64, and
        not traced by torch.compile, whose inductor ran the plain layers faster (the whole compiled edit:
        2118 ms plain against 2335 ms with the GEMM forms, docs/NOTES.md, "The wide layers")."""
        return (
            x.device.type == "cpu"
            and x.dtype in GEMM_DTYPES
            and not torch.compiler.is_compiling()
            and self.small_side_pixels(x) <= GEMM_MAX_PIXELS
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.runs_by_gemm(x):
            return transpose_then_bias(self.layer, x) if self.transposed else self.layer(x)
        if self.transposed:
            return add_bias_(TransposeByGemm.apply(x, self.taps, self.kernel, self.stride), self.layer.bias)
        return ConvByGemm.apply(x, self.taps, self.layer.bias, self.kernel, self.stride)
