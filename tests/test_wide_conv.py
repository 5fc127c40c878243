"""The wide layers' CPU forms (pipeline/wide_conv.py) against torch's own convolutions and autograd."""

from __future__ import annotations

import contextlib

import pytest
import torch
from jobkit import torch_threads
from torch import nn

from zsteer.pipeline import wide_conv
from zsteer.pipeline.wide_conv import WideLayer, can_run_wide

# (dtype, rtol, atol): float64 checks the algebra; float32 and bfloat16 the rounding the engine sees.
TOLERANCES = [(torch.float64, 1e-10, 1e-10), (torch.float32, 1e-4, 1e-4), (torch.bfloat16, 4e-2, 4e-2)]


@contextlib.contextmanager
def _uninitialized_memory_is_nan():
    """torch fills every new empty tensor with NaN while deterministic algorithms are on: an output element
    that a form forgets to write then shows."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def _output_and_input_gradient(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor):
    leaf = x.clone().requires_grad_(True)
    y = layer(leaf)
    (gx,) = torch.autograd.grad(y, leaf, grad)
    return y.detach(), gx


def _assert_same_layer(layer: nn.Module, x: torch.Tensor, rtol: float, atol: float) -> None:
    """WideLayer(layer) gives ``layer``'s output and autograd's input gradient for a random output gradient."""
    fast = WideLayer(layer).to(x.dtype)
    layer = layer.to(x.dtype)
    with torch.no_grad():
        grad = torch.randn_like(layer(x))
    want = _output_and_input_gradient(layer, x, grad)
    with _uninitialized_memory_is_nan():
        got = _output_and_input_gradient(fast, x, grad)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=rtol, atol=atol)


@pytest.fixture(params=["gemm", "onednn"])
def form(request, monkeypatch):
    """Every layer by GEMM, or none: the choice is by map size, so the tests force each form."""
    monkeypatch.setattr(wide_conv, "GEMM_MAX_PIXELS", 10**9 if request.param == "gemm" else 0)
    monkeypatch.setattr(wide_conv, "GEMM_DTYPES", (torch.float32, torch.float64, torch.bfloat16))
    return request.param


@pytest.mark.parametrize(("dtype", "rtol", "atol"), TOLERANCES)
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize(
    ("cin", "cout", "kernel", "stride", "size"),
    [
        (7, 5, 3, 2, (3, 5)),  # overlapping taps
        (5, 11, 3, 2, (1, 1)),  # the 1 x 1 latent map
        (6, 3, (4, 2), 3, (2, 3)),  # gaps between taps
        (3, 4, 2, 1, (5, 4)),
    ],
)
def test_transposed_layer_is_the_layer(
    form, dtype, rtol, atol, memory_format, cin, cout, kernel, stride, size
):
    torch.manual_seed(0)
    layer = nn.ConvTranspose2d(cin, cout, kernel, stride).eval().requires_grad_(False)
    x = torch.randn(3, cin, *size, dtype=dtype).contiguous(memory_format=memory_format)
    _assert_same_layer(layer.to(memory_format=memory_format), x, rtol, atol)


@pytest.mark.parametrize(("dtype", "rtol", "atol"), TOLERANCES)
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize(
    ("cin", "cout", "kernel", "stride", "size", "bias"),
    [
        # (14 - 4) % 3 == 1 and (13 - 3) % 2 == 0: the last input row read by no output gets no gradient
        (5, 7, 4, 3, (14, 11), True),
        (3, 5, 3, 2, (13, 9), False),
        (4, 3, (2, 4), 2, (7, 9), True),
        (2, 3, 1, 1, (4, 3), True),
    ],
)
def test_convolution_is_the_layer(
    form, dtype, rtol, atol, memory_format, cin, cout, kernel, stride, size, bias
):
    torch.manual_seed(1)
    layer = nn.Conv2d(cin, cout, kernel, stride, bias=bias).eval().requires_grad_(False)
    x = torch.randn(2, cin, *size, dtype=dtype).contiguous(memory_format=memory_format)
    _assert_same_layer(layer.to(memory_format=memory_format), x, rtol, atol)


def test_the_form_follows_the_small_side_and_the_dtype():
    """GEMM where the small side has at most GEMM_MAX_PIXELS pixels (the input of a transposed layer, the
    output of a convolution), in fp32, not in bf16."""
    transposed = WideLayer(nn.ConvTranspose2d(4, 4, 3, 2))
    conv = WideLayer(nn.Conv2d(4, 4, 4, 3))
    assert transposed.small_side_pixels(torch.zeros(1, 4, 3, 5)) == 15
    assert conv.small_side_pixels(torch.zeros(1, 4, 14, 11)) == 4 * 3
    assert wide_conv.GEMM_MAX_PIXELS == 16  # the course's 1 x 1, 3 x 3 and 4 x 4 maps, not 7 x 7
    assert transposed.runs_by_gemm(torch.zeros(1, 4, 4, 4))
    assert not transposed.runs_by_gemm(torch.zeros(1, 4, 4, 5))
    assert not transposed.to(torch.bfloat16).runs_by_gemm(torch.zeros(1, 4, 4, 4, dtype=torch.bfloat16))


@pytest.mark.parametrize(
    "layer",
    [
        nn.Conv2d(3, 3, 3, padding=1),
        nn.Conv2d(3, 3, 3, dilation=2),
        nn.Conv2d(4, 4, 3, groups=2),
        nn.Conv2d(3, 3, 3, stride=(1, 2)),
        nn.ConvTranspose2d(3, 3, 3, 2, output_padding=1),
        nn.Linear(3, 3),
    ],
)
def test_other_geometries_keep_the_plain_layer(layer):
    assert not can_run_wide(layer)
    with pytest.raises(ValueError, match="does not run as a wide layer"):
        WideLayer(layer)


@pytest.mark.parametrize(
    ("k", "c", "transposed"),
    # the course's GEMMs at hidden 64: 512 -> 256 on 3 x 3 both ways, 128 -> 256 k4 s3 both ways
    [(512, 2304, False), (2304, 512, True), (2048, 256, True), (256, 2048, False)],
)
def test_block_matmul_rows_do_not_depend_on_the_rows_beside_them(k, c, transposed):
    """The batch invariance that the GEMM forms rest on (wide_conv.GEMM_BLOCK_ROWS): a row's bits are the
    same whichever rows share its call, and in which order, including a padded last block."""
    torch.manual_seed(3)
    rows = torch.randn(300, k)
    weight = torch.randn(c, k).t() if transposed else torch.randn(k, c)  # taps.t() is a transposed view
    everything = wide_conv.block_matmul(rows, weight)
    for m in (1, 9, 130, 300):
        picked = torch.randperm(300)[:m]
        assert torch.equal(wide_conv.block_matmul(rows[picked], weight), everything[picked]), f"{m} rows"
    # a view that starts one row into its storage, 4 whole blocks (read in place at another alignment)
    assert torch.equal(wide_conv.block_matmul(rows[1:257], weight), everything[1:257])


@pytest.mark.parametrize(
    ("k", "c", "transposed"),
    # every course GEMM at hidden 64 whose sum runs over K >= 2048, where a 2-thread sgemm splits K
    [(2304, 512, True), (2048, 256, True), (4096, 40, True), (4608, 64, True), (40, 4096, False)],
)
def test_block_matmul_rows_do_not_depend_on_the_thread_count(k, c, transposed):
    """A local job on 2 threads and a Ray actor on 1 CPU write the same rows: one block per thread at least
    (wide_conv.block_matmul). 3 to 8 threads oversubscribe CI's 2 cores, which changes no arithmetic."""
    torch.manual_seed(4)
    rows = torch.randn(300, k)
    weight = torch.randn(c, k).t() if transposed else torch.randn(k, c)
    bias = torch.randn(c)
    with torch_threads(1):
        one = wide_conv.block_matmul(rows, weight, bias)
    for threads in (2, 3, 4, 8):
        with torch_threads(threads):
            for m in (1, 130, 300):  # 2 to 5 blocks of 64 rows: fewer blocks than threads, and more
                assert torch.equal(wide_conv.block_matmul(rows[:m], weight, bias), one[:m]), (
                    f"{threads} threads, {m} rows"
                )
