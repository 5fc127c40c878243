"""The one interface every way of editing implements, on every runtime: a batch of rows in, an EditResult out.

An ``Editor`` is what a job hands its rows to. The ascent on PyTorch (``engine.AscentEngine``), the ascent
on onnxruntime (``zsteer.export.backend.OrtAscentEngine``) and any other method (docs/ARCHITECTURE.md,
"Adding an edit method") are editors; the job never asks which one it has.

Rows come as an ``EditBatch`` of numpy arrays or tensors on any device, unpadded: padding happens once,
inside the editor (``ascent_loop.padded_size``), so that callers never pad and every runtime sees the
shapes its loop chose.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Protocol, runtime_checkable

import numpy as np
import torch

Rows = np.ndarray | torch.Tensor  # a per-row array: numpy (host) or a tensor (any device)


@dataclass(frozen=True)
class EditBatch:
    """The rows to edit, unpadded. Per-row budgets default to the method's settings where None."""

    z: Rows  # [N, z_dim] starting latents
    weights: Rows  # [N, A] signed target weights
    preserve: Rows  # [N, A] 1.0 where an attribute is to stay put
    labels: Rows | None = None  # [N] int64 class of each row (conditional generators)
    max_steps: Rows | None = None  # [N] int32 step budget per row
    stop_prob: Rows | None = None  # [N] float32 stop probability per row, NaN = never
    # A method's own per-row inputs, read from its manifest columns (jobs/method.py, ``row_inputs``):
    # name -> [N, ...] array; None when the method reads none.
    extra: dict[str, Rows] | None = None
    # Asked between steps by editors that loop (the ascent): true = stop now, raising EditCancelled. A
    # job passes its stop flag here, so a SIGTERM is honoured within a step, not after a long batch.
    # Not a row field: slices share it.
    cancelled: Callable[[], bool] | None = None

    @property
    def n_rows(self) -> int:
        return int(self.z.shape[0])

    def slice(self, start: int, stop: int) -> EditBatch:
        """Rows [start, stop) of every field (None stays None)."""
        cut = {
            f.name: cut_rows(getattr(self, f.name), start, stop)
            for f in fields(self)
            if f.name not in ("extra", "cancelled")
        }
        extra = None if self.extra is None else {k: v[start:stop] for k, v in self.extra.items()}
        return EditBatch(**cut, extra=extra, cancelled=self.cancelled)


class EditCancelled(Exception):
    """``EditBatch.cancelled()`` turned true during an edit: the batch's results are dropped."""


def cut_rows(x: Rows | None, start: int, stop: int) -> Rows | None:
    """Rows [start, stop) of a per-row array (None stays None)."""
    return None if x is None else x[start:stop]


@dataclass
class EditResult:
    """Per-row outcome of an edit, all on the CPU."""

    z_edited: torch.Tensor  # [N, z_dim]
    logits_before: torch.Tensor  # [N, A]
    logits_after: torch.Tensor  # [N, A]
    latent_shift: torch.Tensor  # [N] ||z_edited - z||
    steps_taken: torch.Tensor  # [N] int32 updates applied (that moved z)
    status: torch.Tensor  # [N] int32 stop codes (zsteer.core.status)
    images: torch.Tensor | None  # [N, H, W, C] uint8, or None when not rendered
    # A method that writes several rows per input row (an alpha strip, interpolation frames): [M] int64,
    # the input row (in the batch) each of the M result rows belongs to, in order. None = one row each.
    source: torch.Tensor | None = None

    @staticmethod
    def concat(parts: list[EditResult]) -> EditResult:
        """The results of consecutive batches as one (of one row per input row: ``source`` is None)."""
        first = parts[0]
        if any(p.source is not None for p in parts):
            raise ValueError(
                "EditResult.concat: results with several rows per input row are not concatenated"
            )
        return EditResult(
            **{
                f.name: None
                if getattr(first, f.name) is None
                else torch.cat([getattr(p, f.name) for p in parts])
                for f in fields(first)
            }
        )


@runtime_checkable
class Editor(Protocol):
    """Edits rows; each row's result depends only on that row and the editor's settings."""

    def edit_batch(self, batch: EditBatch, render: bool = True) -> EditResult:
        """Edit ``batch`` (any number of rows; the editor cuts and pads them itself)."""
        ...

    def render(self, z: Rows, labels: Rows | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [N, H, W, C] uint8 and logits [N, A] for latents z [N, z_dim]."""
        ...


def to_uint8_images(images: torch.Tensor) -> torch.Tensor:  # [N, C, H, W] in [-1, 1] -> [N, H, W, C] uint8
    """Generator output as 8-bit pixels (round half to even)."""
    return ((images.float() + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def as_tensor(x: Rows | None, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
    """A per-row array as a tensor on ``device`` (no copy where it already is one there)."""
    if x is None:
        return None
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    return x.to(device=device, dtype=dtype)
