"""Triton kernel for ``ascent_update`` (see kernels/ascent_update.py): one fused pass per block of rows.

Each program reads its rows' status, stop probability, logits and weights (the stop test), then z, z0,
grad and accum once, and writes every output once: the reference's ~90 small kernels (benchmarks/kernels.py
counts them), most a full read or write of an [N, z_dim] or [N, A] tensor, become one launch. Rows that
do not step (frozen, or reaching their target now) skip the gradient read; rows that are not ACTIVE skip
the logits and weights too.
Imported lazily by kernels/dispatch.py only when impl resolves to "triton".

Two ways in, as for the objective: ``ascent_update_triton`` launches directly (eager; ``out=`` buffers)
and the ``zsteer::ascent_update`` operator (``torch.library.triton_op``) is what torch.compile traces;
``ascent_update_traceable`` picks between them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from ._triton_common import block, check_device, check_float, check_shape, fp_options, on_device, row_tiling
from .ascent_update import (
    ACTIVE,
    MAX_ABS_Z,
    MAX_SHIFT,
    NON_FINITE,
    OUT_OF_RANGE,
    TARGET_REACHED,
    UpdateResult,
)


@triton.jit
def _ascent_update_kernel(
    z_ptr, z0_ptr, grad_ptr, accum_ptr,  # [N, D] inputs (accum_ptr unused without HAS_ACCUM)
    logits_ptr, weights_ptr,  # [N, A] inputs
    stop_ptr, status_ptr,  # [N] inputs
    out_z_ptr, out_accum_ptr,  # [N, D] outputs
    out_gnorm_ptr, out_shift_ptr, out_status_ptr, out_moved_ptr,  # [N] outputs
    lr, max_shift, n_rows, n_d, n_a,
    s_z_r, s_z_c, s_z0_r, s_z0_c, s_g_r, s_g_c, s_acc_r, s_acc_c,
    s_l_r, s_l_c, s_w_r, s_w_c, s_stop, s_status,
    s_oz_r, s_oz_c, s_oacc_r, s_oacc_c, s_ognorm, s_oshift, s_ostatus, s_omoved,
    ACTIVE_CODE: tl.constexpr, REACHED_CODE: tl.constexpr, MAX_SHIFT_CODE: tl.constexpr,
    NON_FINITE_CODE: tl.constexpr, OUT_OF_RANGE_CODE: tl.constexpr, MAX_ABS_Z: tl.constexpr,
    HAS_ACCUM: tl.constexpr, NORMALIZE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_A: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    row_ok = rows < n_rows
    r1 = rows.to(tl.int64)  # int64: N * D may pass 2**31 elements
    r = r1[:, None]

    # 1. only ACTIVE rows move; padding rows read a status that is not ACTIVE.
    status = tl.load(status_ptr + r1 * s_status, mask=row_ok, other=ACTIVE_CODE + 1)  # [BLOCK_N]
    active = status == ACTIVE_CODE

    # 2. the stop test, read only for active rows (the others' logits never matter).
    a_cols = tl.arange(0, BLOCK_A).to(tl.int64)[None, :]
    a_mask = active[:, None] & (a_cols < n_a)
    logits = tl.load(logits_ptr + r * s_l_r + a_cols * s_l_c, mask=a_mask, other=0.0).to(tl.float32)
    w = tl.load(weights_ptr + r * s_w_r + a_cols * s_w_c, mask=a_mask, other=0.0).to(tl.float32)
    p = tl.load(stop_ptr + r1 * s_stop, mask=row_ok, other=0.0).to(tl.float32)  # [BLOCK_N]
    # In logit space, as the reference (stop_threshold): no approximate exp or division at the threshold.
    # tl.log is libdevice's logf on CUDA, the function torch.log calls; div_rn is IEEE division.
    thr = tl.where(p > 0, tl.log(tl.math.div_rn(p, 1 - p)), -float("inf"))[:, None]  # [BLOCK_N, 1]
    # Selects, as in the reference: a NaN weight counts as "not a target" here but as a target below.
    ok = tl.where(w > 0, logits >= thr, tl.where(w < 0, logits <= -thr, True))
    n_failed = tl.sum(tl.where(ok, 0, 1), axis=1)  # [BLOCK_N]; padding lanes have w = 0: ok
    n_targets = tl.sum(tl.where(w != 0, 1, 0), axis=1)
    reached = active & (p < 1) & (n_targets > 0) & (n_failed == 0)  # p < 1: False for NaN
    stepping = active & ~reached

    # 3. the direction. The gradient is read only for stepping rows (0 elsewhere, which is never used).
    d_cols = tl.arange(0, BLOCK_D).to(tl.int64)[None, :]
    d_mask = row_ok[:, None] & (d_cols < n_d)  # [BLOCK_N, BLOCK_D]
    g_mask = stepping[:, None] & (d_cols < n_d)
    z_raw = tl.load(z_ptr + r * s_z_r + d_cols * s_z_c, mask=d_mask, other=0.0)
    z = z_raw.to(tl.float32)
    z0 = tl.load(z0_ptr + r * s_z0_r + d_cols * s_z0_c, mask=d_mask, other=0.0).to(tl.float32)
    g = tl.load(grad_ptr + r * s_g_r + d_cols * s_g_c, mask=g_mask, other=0.0).to(tl.float32)
    if HAS_ACCUM:
        acc_raw = tl.load(accum_ptr + r * s_acc_r + d_cols * s_acc_c, mask=d_mask, other=0.0)
        acc = acc_raw.to(tl.float32)
        direction = tl.where(stepping[:, None], acc + g, acc)
        new_acc = direction
    else:
        direction = g
    gnorm = tl.sqrt_rn(tl.sum(direction * direction, axis=1))  # [BLOCK_N]; naive sum, as torch
    if NORMALIZE:
        pos = gnorm > 0
        direction = tl.where(pos[:, None], tl.math.div_rn(direction, tl.where(pos, gnorm, 1.0)[:, None]), 0.0)

    # 4. the step and the cap: a capped row goes back onto the sphere of radius max_shift around z0.
    cand = z + lr * direction
    offset = cand - z0
    shift = tl.sqrt_rn(tl.sum(offset * offset, axis=1))  # [BLOCK_N]
    capped = shift > max_shift  # never when max_shift = inf
    scale = tl.where(capped, tl.math.div_rn(max_shift, tl.where(capped, shift, 1.0)), 1.0)
    cand = tl.where(capped[:, None], z0 + offset * scale[:, None], cand)
    # Rounded to z's dtype before the test, as the reference tests the stored value.
    cand_out = cand.to(out_z_ptr.dtype.element_ty)
    candf = cand_out.to(tl.float32)

    # 5. the non-finite guard (padding lanes are 0: finite).
    lane_ok = (tl.abs(candf) < float("inf")) & (tl.abs(g) < float("inf"))  # False for NaN too
    finite = tl.sum(tl.where(lane_ok, 0, 1), axis=1) == 0  # [BLOCK_N]
    if NORMALIZE:
        finite = finite & (gnorm < float("inf"))  # an overflowed norm would give a zero step
    # A finite step past MAX_ABS_Z freezes the row too (False for NaN lanes: NON_FINITE decides those).
    in_range = tl.sum(tl.where(tl.abs(candf) <= MAX_ABS_Z, 0, 1), axis=1) == 0
    stepped = stepping & finite & in_range
    failed = stepping & ~finite
    far = stepping & finite & ~in_range
    z_same = z_raw.to(out_z_ptr.dtype.element_ty)
    changed = tl.sum(tl.where(cand_out != z_same, 1, 0), axis=1) > 0  # padding lanes: 0 and 0
    moved = stepped & changed

    new_z = tl.where(moved[:, None], cand_out, z_same)
    new_status = tl.where(reached, REACHED_CODE, status)
    new_status = tl.where(stepped & capped, MAX_SHIFT_CODE, new_status)
    new_status = tl.where(far, OUT_OF_RANGE_CODE, new_status)
    new_status = tl.where(failed, NON_FINITE_CODE, new_status)
    # Recomputed from the stored z, so a frozen row reports its current distance from z0.
    new_off = new_z.to(tl.float32) - z0
    new_shift = tl.sqrt_rn(tl.sum(new_off * new_off, axis=1))
    gnorm = tl.where(stepping, gnorm, 0.0)

    tl.store(out_z_ptr + r * s_oz_r + d_cols * s_oz_c, new_z, mask=d_mask)
    if HAS_ACCUM:
        # A row frozen by the guard keeps its old sum: the bad gradient is not carried into later steps.
        new_acc = tl.where((failed | far)[:, None], acc, new_acc)
        tl.store(
            out_accum_ptr + r * s_oacc_r + d_cols * s_oacc_c,
            new_acc.to(out_accum_ptr.dtype.element_ty),
            mask=d_mask,
        )
    tl.store(out_gnorm_ptr + r1 * s_ognorm, gnorm.to(out_gnorm_ptr.dtype.element_ty), mask=row_ok)
    tl.store(out_shift_ptr + r1 * s_oshift, new_shift.to(out_shift_ptr.dtype.element_ty), mask=row_ok)
    tl.store(out_status_ptr + r1 * s_ostatus, new_status.to(out_status_ptr.dtype.element_ty), mask=row_ok)
    tl.store(out_moved_ptr + r1 * s_omoved, moved.to(tl.int32), mask=row_ok)


def _prepare(op, z, z0, grad, accum, logits, weights, stop_prob, status, lr, max_shift, normalize):
    """Checks the arguments; returns the device."""
    d_group = {"z": z, "z0": z0, "grad": grad} | ({} if accum is None else {"accum": accum})
    tensors = [*d_group.values(), logits, weights, stop_prob, status]
    device = check_device(op, _ascent_update_kernel, tensors)
    for name, value in (("lr", lr), ("max_shift", max_shift), ("normalize", normalize)):
        if isinstance(value, torch.Tensor):
            raise TypeError(
                f"zsteer.kernels.{op}: {name} must be a Python number for the Triton kernel, got a tensor "
                "(per-row or tensor values: use impl='torch', or 'auto')"
            )
    if z.dim() != 2 or logits.dim() != 2:
        raise ValueError(
            f"zsteer.kernels.{op}: z must be [N, D] and logits [N, A], "
            f"got {list(z.shape)} and {list(logits.shape)}"
        )
    n, d = z.shape
    a = logits.shape[1]
    for name, t in d_group.items():
        check_shape(op, name, t, (n, d))
        check_float(op, name, t)
        if t.dtype != z.dtype:
            raise TypeError(
                f"zsteer.kernels.{op}: {name} is {t.dtype} but z is {z.dtype}; give them one dtype"
            )
    for name, t, shape in (
        ("logits", logits, (n, a)),
        ("weights", weights, (n, a)),
        ("stop_prob", stop_prob, (n,)),
    ):
        check_shape(op, name, t, shape)
        check_float(op, name, t)
    check_shape(op, "status", status, (n,))
    if status.is_floating_point() or status.is_complex() or status.dtype == torch.bool:
        raise TypeError(f"zsteer.kernels.{op}: status must hold integer codes, got {status.dtype}")
    return device


def _launch(kernel, options, args, out: UpdateResult, acc_out: torch.Tensor) -> None:
    """One launch writing ``out`` (and ``acc_out``, which stands in for out.accum without accum)."""
    z, z0, grad, accum, logits, weights, stop_prob, status, lr, max_shift, normalize = args
    n, d = z.shape
    a = logits.shape[1]
    if n == 0:
        return
    block_n, programs, num_warps = row_tiling("ascent_update", n, d, a)
    # Without accum, z stands in for its input: the HAS_ACCUM=False kernel never reads or writes either.
    acc_in = z if accum is None else accum
    with on_device(z.device):
        kernel[(programs,)](
            z, z0, grad, acc_in, logits, weights, stop_prob, status,
            out.z, acc_out, out.grad_norm, out.shift, out.status, out.moved,
            float(lr), float(max_shift), n, d, a,
            *z.stride(), *z0.stride(), *grad.stride(), *acc_in.stride(),
            *logits.stride(), *weights.stride(), *stop_prob.stride(), *status.stride(),
            *out.z.stride(), *acc_out.stride(), *out.grad_norm.stride(), *out.shift.stride(),
            *out.status.stride(), *out.moved.stride(),
            ACTIVE_CODE=ACTIVE, REACHED_CODE=TARGET_REACHED, MAX_SHIFT_CODE=MAX_SHIFT,
            NON_FINITE_CODE=NON_FINITE, OUT_OF_RANGE_CODE=OUT_OF_RANGE, MAX_ABS_Z=MAX_ABS_Z,
            HAS_ACCUM=accum is not None, NORMALIZE=bool(normalize),
            BLOCK_N=block_n, BLOCK_D=block(d), BLOCK_A=block(a), num_warps=num_warps, **options,
        )  # fmt: skip


def _empty_result(z, accum, status, device) -> UpdateResult:
    n = z.shape[0]
    return UpdateResult(
        z=torch.empty_like(z, memory_format=torch.contiguous_format),
        accum=None if accum is None else torch.empty_like(accum, memory_format=torch.contiguous_format),
        grad_norm=torch.empty(n, dtype=z.dtype, device=device),
        shift=torch.empty(n, dtype=z.dtype, device=device),
        status=torch.empty(n, dtype=status.dtype, device=device),
        moved=torch.empty(n, dtype=torch.int32, device=device),
    )


def ascent_update_triton(
    z: torch.Tensor,  # [N, D] current z
    z0: torch.Tensor,  # [N, D] starting z
    grad: torch.Tensor,  # [N, D] d score / d z at z
    accum: torch.Tensor | None,  # [N, D] gradient sum so far (lab-compatible mode) or None
    logits: torch.Tensor,  # [N, A] logits at z (for the stop test)
    weights: torch.Tensor,  # [N, A] signed target weights
    stop_prob: torch.Tensor,  # [N] stop once the targets pass this probability; NaN = never
    status: torch.Tensor,  # [N] integer status codes before this step
    lr: float,  # step size
    max_shift: float,  # cap on ||z - z0||; inf = none
    normalize: bool,  # divide the direction by its norm
    *,
    out: UpdateResult | None = None,  # buffers to write into (out.accum None iff accum is None)
) -> UpdateResult:
    """Triton version of ``ascent_update_torch``: same arguments and results, one kernel launch.

    z, z0, grad and accum share one dtype (float32, float16 or bfloat16), which the z / accum / grad_norm
    / shift outputs keep; logits, weights and stop_prob may be any of those; status any integer dtype
    (kept). Shapes must match exactly (no broadcasting); strides are free; lr, max_shift and normalize
    are Python values. The kernel computes in float32. ``out`` lets a caller reuse buffers (any strides,
    shapes and dtypes as the results); it is returned, and nothing outside it is written.
    """
    op = "ascent_update"
    args = (z, z0, grad, accum, logits, weights, stop_prob, status, lr, max_shift, normalize)
    device = _prepare(op, *args)
    n, d = z.shape
    if out is None:
        out = _empty_result(z, accum, status, device)
    else:
        _check_out(op, out, accum is not None, n, d, z.dtype, status.dtype, device)
    kernel = _ascent_update_kernel
    _launch(kernel, fp_options(kernel, kernel), args, out, out.z if accum is None else out.accum)
    return out


def _ascent_update_op(
    z: torch.Tensor,
    z0: torch.Tensor,
    grad: torch.Tensor,
    accum: torch.Tensor | None,
    logits: torch.Tensor,
    weights: torch.Tensor,
    stop_prob: torch.Tensor,
    status: torch.Tensor,
    lr: float,
    max_shift: float,
    normalize: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The body of ``zsteer::ascent_update`` (also its fake implementation): the fields of UpdateResult,
    with an empty [0] tensor for accum when there is none (an operator cannot return None)."""
    args = (z, z0, grad, accum, logits, weights, stop_prob, status, lr, max_shift, normalize)
    device = _prepare("ascent_update", *args)
    out = _empty_result(z, accum, status, device)
    # Without accum the kernel's accum output gets a buffer of its own, aliasing no other output.
    acc_out = torch.empty((1, 1), dtype=z.dtype, device=device) if accum is None else out.accum
    # wrap_triton by name: torch.library finds the kernel in this source (its compile-cache key).
    kernel = wrap_triton(_ascent_update_kernel)
    _launch(kernel, fp_options(kernel, _ascent_update_kernel), args, out, acc_out)
    accum_out = torch.empty(0, dtype=z.dtype, device=device) if accum is None else out.accum
    return out.z, accum_out, out.grad_norm, out.shift, out.status, out.moved


