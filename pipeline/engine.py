"""Batched classifier-gradient ascent on z with PyTorch: the torch runtime of the shared ascent loop.

``ascent_loop.AscentLoop`` does the bookkeeping every runtime shares (batches, padding, compaction,
starting logits, the final stop test); this module supplies one step (a forward, the objective, one VJP
and the fused update) and the forward that renders.

Clean mode (default): every step takes a fresh gradient of each row's own score, so a row's result
depends only on that row and the settings. ``steps_taken`` counts the updates that moved z (a zero
gradient moves nothing).

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
from dataclasses import replace

import torch
from torch import nn

from zsteer.core.errors import ZsteerError
from zsteer.kernels.ascent_update import ascent_update, ascent_update_impl
from zsteer.kernels.dispatch import triton_interpreted
from zsteer.kernels.objective import objective_fn

from .ascent_loop import AscentLoop, StepOut, StepRows
from .checkpoints import LoadedModel
from .compile import compile_step, should_compile
from .config import AscentConfig, EngineConfig
from .editor import to_uint8_images
from .generic_net import build_net
from .network import EditNet

log = logging.getLogger(__name__)


class AscentEngine(AscentLoop):
    """An Editor: ascent on z with a frozen generator + classifier, in PyTorch (eager or compiled)."""

    def __init__(self, net: EditNet, ascent: AscentConfig, engine: EngineConfig | None = None):
        self.engine = engine or EngineConfig()
        self.ascent = ascent
        self.device = torch.device(self.engine.device)
        self.batch_size = self.engine.batch_size
        self.net = net.to(self.device)
        self.compiled = should_compile(self.engine.compile, self.device)
        # A compiled step sees one shape: every batch is padded to batch_size (ascent_loop.padded_size).
        self.fixed_batch = self.compiled
        self._step = compile_step(self._grad_step, self.compiled)
        # "objective" / "ascent_update" -> "triton" | "torch", resolved at the first edit (_resolve_kernels).
        self.kernel_impls: dict[str, str] = {}
        self._objective = None

    def _grad_step(self, z_in, logits0, weights, preserve, penalty: float):
        """logits [N, A], score [N] and d score / d z_in [N, input_dim], by one forward and one VJP."""
        logits, vjp = torch.func.vjp(self.net, z_in)
        # Step 0 takes its starting logits from its own forward: delta is exactly 0 (docs/NOTES.md, "The objective").
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
        # The kernels refuse some dtypes: ask with the real one (a bf16 network's logits come out fp32).
        dtype = torch.promote_types(next(self.net.parameters()).dtype, torch.float32)
        logits = torch.empty(0, n_attr, device=dev, dtype=dtype)
        z = torch.empty(0, self.net.z_dim, device=dev, dtype=dtype)
        rows = torch.empty(0, device=dev, dtype=dtype)
        self._objective, obj_impl = objective_fn(impl, logits)
        upd_impl = ascent_update_impl(
            impl, z, z, z, z if self.ascent.lab_compat else None, logits, logits, rows,
            rows.int(), self.ascent.step_size, _max_shift(self.ascent), self.ascent.normalize,
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

    def step_rows(self, rows: StepRows, t: int) -> StepOut:
        """One step for a padded batch: forward + objective + VJP (compiled or not), then the fused update."""
        z_in = self.net.latent_input(rows.z, rows.labels)  # [m, input_dim]
        self._resolve_kernels(z_in)  # once per engine
        eff_weights, penalty = self._effective_weights(rows.weights)
        logits, _, grad_in = self._step(z_in, rows.logits0, eff_weights, rows.preserve, penalty)
        upd = ascent_update(
            rows.z, rows.z0, grad_in[:, : self.net.z_dim], rows.accum, logits, rows.weights, rows.stop_prob,
            rows.status, self.ascent.step_size, _max_shift(self.ascent), self.ascent.normalize,
            impl=self.kernel_impls["ascent_update"],
        )  # fmt: skip
        return StepOut(logits, upd.z, upd.status, rows.steps_taken + upd.moved, upd.accum)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None, images: bool):
        """(images [m, H, W, C] uint8 or None, logits [m, A]) of a padded batch."""
        with torch.no_grad():
            generated = self.net.generate(self.net.latent_input(z, labels))
            logits = self.net.classify(generated).float()
        return (to_uint8_images(generated) if images else None), logits


def _max_shift(ascent: AscentConfig) -> float:
    return math.inf if ascent.max_shift is None else ascent.max_shift


def make_engine(
    generator: LoadedModel, classifier: LoadedModel, ascent: AscentConfig, engine: EngineConfig | None = None
) -> AscentEngine:
    """An engine over these models, laid out as the mode needs (exact course modules in lab mode); imported
    models run as their exported graphs (generic_net.ModelNet)."""
    engine = engine or EngineConfig()
    fast = engine.fast_layout and not ascent.lab_compat
    net = with_precision(build_net(generator, classifier, fast), engine.precision, ascent.lab_compat)
    if engine.compile == "auto" and getattr(net, "row_by_row", False):
        # A net that calls its graphs once per row (generic_net.ModelNet, imported models): a compiled step
        # would trace batch_size copies of the graphs, so "auto" leaves it eager; --compile on still
        # compiles (checked on CPU: same rows within 2e-6).
        engine = replace(engine, compile="off")
    return AscentEngine(net, ascent, engine)


def with_precision(net: nn.Module, precision: str, lab_compat: bool = False) -> nn.Module:
    """``net`` in the arithmetic of EngineConfig.precision: bf16 casts the course network's weights (its
    inputs are cast on the way in and its logits come out fp32, network.EditNet); fp32 leaves it alone."""
    if precision == "fp32":
        return net
    if lab_compat:
        raise ZsteerError(f"--precision {precision}: lab-compatible mode reproduces the notebook in fp32")
    if not isinstance(net, EditNet):
        raise ZsteerError(
            f"--precision {precision}: runs the course architectures only; imported models run in fp32"
        )
    return net.to(torch.bfloat16)


def torch_backend(
    generator: LoadedModel, classifier: LoadedModel, ascent: AscentConfig, engine: EngineConfig, backend=None
) -> AscentEngine:
    """The "torch" entry of the job's backend registry (jobs/backends.py); it takes no backend options."""
    return make_engine(generator, classifier, ascent, engine)


def target_vector(targets: list[tuple[int, float]], n_attributes: int) -> torch.Tensor:
    """[A] weights from (attribute index, weight) pairs."""
    w = torch.zeros(n_attributes)
    for idx, weight in targets:
        w[idx] += weight
    return w


def default_preserve(weights: torch.Tensor) -> torch.Tensor:
    """Preserve every attribute that is not a target: [..., A] 1.0 where weight == 0."""
    return (weights == 0).to(torch.float32)
