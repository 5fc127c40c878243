"""Triton kernel for ``objective`` (see kernels/objective.py): score and d score / d logits in one pass.

Each program reads a block of whole rows of logits, logits0, weights and preserve once, reduces the
weighted sum and ||delta|| in registers, and writes score and grad_logits: one launch instead of the
reference's 16 elementwise and reduction kernels, most of which read or write an [N, A] tensor.
Imported lazily by kernels/dispatch.py only when impl resolves to "triton".

Two ways in: ``objective_triton`` launches the kernel directly (eager; ``out=`` buffers), and the
``zsteer::objective`` operator (``torch.library.triton_op``), which torch.compile traces into: the
compiled step then launches this kernel rather than inductor's fusion of the reference.
``objective_traceable`` picks the operator while torch.compile traces and the direct launch otherwise.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from ._triton_common import block, check_device, check_float, fp_options, on_device, row_tiling


@triton.jit
def _objective_kernel(
    logits_ptr, logits0_ptr, weights_ptr, preserve_ptr,  # [N, A] inputs, any strides (0 = broadcast)
    score_ptr, grad_ptr,  # [N], [N, A] outputs
    penalty, n_rows, n_cols,
    s_l_r, s_l_c, s_l0_r, s_l0_c, s_w_r, s_w_c, s_p_r, s_p_c, s_score, s_g_r, s_g_c,
    BLOCK_N: tl.constexpr, BLOCK_A: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    cols = tl.arange(0, BLOCK_A)  # [BLOCK_A]
    row_ok = rows < n_rows
    mask = row_ok[:, None] & (cols < n_cols)[None, :]  # [BLOCK_N, BLOCK_A]
    r = rows.to(tl.int64)[:, None]  # int64: N * A may pass 2**31 elements
    c = cols.to(tl.int64)[None, :]
    # Padding lanes read 0: they add nothing to either sum and their gradient is never stored.
    lg = tl.load(logits_ptr + r * s_l_r + c * s_l_c, mask=mask, other=0.0).to(tl.float32)
    l0 = tl.load(logits0_ptr + r * s_l0_r + c * s_l0_c, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(weights_ptr + r * s_w_r + c * s_w_c, mask=mask, other=0.0).to(tl.float32)
    p = tl.load(preserve_ptr + r * s_p_r + c * s_p_c, mask=mask, other=0.0).to(tl.float32)

    # A product, not a select, as in the reference: a NaN logit outside P still poisons the norm.
    delta = (lg - l0) * p  # [BLOCK_N, BLOCK_A]
    norm = tl.sqrt_rn(tl.sum(delta * delta, axis=1))  # [BLOCK_N]; IEEE sqrt, as torch
    score = tl.sum(w * lg, axis=1) - penalty * norm
    # d||delta|| / d delta is taken as 0 at delta = 0 (and where the norm is NaN), never NaN.
    pos = norm > 0
    unit = tl.where(pos[:, None], tl.math.div_rn(delta, tl.where(pos, norm, 1.0)[:, None]), 0.0)
    grad = w - penalty * unit

    tl.store(score_ptr + rows.to(tl.int64) * s_score, score.to(score_ptr.dtype.element_ty), mask=row_ok)
    tl.store(grad_ptr + r * s_g_r + c * s_g_c, grad.to(grad_ptr.dtype.element_ty), mask=mask)


def _prepare(logits, logits0, weights, preserve):
    """Checked, broadcast float inputs, the output dtype and the device."""
    op = "objective"
    tensors = [logits, logits0, weights, preserve]
    device = check_device(op, _objective_kernel, tensors)
    logits, logits0, weights, preserve = torch.broadcast_tensors(*tensors)  # views, no copies
    if logits.dim() != 2:
        raise ValueError(f"zsteer.kernels.{op}: expected [N, A] inputs, got shape {list(logits.shape)}")
    # bool / integer masks or weights: the kernel loads floats (an [N, A] copy, as torch's promotion makes).
    floats = {"logits": logits, "logits0": logits0}
    for name, t in (("weights", weights), ("preserve", preserve)):
        floats[name] = t if t.is_floating_point() else t.to(torch.promote_types(logits.dtype, logits0.dtype))
    for name, t in floats.items():
        check_float(op, name, t)
    logits, logits0, weights, preserve = floats.values()
    dtype = logits.dtype  # the reference's output dtype (torch's promotion of the four inputs)
    for t in (logits0, weights, preserve):
        dtype = torch.promote_types(dtype, t.dtype)
    return (logits, logits0, weights, preserve), dtype, device


def _launch(kernel, options, inputs, penalty: float, score: torch.Tensor, grad: torch.Tensor) -> None:
    logits, logits0, weights, preserve = inputs
    n, a = logits.shape
    if n == 0:
        return
    block_n, programs, num_warps = row_tiling("objective", n, a)
    with on_device(logits.device):
        kernel[(programs,)](
            logits, logits0, weights, preserve, score, grad,
            float(penalty), n, a,
            *logits.stride(), *logits0.stride(), *weights.stride(), *preserve.stride(), *score.stride(),
            *grad.stride(),
            BLOCK_N=block_n, BLOCK_A=block(a), num_warps=num_warps, **options,
        )  # fmt: skip


def objective_triton(
    logits: torch.Tensor,  # [N, A] classifier logits at the current z
    logits0: torch.Tensor,  # [N, A] logits at the starting z
    weights: torch.Tensor,  # [N, A] signed target weights (0 = not a target)
    preserve: torch.Tensor,  # [N, A] 1.0 where the attribute is to be kept, else 0.0
    penalty: float,  # lambda
    *,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,  # (score [N], grad_logits [N, A]) to write into
) -> tuple[torch.Tensor, torch.Tensor]:  # score [N], grad_logits [N, A]
    """Triton version of ``objective_torch``: same arguments, broadcasting and output dtype.

    Inputs may be float32, float16 or bfloat16 (preserve/weights also bool or integer) and any strides;
    the kernel computes in float32 and rounds once to the promoted dtype of the inputs. ``out`` lets a
    caller reuse buffers (any strides); they are returned, and nothing outside them is written.
    """
    inputs, dtype, device = _prepare(logits, logits0, weights, preserve)
    n, a = inputs[0].shape
    if out is None:
        score = torch.empty(n, dtype=dtype, device=device)
        grad = torch.empty(n, a, dtype=dtype, device=device)
    else:
        score, grad = out
        for name, t, shape in (("out[0] (score)", score, (n,)), ("out[1] (grad_logits)", grad, (n, a))):
            if tuple(t.shape) != shape or t.dtype != dtype or t.device != device:
                raise ValueError(
                    f"zsteer.kernels.objective: {name} must be {dtype} {list(shape)} on {device}, "
                    f"got {t.dtype} {list(t.shape)} on {t.device}"
                )
    _launch(_objective_kernel, fp_options(_objective_kernel, _objective_kernel), inputs, penalty, score, grad)
    return score, grad


def _objective_op(
    logits: torch.Tensor, logits0: torch.Tensor, weights: torch.Tensor, preserve: torch.Tensor, penalty: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The body of ``zsteer::objective``: also its fake (shape) implementation, so torch ops only."""
    inputs, dtype, device = _prepare(logits, logits0, weights, preserve)
    n, a = inputs[0].shape
    score = torch.empty(n, dtype=dtype, device=device)
    grad = torch.empty(n, a, dtype=dtype, device=device)
    # wrap_triton by name: torch.library finds the kernel in this source (its compile-cache key).
    kernel = wrap_triton(_objective_kernel)
    _launch(kernel, fp_options(kernel, _objective_kernel), inputs, penalty, score, grad)
    return score, grad


objective_op = triton_op("zsteer::objective", _objective_op, mutates_args=())


def objective_traceable(logits, logits0, weights, preserve, penalty: float):
    """``objective_triton`` eagerly; the ``zsteer::objective`` operator while torch.compile traces."""
    if torch.compiler.is_compiling():
        return objective_op(logits, logits0, weights, preserve, float(penalty))
    return objective_triton(logits, logits0, weights, preserve, penalty)