ascent_update_op = triton_op("zsteer::ascent_update", _ascent_update_op, mutates_args=())


def ascent_update_traceable(z, z0, grad, accum, logits, weights, stop_prob, status, lr, max_shift, normalize):
    """``ascent_update_triton`` eagerly; the ``zsteer::ascent_update`` operator while torch.compile traces."""
    if not torch.compiler.is_compiling():
        return ascent_update_triton(
            z, z0, grad, accum, logits, weights, stop_prob, status, lr, max_shift, normalize
        )
    new_z, new_accum, *rest = ascent_update_op(
        z, z0, grad, accum, logits, weights, stop_prob, status, float(lr), float(max_shift), bool(normalize)
    )
    return UpdateResult(new_z, None if accum is None else new_accum, *rest)


def _check_out(op, out, has_accum, n, d, dtype, status_dtype, device) -> None:
    if not isinstance(out, UpdateResult):
        raise TypeError(f"zsteer.kernels.{op}: out must be an UpdateResult of buffers")
    if (out.accum is not None) != has_accum:
        raise ValueError(f"zsteer.kernels.{op}: out.accum must be given exactly when accum is")
    expected = {
        "z": ((n, d), dtype),
        "accum": ((n, d), dtype),
        "grad_norm": ((n,), dtype),
        "shift": ((n,), dtype),
        "status": ((n,), status_dtype),
        "moved": ((n,), torch.int32),
    }
    for name, (shape, dt) in expected.items():
        t = getattr(out, name)
        if t is None:
            continue
        if tuple(t.shape) != shape or t.dtype != dt or t.device != device:
            raise ValueError(
                f"zsteer.kernels.{op}: out.{name} must be {dt} {list(shape)} on {device}, "
                f"got {t.dtype} {list(t.shape)} on {t.device}"
            )
