"""Batched classifier-gradient ascent on z (DESIGN.md, "The objective").

Clean mode (default): every step takes a fresh gradient of each row's own score, so a row's result
depends only on that row and the settings, never on the batch it shares. Rows that stop are dropped
from the next forward/backward (compacted, padded to a power-of-two bucket), so they cost nothing more.
The stop test runs on each step's logits before the update, and once more on the final logits: a row
whose targets pass on its last step ends as target_reached, not steps. ``steps_taken`` counts the
updates that moved z (a zero gradient moves nothing).

Kernels: the objective (inside the step, compiled or not) and the update (outside it) are resolved once
per engine to Triton or the torch reference (kernels/dispatch.py says once why a fallback happened);
``kernel_impls`` reports the choice. Under torch.compile the Triton objective is the ``zsteer::objective``
operator, which the compiled step launches as the Triton kernel.

Lab-compatible mode reproduces the C1W4B notebook: target score = mean over the batch and the targets,
penalty averaged over the batch, z.grad never zeroed. For a notebook batch of n that equals, per row,
the gradient scaled by 1/n, accumulated over the steps: rows stay independent here too.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass

import torch

from zsteer.kernels.ascent_update import ACTIVE, STEPS_DONE, ascent_update, ascent_update_impl, final_status
from zsteer.kernels.dispatch import triton_interpreted
from zsteer.kernels.objective import objective_fn

from .checkpoints import LoadedModel
from .compile import compile_step, should_compile
from .network import EditNet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AscentConfig:
    """How z moves. Recorded in job.json: a resume with other values is refused."""

    # Gradient steps per row (a row may have a smaller budget of its own).
    steps: int = 10
    # Step size; None = the mode's default (1/steps in lab-compatible mode, as the notebook's `weight`).
    lr: float | None = None
    # lambda: weight of ||other logits - original other logits||, which keeps other attributes in place.
    penalty: float = 0.1
    # Take unit-length steps along the gradient: step size then means distance in z per step.
    normalize: bool = False
    # Cap on ||z - z0||: a row that reaches it is put back on the sphere and stops. None = no cap.
    max_shift: float | None = None
    # Stop a row once its targets pass this probability (sigmoid of the logit). None = never.
    stop_at_prob: float | None = None
    # Reproduce the notebook number for number (accumulated gradient, batch-mean scaling).
    lab_compat: bool = False
    # The notebook batch size n whose 1/n gradient scaling lab-compatible mode reproduces.
    lab_batch: int = 8

    def __post_init__(self):
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not (math.isfinite(self.penalty) and self.penalty >= 0):
            raise ValueError(f"penalty must be >= 0, got {self.penalty}")
        if self.max_shift is not None and not self.max_shift > 0:
            raise ValueError(f"max_shift must be > 0, got {self.max_shift}")
        if self.stop_at_prob is not None and not 0 < self.stop_at_prob < 1:
            raise ValueError(f"stop_at_prob must be in (0, 1), got {self.stop_at_prob}")
        if self.lab_batch < 1:
            raise ValueError(f"lab_batch must be >= 1, got {self.lab_batch}")

    @property
    def step_size(self) -> float:
        if self.lr is not None:
            return self.lr
        return 1.0 / max(self.steps, 1) if self.lab_compat else 0.1


@dataclass(frozen=True)
class EngineConfig:
    """Where and how the engine runs. Not part of a job's identity: results do not depend on it."""

    # Rows per forward/backward; the last batch and compacted batches are padded to fixed shapes.
    batch_size: int = 128
    # torch device string ("cpu", "cuda", "cuda:1").
    device: str = "cpu"
    # torch.compile the step: "auto" (CUDA only, see pipeline/compile.py), "on" or "off".
    compile: str = "auto"
    # Kernel implementation for the objective and the update: "auto" | "triton" | "torch".
    impl: str = "auto"
    # Fold BatchNorm into the convolutions and use channels_last activations: faster, same numbers up to
    # rounding. Lab-compatible mode never does, so that it matches the notebook to the last bit.
    fast_layout: bool = True


