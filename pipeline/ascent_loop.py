"""The ascent loop, once, for every runtime: the bookkeeping around a step that a runtime supplies.

A runtime (PyTorch in ``engine.py``, onnxruntime in ``zsteer.export.backend``) says how to take one
step for a padded batch of rows and how to render latents; ``AscentLoop`` does the rest, the same way
for all of them:

- cuts the rows into batches of ``batch_size`` and pads each once (``padded_size``);
- step 0 runs every row, and its own forward gives each row's starting logits, so the penalty's delta is
  exactly 0 there (docs/NOTES.md, "The objective");
- rows whose budget is used become STEPS_DONE; stopped rows are compacted out of the next step, so they
  cost nothing more;
- after the last step, one forward renders the rows and tests the targets once more
  (``final_status``): a row whose targets pass on its last step ends as target_reached, not steps.

Padding is what makes a row's bits independent of its neighbours (docs/ARCHITECTURE.md, "Batch
invariance"): a batch is never run with fewer than ``MIN_ROWS`` rows, and a compiled runtime always gets
``batch_size`` rows (one shape, one compile).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from zsteer.core.status import ACTIVE, STEPS_DONE
from zsteer.kernels.ascent_update import final_status

from .config import AscentConfig
from .editor import EditBatch, EditCancelled, EditResult, Rows, as_tensor, cut_rows

# oneDNN (and cuDNN) pick another convolution algorithm for a single row, which changes its bits: a batch
# of one row is padded to two (docs/ARCHITECTURE.md, "Batch invariance").
MIN_ROWS = 2


@dataclass(frozen=True)
class StepRows:
    """One step's inputs for a padded batch of rows (names as the ONNX step graph's inputs)."""

    z: torch.Tensor  # [m, z_dim] current latents
    z0: torch.Tensor  # [m, z_dim] starting latents
    logits0: torch.Tensor | None  # [m, A] starting logits; None at step 0 (the step's own are used)
    weights: torch.Tensor  # [m, A] signed target weights (as given: the runtime scales them in lab mode)
    preserve: torch.Tensor  # [m, A] 1.0 = hold in place
    stop_prob: torch.Tensor  # [m] float32, NaN = never
    status: torch.Tensor  # [m] int32 codes
    max_steps: torch.Tensor  # [m] int32 budgets
    steps_taken: torch.Tensor  # [m] int32 updates that moved z so far
    accum: torch.Tensor | None  # [m, z_dim] running gradient sum (lab-compatible mode), else None
    labels: torch.Tensor | None  # [m] int64 classes (conditional generators), else None


@dataclass(frozen=True)
class StepOut:
    """What one step gives back, per row of the padded batch."""

    logits: torch.Tensor  # [m, A] at z, before the update
    z: torch.Tensor  # [m, z_dim] after the update
    status: torch.Tensor  # [m] int32
    steps_taken: torch.Tensor  # [m] int32
    accum: torch.Tensor | None  # [m, z_dim] or None


def padded_size(m: int, n: int, batch_size: int, fixed: bool) -> int:
    """Rows to run for ``m`` active rows of a batch of ``n``.

    A fixed-shape runtime always runs ``batch_size``. Otherwise a full batch runs as it is and a
    compacted one is padded to the next power of two (few distinct shapes); never fewer than MIN_ROWS.
    """
    if fixed:
        size = batch_size
    elif m == n:
        size = m
    else:
        size = min(batch_size, 1 << max(m - 1, 0).bit_length())
    return max(size, m, MIN_ROWS)


def pad_rows(x: torch.Tensor | None, size: int) -> torch.Tensor | None:
    """Rows up to ``size`` by repeating the last one (finite values; the extra results are dropped)."""
    if x is None or x.shape[0] == size:
        return x
    return torch.cat([x, x[-1:].expand(size - x.shape[0], *x.shape[1:])])


def row_settings(
    n: int, ascent: AscentConfig, max_steps: torch.Tensor | None, stop_prob: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row step budgets [n] int32 and stop probabilities [n] (NaN = never), the config's where not given."""
    if max_steps is None:
        max_steps = torch.full((n,), ascent.steps, dtype=torch.int32)
    if stop_prob is None:
        stop_prob = torch.full((n,), math.nan if ascent.stop_at_prob is None else ascent.stop_at_prob)
    return max_steps.reshape(n).to(torch.int32), stop_prob.reshape(n).to(torch.float32)


