"""What the Triton kernel wrappers share: input checks and the tile layout. Imported by _triton_* only.

Each kernel program handles a block of BLOCK_N whole rows: every row's reductions (norms, "all targets
reached") are done in registers in one pass, and the rows of a block are adjacent in memory, so the loads
are coalesced when the feature dimension is small (z_dim 64, 40 attributes).
"""

from __future__ import annotations

import contextlib

import torch
import triton
from triton.runtime.jit import JITFunction

from .dispatch import MAX_ROW_ELEMENTS, SUPPORTED_FLOATS

# Elements of one [BLOCK_N, BLOCK] tile: 2048 fp32 is 16 per thread at 4 warps, well inside the registers.
TILE_ELEMENTS = 2048


def is_interpreted(kernel) -> bool:
    """True when ``kernel`` was built by Triton's interpreter (TRITON_INTERPRET=1 before triton's import)."""
    return not isinstance(kernel, JITFunction)


def check_device(op: str, kernel, tensors: list[torch.Tensor]) -> torch.device:
    """The one device of ``tensors``; a clear error for CPU tensors without the interpreter."""
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(
            f"zsteer.kernels.{op}: all tensors must be on one device, got {sorted(map(str, devices))}"
        )
    (device,) = devices
    if device.type == "cpu" and not is_interpreted(kernel):
        raise RuntimeError(
            f"zsteer.kernels.{op}: impl='triton' got CPU tensors, which Triton runs only in its interpreter: "
            "set TRITON_INTERPRET=1 before triton is first imported, or use impl='torch' (or 'auto')"
        )
    return device


def fp_options(launched, kernel) -> dict:
    """Launch options for ``launched`` (``kernel`` itself, or ``wrap_triton(kernel)`` inside an operator).

    A direct launch asks for no FMA contraction: the same roundings as torch's separate ops. Inside a
    ``torch.library.triton_op`` that torch.compile traces, ``wrap_triton`` hands back a traceable wrapper
    and inductor launches the kernel with its own options, which its user-defined-kernel path does not
    let a caller set: results there may differ from the eager launch by contraction roundings only.
    (Outside tracing and in the interpreter, ``wrap_triton`` hands back the kernel itself.)
    """
    return {"enable_fp_fusion": False} if launched is kernel else {}


def on_device(device: torch.device):
    """Context that makes ``device`` current: Triton launches on the current CUDA device, not the tensors'."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def check_float(op: str, name: str, t: torch.Tensor) -> None:
    if t.dtype not in SUPPORTED_FLOATS:
        raise TypeError(
            f"zsteer.kernels.{op}: {name} has dtype {t.dtype}; the Triton kernel reads "
            f"{', '.join(str(d) for d in SUPPORTED_FLOATS)} (use impl='torch' for others)"
        )


def check_shape(op: str, name: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != shape:
        raise ValueError(f"zsteer.kernels.{op}: {name} has shape {list(t.shape)}, expected {list(shape)}")


def block(n: int) -> int:
    """Power-of-two block covering ``n`` elements (at least 1: masks handle the rest)."""
    return triton.next_power_of_2(max(n, 1))


def row_tiling(op: str, n_rows: int, *widths: int) -> tuple[int, int, int]:
    """(BLOCK_N, programs, num_warps) for rows of the given widths (each rounded up to a power of two)."""
    widest = max(block(w) for w in widths)
    if widest > MAX_ROW_ELEMENTS:
        raise ValueError(
            f"zsteer.kernels.{op}: rows of {max(widths)} elements exceed the Triton kernel's "
            f"{MAX_ROW_ELEMENTS}-element limit (one row per program); use impl='torch'"
        )
    block_n = max(1, min(block(n_rows), TILE_ELEMENTS // widest))
    tile = block_n * widest
    num_warps = 1 if tile <= 256 else 2 if tile <= 1024 else 4 if tile <= 4096 else 8
    return block_n, triton.cdiv(n_rows, block_n), num_warps