@dataclass
class EditResult:
    """Per-row outcome of an edit, all on the CPU."""

    z_edited: torch.Tensor  # [N, z_dim]
    logits_before: torch.Tensor  # [N, A]
    logits_after: torch.Tensor  # [N, A]
    latent_shift: torch.Tensor  # [N] ||z_edited - z||
    steps_taken: torch.Tensor  # [N] int32 updates applied (that moved z)
    status: torch.Tensor  # [N] int32 stop codes (kernels.ascent_update.STATUS_NAMES)
    images: torch.Tensor | None  # [N, H, W, C] uint8, or None when not rendered


def to_uint8_images(images: torch.Tensor) -> torch.Tensor:  # [N, C, H, W] in [-1, 1] -> [N, H, W, C] uint8
    return ((images.float() + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def _bucket(n: int, batch_size: int) -> int:
    """Padded size for n rows: the next power of two, at most the batch size (few distinct shapes)."""
    return min(batch_size, 1 << max(n - 1, 0).bit_length())


class AscentEngine:
    """Edits batches of latents with a frozen generator + classifier."""

    def __init__(self, net: EditNet, ascent: AscentConfig, engine: EngineConfig | None = None):
        self.engine = engine or EngineConfig()
        self.ascent = ascent
        self.device = torch.device(self.engine.device)
        self.net = net.to(self.device)
        self.compiled = should_compile(self.engine.compile, self.device)
        self._step = compile_step(self._grad_step, self.compiled)
        # "objective" / "ascent_update" -> "triton" | "torch", resolved at the first edit (_resolve_kernels).
        self.kernel_impls: dict[str, str] = {}
        self._objective = None

    def _grad_step(self, z_in, logits0, weights, preserve, penalty: float):
        """logits [N, A], score [N] and d score / d z_in [N, input_dim], by one forward and one VJP."""
        logits, vjp = torch.func.vjp(self.net, z_in)
        # Step 0 takes its starting logits from its own forward: delta is exactly 0 (DESIGN.md).
        start = logits if logits0 is None else logits0
        # Resolved once (_resolve_kernels): the compiled step traces the chosen callable, not the dispatch.
        score, grad_logits = self._objective(logits, start, weights, preserve, penalty)
        (grad_in,) = vjp(grad_logits)
        return logits, score, grad_in

    def _resolve_kernels(self, z_in: torch.Tensor) -> None:
        """Pick Triton or the torch reference for both ops, once, for this engine's shapes and device."""
        if self.kernel_impls:
            return
        impl, dev = self.engine.impl, self.device
        n_attr = 1  # only "auto" on CUDA looks at the width (the kernels' row limit): then measure it
        if impl == "auto" and dev.type == "cuda":
            with torch.no_grad():
                n_attr = self.net(z_in[:1]).shape[1]
        dtype = next(self.net.parameters()).dtype  # the kernels refuse some dtypes: ask with the real one
        logits = torch.empty(0, n_attr, device=dev, dtype=dtype)
        z = torch.empty(0, self.net.z_dim, device=dev, dtype=dtype)
        rows = torch.empty(0, device=dev, dtype=dtype)
        self._objective, obj_impl = objective_fn(impl, logits)
        max_shift = math.inf if self.ascent.max_shift is None else self.ascent.max_shift
        upd_impl = ascent_update_impl(
            impl, z, z, z, z if self.ascent.lab_compat else None, logits, logits, rows,
            rows.int(), self.ascent.step_size, max_shift, self.ascent.normalize,
        )  # fmt: skip
        if self.compiled and obj_impl == "triton" and triton_interpreted("objective"):
            # Only on CPU tests: torch.compile cannot trace a kernel that Triton's interpreter runs.
            warnings.warn(
                "zsteer engine: the step runs uncompiled: Triton's interpreter (TRITON_INTERPRET=1) "
                "cannot be traced by torch.compile",
                stacklevel=3,
            )
            self.compiled, self._step = False, self._grad_step
        self.kernel_impls = {"objective": obj_impl, "ascent_update": upd_impl}
        log.info("engine on %s: kernels %s, compiled step: %s", dev, self.kernel_impls, self.compiled)

    def _effective_weights(self, weights: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Per-row weights and lambda as the mode's objective uses them."""
        if not self.ascent.lab_compat:
            return weights, self.ascent.penalty
        # Notebook: mean over the batch (1/n) and over the target indices (1/|T|).
        n_targets = (weights != 0).sum(dim=1, keepdim=True).clamp_min(1)
        scale = 1.0 / self.ascent.lab_batch
        return weights / n_targets * scale, self.ascent.penalty * scale

    @torch.no_grad()
    def render(
        self, z: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [N, H, W, C] uint8 and logits [N, A] for latents z [N, z_dim], batch by batch."""
        images, logits = [], []
        for start in range(0, z.shape[0], self.engine.batch_size):
            chunk = slice(start, start + self.engine.batch_size)
            lab = None if labels is None else labels[chunk].to(self.device)
            img = self.net.generate(self.net.latent_input(z[chunk].to(self.device, torch.float32), lab))
            logits.append(self.net.classify(img).float().cpu())
            images.append(to_uint8_images(img).cpu())
        return torch.cat(images), torch.cat(logits)

    def edit(
        self,
        z: torch.Tensor,  # [N, z_dim] starting latents
        weights: torch.Tensor,  # [N, A] signed target weights
        preserve: torch.Tensor,  # [N, A] 1.0 where an attribute is to stay put
        labels: torch.Tensor | None = None,  # [N] class of each row (conditional generators)
        max_steps: torch.Tensor | None = None,  # [N] per-row step budget (default: config.steps)
        stop_prob: torch.Tensor | None = None,  # [N] per-row stop probability, NaN = never
        render: bool = True,
    ) -> EditResult:
        """Edit any number of rows, ``batch_size`` at a time; each row's result depends only on that row."""
        n = z.shape[0]
        bs = self.engine.batch_size
        max_steps, stop_prob = row_settings(n, self.ascent, max_steps, stop_prob)
        parts = [
            self._edit_batch(
                z[s : s + bs], weights[s : s + bs], preserve[s : s + bs],
                None if labels is None else labels[s : s + bs], max_steps[s : s + bs], stop_prob[s : s + bs],
                render,
            )
            for s in range(0, n, bs)
        ]  # fmt: skip
        first = parts[0]
        return EditResult(
            **{
                key: None if getattr(first, key) is None else torch.cat([getattr(p, key) for p in parts])
                for key in first.__dataclass_fields__
            }
        )

    def _edit_batch(self, z, weights, preserve, labels, max_steps, stop_prob, render) -> EditResult:
        dev = self.device
        n = z.shape[0]
        z0 = z.to(dev, torch.float32)  # [n, z_dim]
        weights = weights.to(dev, torch.float32)
        preserve = preserve.to(dev, torch.float32)
        eff_weights, penalty = self._effective_weights(weights)
        labels = None if labels is None else labels.to(dev)
        max_steps = max_steps.to(dev, torch.int32)
        stop_prob = stop_prob.to(dev, torch.float32)
        z_cur = z0.clone()
        status = torch.full((n,), ACTIVE, dtype=torch.int32, device=dev)
        steps_taken = torch.zeros(n, dtype=torch.int32, device=dev)
        accum = torch.zeros_like(z0) if self.ascent.lab_compat else None
        logits0 = None  # [n, A], from step 0's own forward
        lr = self.ascent.step_size
        max_shift = math.inf if self.ascent.max_shift is None else self.ascent.max_shift
        budget = int(max_steps.max().item()) if n else 0

        for t in range(budget):
            status = torch.where((status == ACTIVE) & (max_steps <= t), STEPS_DONE, status)
            # Step 0 runs every row: its forward gives each row's starting logits.
            rows = (status == ACTIVE).nonzero().squeeze(1) if t > 0 else None
            if rows is not None and rows.numel() == 0:
                break
            take = _taker(rows)
            z_in = self.net.latent_input(take(z_cur), take(labels))
            self._resolve_kernels(z_in)  # once per engine
            m = z_in.shape[0]
            size = _bucket(m, self.engine.batch_size) if m < n or self.compiled else m
            logits, _, grad_in = self._step(
                _pad(z_in, size),
                None if logits0 is None else _pad(take(logits0), size),
                _pad(take(eff_weights), size),
                _pad(take(preserve), size),
                penalty,
            )
            logits, grad = logits[:m], grad_in[:m, : self.net.z_dim]
            if logits0 is None:
                logits0 = logits.detach().clone()
            upd = ascent_update(
                take(z_cur), take(z0), grad, take(accum), logits, take(weights), take(stop_prob),
                take(status), lr, max_shift, self.ascent.normalize, impl=self.kernel_impls["ascent_update"],
            )  # fmt: skip
            _put(z_cur, rows, upd.z)
            _put(status, rows, upd.status)
            _put(steps_taken, rows, take(steps_taken) + upd.moved)
            if accum is not None:
                _put(accum, rows, upd.accum)

        with torch.no_grad():
            images = self.net.generate(self.net.latent_input(z_cur, labels))
            logits_after = self.net.classify(images).float()
        # The update tests the targets before each step; this tests them after the last one.
        status = final_status(status, logits_after, weights, stop_prob)
        if logits0 is None:  # no steps at all: before == after
            logits0 = logits_after
        return EditResult(
            z_edited=z_cur.cpu(),
            logits_before=logits0.float().cpu(),
            logits_after=logits_after.cpu(),
            latent_shift=torch.linalg.vector_norm(z_cur - z0, dim=1).cpu(),
            steps_taken=steps_taken.cpu(),
            status=status.cpu(),
            images=to_uint8_images(images).cpu() if render else None,
        )


def make_engine(
    generator: LoadedModel, classifier: LoadedModel, ascent: AscentConfig, engine: EngineConfig | None = None
) -> AscentEngine:
    """An engine over these models, laid out as the mode needs (exact course modules in lab mode)."""
    engine = engine or EngineConfig()
    fast = engine.fast_layout and not ascent.lab_compat
    return AscentEngine(EditNet(generator, classifier, fold=fast, channels_last=fast), ascent, engine)


def row_settings(
    n: int, ascent: AscentConfig, max_steps: torch.Tensor | None, stop_prob: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row step budgets [n] int32 and stop probabilities [n] (NaN = never), the config's where not given."""
    if max_steps is None:
        max_steps = torch.full((n,), ascent.steps, dtype=torch.int32)
    if stop_prob is None:
        stop_prob = torch.full((n,), math.nan if ascent.stop_at_prob is None else ascent.stop_at_prob)
    return max_steps.reshape(n).to(torch.int32), stop_prob.reshape(n).to(torch.float32)


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


def _pad(x: torch.Tensor, size: int) -> torch.Tensor:
    """Pad rows to ``size`` by repeating the last row (finite values; the extra results are dropped)."""
    m = x.shape[0]
    if m == size:
        return x
    return torch.cat([x, x[-1:].expand(size - m, *x.shape[1:])])


def target_vector(targets: list[tuple[int, float]], n_attributes: int) -> torch.Tensor:
    """[A] weights from (attribute index, weight) pairs."""
    w = torch.zeros(n_attributes)
    for idx, weight in targets:
        w[idx] += weight
    return w


def default_preserve(weights: torch.Tensor) -> torch.Tensor:
    """Preserve every attribute that is not a target: [..., A] 1.0 where weight == 0."""
    return (weights == 0).to(torch.float32)