class AscentLoop:
    """An Editor made of a runtime's ``step_rows`` and ``forward``; subclasses are the runtimes.

    Subclasses set ``self.ascent`` (AscentConfig), ``self.device`` and ``self.batch_size``, may set
    ``self.fixed_batch`` (every call sees ``batch_size`` rows), and implement ``step_rows`` and
    ``forward``.
    """

    ascent: AscentConfig
    device: torch.device
    batch_size: int
    fixed_batch: bool = False

    # ---- what a runtime supplies --------------------------------------------------------------------

    def step_rows(self, rows: StepRows, t: int) -> StepOut:
        """One ascent step (forward, objective, input gradient, update) for a padded batch."""
        raise NotImplementedError

    def forward(
        self, z: torch.Tensor, labels: torch.Tensor | None, images: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(images [m, H, W, C] uint8 or None, logits [m, A] float32) of a padded batch, on any device."""
        raise NotImplementedError

    # ---- the Editor interface -----------------------------------------------------------------------

    def edit_batch(self, batch: EditBatch, render: bool = True) -> EditResult:
        """Edit any number of rows, ``batch_size`` at a time; each row's result depends only on that row."""
        n = batch.n_rows
        parts = [
            self._edit_one(batch.slice(s, s + self.batch_size), render)
            for s in range(0, max(n, 1), self.batch_size)
        ]
        return EditResult.concat(parts)

    def edit(
        self,
        z: Rows,  # [N, z_dim] starting latents
        weights: Rows,  # [N, A] signed target weights
        preserve: Rows,  # [N, A] 1.0 where an attribute is to stay put
        labels: Rows | None = None,  # [N] class of each row (conditional generators)
        max_steps: Rows | None = None,  # [N] per-row step budget (default: config.steps)
        stop_prob: Rows | None = None,  # [N] per-row stop probability, NaN = never
        render: bool = True,
    ) -> EditResult:
        """``edit_batch`` with the fields as arguments."""
        return self.edit_batch(EditBatch(z, weights, preserve, labels, max_steps, stop_prob), render)

    def render(self, z: Rows, labels: Rows | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [N, H, W, C] uint8 and logits [N, A] for latents z [N, z_dim], batch by batch."""
        return self._forward_all(z, labels, images=True)

    def scores(self, z: Rows, labels: Rows | None = None) -> torch.Tensor:
        """Logits [N, A] for latents z [N, z_dim]: ``render``'s logits, bit for bit, without making the
        uint8 images (the direction and interpolate editors score starting latents with it)."""
        return self._forward_all(z, labels, images=False)[1]

    # ---- the loop -----------------------------------------------------------------------------------

    @torch.no_grad()
    def _forward_all(self, z: Rows, labels: Rows | None, images: bool):
        """(images [N, H, W, C] uint8 or None, logits [N, A]) on the CPU, ``batch_size`` rows at a time.
        Each batch's results go to the CPU as they come: device memory holds one batch, not N rows."""
        images_cpu, logits_cpu = [], []
        for s in range(0, z.shape[0], self.batch_size):
            img, lg = self._forward_rows(
                z[s : s + self.batch_size], cut_rows(labels, s, s + self.batch_size), images
            )
            logits_cpu.append(lg.cpu())  # [m, A]
            if images:
                images_cpu.append(img.cpu())  # [m, H, W, C] uint8
        return (torch.cat(images_cpu) if images else None), torch.cat(logits_cpu)

    def _forward_rows(self, z, labels, images: bool):
        """``forward`` on unpadded rows: padded here, cut back to the rows."""
        z = as_tensor(z, self.device, torch.float32)
        labels = as_tensor(labels, self.device, torch.int64)
        m = z.shape[0]
        size = padded_size(m, m, self.batch_size, self.fixed_batch)
        img, logits = self.forward(pad_rows(z, size), pad_rows(labels, size), images)
        return None if img is None else img[:m], logits[:m].float()

    def _edit_one(self, batch: EditBatch, render: bool) -> EditResult:
        dev, ascent = self.device, self.ascent
        n = batch.n_rows
        z0 = as_tensor(batch.z, dev, torch.float32)  # [n, z_dim]
        weights = as_tensor(batch.weights, dev, torch.float32)  # [n, A]
        preserve = as_tensor(batch.preserve, dev, torch.float32)  # [n, A]
        labels = as_tensor(batch.labels, dev, torch.int64)  # [n] or None
        max_steps, stop_prob = row_settings(
            n,
            ascent,
            as_tensor(batch.max_steps, dev, torch.int32),
            as_tensor(batch.stop_prob, dev, torch.float32),
        )
        max_steps, stop_prob = max_steps.to(dev), stop_prob.to(dev)
        z_cur = z0.clone()
        status = torch.full((n,), ACTIVE, dtype=torch.int32, device=dev)
        steps_taken = torch.zeros(n, dtype=torch.int32, device=dev)
        accum = torch.zeros_like(z0) if ascent.lab_compat else None
        logits0 = None  # [n, A], from step 0's own forward
        budget = int(max_steps.max().item()) if n else 0

        for t in range(budget):
            if batch.cancelled is not None and batch.cancelled():  # a stop asked for: between two steps
                raise EditCancelled(f"stopped before step {t} of {budget}")
            status = torch.where((status == ACTIVE) & (max_steps <= t), STEPS_DONE, status)
            # Step 0 runs every row: its forward gives each row's starting logits.
            rows = (status == ACTIVE).nonzero().squeeze(1) if t > 0 else None
            if rows is not None and rows.numel() == 0:
                break
            take = _taker(rows)
            m = n if rows is None else rows.numel()
            size = padded_size(m, n, self.batch_size, self.fixed_batch)
            step = StepRows(
                z=take(z_cur), z0=take(z0), logits0=take(logits0), weights=take(weights),
                preserve=take(preserve), stop_prob=take(stop_prob), status=take(status),
                max_steps=take(max_steps), steps_taken=take(steps_taken), accum=take(accum),
                labels=take(labels),
            )  # fmt: skip
            out = self.step_rows(_pad_all(step, size), t)
            if logits0 is None:
                logits0 = out.logits[:m].detach().float().clone()
            _put(z_cur, rows, out.z[:m])
            _put(status, rows, out.status[:m])
            _put(steps_taken, rows, out.steps_taken[:m])
            if accum is not None:
                _put(accum, rows, out.accum[:m])

        images, logits_after = self._forward_rows(z_cur, labels, render)
        # The update tests the targets before each step; this tests them after the last one.
        status = final_status(status, logits_after, weights, stop_prob)
        if logits0 is None:  # no steps at all: before == after
            logits0 = logits_after
        return EditResult(
            z_edited=z_cur.cpu(),
            logits_before=logits0.cpu(),
            logits_after=logits_after.cpu(),
            latent_shift=torch.linalg.vector_norm(z_cur - z0, dim=1).cpu(),
            steps_taken=steps_taken.cpu(),
            status=status.cpu(),
            images=images.cpu() if images is not None else None,
        )


def _pad_all(rows: StepRows, size: int) -> StepRows:
    """Every field of ``rows`` padded to ``size`` rows: the one place a step's inputs are padded."""
    return replace(rows, **{name: pad_rows(getattr(rows, name), size) for name in rows.__dataclass_fields__})


def _taker(rows: torch.Tensor | None):
    """Row selector for the active rows (identity when all rows are active)."""
    if rows is None:
        return lambda x: x
    return lambda x: None if x is None else x.index_select(0, rows)


def _put(dst: torch.Tensor, rows: torch.Tensor | None, src: torch.Tensor) -> None:
    if rows is None:
        dst.copy_(src)
    else:
        dst.index_copy_(0, rows, src.to(dst.dtype))
