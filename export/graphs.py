"""The torch modules that are exported: generator forward, classifier forward, and one whole ascent step.

All three are built from an ``EditNet``'s frozen, BatchNorm-folded stacks through ``VJPStack``, so the
exported forward is the same code as the forward inside the step graph. The step graph does in one
call what one iteration of ``pipeline.engine.AscentEngine`` does for its active rows: the forward, the
objective's gradient w.r.t. the logits (``kernels.objective.objective_torch``), the hand-written VJP down
to z, and the update with the semantics of ``kernels.ascent_update.ascent_update_torch``, plus the
engine's per-row bookkeeping (step budgets, steps taken), so a device loop needs nothing but the graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zsteer.core.errors import ExportError
from zsteer.core.status import ACTIVE, STEPS_DONE
from zsteer.kernels.ascent_update import ascent_update_torch
from zsteer.kernels.objective import objective_torch
from zsteer.pipeline.imported import is_imported
from zsteer.pipeline.network import EditNet

from .vjp import BilinearResize, VJPStack


class EditVJP(nn.Module):
    """z_in -> images -> logits with a hand-written backward; mirrors ``EditNet`` layer for layer."""

    def __init__(self, net: EditNet, mask_by_multiply: bool = True):
        """``mask_by_multiply``: activation masks of the backward as products (fast in onnxruntime, the
        default) or as ``torch.where`` (the previous graphs); see ``VJPStack``."""
        super().__init__()
        self.z_dim, self.n_labels, self.input_dim = net.z_dim, net.n_labels, net.input_dim
        self.gen = VJPStack(list(net.gen), (net.input_dim, 1, 1), "generator", mask_by_multiply)
        chan, height, width = self.gen.output_shape
        self.image_shape = (chan, height, width)
        size = net.class_size
        # EditNet.classify resizes (bilinear) first, then repeats a single channel for a 3-channel classifier.
        self.resize = (
            BilinearResize((height, width), (size, size)) if (height, width) != (size, size) else None
        )
        if net.class_chan != chan and chan != 1:
            raise ExportError(f"classifier reads {net.class_chan} channels but the generator draws {chan}")
        self.expand = net.class_chan if net.class_chan != chan else 0
        self.cls = VJPStack(list(net.cls), (net.class_chan, size, size), "classifier", mask_by_multiply)
        self.logits_shape = self.cls.output_shape  # (A, 1, 1) for the course classifier
        self.n_logits = int(torch.tensor(self.logits_shape).prod())
        # For the conditional generator's one-hot: comparing labels with this row gives the one-hot rows.
        self.register_buffer("classes", torch.arange(max(self.n_labels, 1), dtype=torch.int64))

    def latent_input(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """[N, z_dim] (+ labels [N]) -> [N, input_dim], as ``EditNet.latent_input``."""
        if not self.n_labels:
            return z
        onehot = (labels.to(torch.int64).unsqueeze(1) == self.classes).to(z.dtype)  # [N, n_labels]
        return torch.cat([z, onehot], dim=1)

    def generate(self, z_in: torch.Tensor) -> torch.Tensor:  # [N, input_dim] -> [N, C, H, W]
        return self.gen(z_in.reshape(-1, self.input_dim, 1, 1))

    def _to_classifier(self, images: torch.Tensor) -> torch.Tensor:
        if self.resize is not None:
            # torch's own resize, not the matrices: the forward stays bit-identical to EditNet.classify, so
            # a comparison with the engine sees only the backward's rounding (see tests/test_export_vjp.py).
            size = self.resize.out_hw
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        if self.expand:
            images = images.expand(-1, self.expand, -1, -1)
        return images

    def classify(self, images: torch.Tensor) -> torch.Tensor:  # [N, C, H, W] -> [N, A]
        return self.cls(self._to_classifier(images)).flatten(1)

    def forward_tape(self, z_in: torch.Tensor):
        """(logits [N, A], tape) for ``backward``."""
        images, gen_tape = self.gen.forward_tape(z_in.reshape(-1, self.input_dim, 1, 1))
        out, cls_tape = self.cls.forward_tape(self._to_classifier(images))
        return out.flatten(1), (gen_tape, cls_tape)

    def backward(self, grad_logits: torch.Tensor, tape) -> torch.Tensor:  # [N, A] -> [N, input_dim]
        """d sum(grad_logits * logits) / d z_in."""
        gen_tape, cls_tape = tape
        g = self.cls.backward(grad_logits.reshape(-1, *self.logits_shape), cls_tape)
        if self.expand:
            g = g.sum(dim=1, keepdim=True)  # adjoint of repeating one channel
        if self.resize is not None:
            g = self.resize.backward(g)
        return self.gen.backward(g, gen_tape).reshape(-1, self.input_dim)

    def grad_step(self, z_in, logits0, weights, preserve, penalty):
        """Same signature and results as ``AscentEngine._grad_step``, without autograd."""
        logits, tape = self.forward_tape(z_in)
        # Step 0 takes its starting logits from its own forward: delta is exactly 0 (docs/NOTES.md,
        # "The objective").
        start = logits if logits0 is None else logits0
        score, grad_logits = objective_torch(logits, start, weights, preserve, penalty)
        return logits, score, self.backward(grad_logits, tape)


class GeneratorGraph(nn.Module):
    """Exported generator: z [N, z_dim] (+ labels [N] int64) -> images [N, C, H, W] in [-1, 1]."""

    def __init__(self, vjp: EditVJP):
        super().__init__()
        self.vjp = vjp

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:  # (z,) or (z, labels)
        z, labels = inputs[0], (inputs[1] if len(inputs) > 1 else None)
        return self.vjp.generate(self.vjp.latent_input(z, labels))


class ClassifierGraph(nn.Module):
    """Exported classifier: generator-sized images [N, C, H, W] -> logits [N, A] (resize included)."""

    def __init__(self, vjp: EditVJP):
        super().__init__()
        self.vjp = vjp

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:  # (images,)
        return self.vjp.classify(inputs[0])


def update_rows(z, z0, grad, accum, logits, weights, stop_prob, status, lr, max_shift, normalize):
    """``ascent_update_torch`` as the step graph uses it: (z, accum, grad_norm, shift, status, moved).

    ``lr`` / ``max_shift``: 0-d float tensors; ``normalize``: 0-d bool tensor (a graph input, so one graph
    serves both settings).
    """
    result = ascent_update_torch(
        z, z0, grad, accum, logits, weights, stop_prob, status, lr, max_shift, normalize
    )
    return (*result[:4], result.status.to(torch.int32), result.moved)


# Graph inputs and outputs of the step, in order. "labels" only for a conditional generator, "accum" and
# "lab_scale" only in lab-compatible mode.
STEP_INPUTS = (
    "z", "z0", "labels", "logits0", "weights", "preserve", "stop_prob", "status", "max_steps",
    "steps_taken", "accum", "t", "lr", "penalty", "max_shift", "normalize", "lab_scale",
)  # fmt: skip
STEP_OUTPUTS = (
    "z_next", "logits", "status_next", "steps_next", "grad_norm", "shift", "moved", "grad", "accum_next",
)  # fmt: skip


class AscentStepGraph(nn.Module):
    """One ascent step for a batch of rows, as one graph.

    Inputs (``input_names``): z, z0 [N, z_dim]; labels [N] int64 (conditional only); logits0, weights,
    preserve [N, A]; stop_prob [N] (NaN = never); status, max_steps, steps_taken [N] int32; accum
    [N, z_dim] (lab only); t (step index), lr, penalty, max_shift (inf = none), normalize (bool), lab_scale
    (lab only, 1 / notebook batch): 0-d.

    Outputs (``output_names``): z_next, logits (at z, before the update), status_next, steps_next,
    grad_norm, shift, moved, grad (d score / d z, for checks: z_next - z is quantised by z's ulp),
    accum_next (lab only).

    At t == 0 the starting logits are this step's own logits (``logits0`` is ignored), as in the engine.
    A row whose budget is used (max_steps <= t) becomes STEPS_DONE before the update, as in the engine.
    ``weights`` are the job's weights: in lab-compatible mode the graph scales them for the objective
    (1 / number of targets, times lab_scale; lambda times lab_scale) and keeps them for the stop test.
    """

    def __init__(self, vjp: EditVJP, lab_compat: bool = False):
        super().__init__()
        self.vjp = vjp
        self.lab_compat = lab_compat
        self.input_names = [
            name for name in STEP_INPUTS
            if not (name == "labels" and not vjp.n_labels) and not (name in ("accum", "lab_scale") and not lab_compat)
        ]  # fmt: skip
        self.output_names = [name for name in STEP_OUTPUTS if name != "accum_next" or lab_compat]

    def forward(self, *inputs: torch.Tensor):
        x = dict(zip(self.input_names, inputs, strict=True))
        z, z0, weights, status, t = x["z"], x["z0"], x["weights"], x["status"], x["t"]
        status = torch.where((status == ACTIVE) & (x["max_steps"] <= t), STEPS_DONE, status).to(torch.int32)
        obj_weights, penalty = weights, x["penalty"]
        if self.lab_compat:
            # As AscentEngine._effective_weights: mean over the targets and over the notebook's batch.
            n_targets = (weights != 0).sum(dim=1, keepdim=True).clamp_min(1).to(weights.dtype)
            obj_weights = weights / n_targets * x["lab_scale"]
            penalty = penalty * x["lab_scale"]
        z_in = self.vjp.latent_input(z, x.get("labels"))  # [N, input_dim]
        logits, tape = self.vjp.forward_tape(z_in)  # [N, A]
        start = torch.where(t == 0, logits, x["logits0"])
        _, grad_logits = objective_torch(logits, start, obj_weights, x["preserve"], penalty)
        # d score / d z: the one-hot label part of z_in is dropped.
        grad = self.vjp.backward(grad_logits, tape)[:, : self.vjp.z_dim]  # [N, z_dim]
        new_z, new_accum, grad_norm, shift, new_status, moved = update_rows(
            z, z0, grad, x.get("accum"), logits, weights, x["stop_prob"], status,
            x["lr"], x["max_shift"], x["normalize"],
        )  # fmt: skip
        outputs = [new_z, logits, new_status, x["steps_taken"] + moved, grad_norm, shift, moved, grad]
        if self.lab_compat:
            outputs.append(new_accum)
        return tuple(outputs)


def build_edit_vjp(generator, classifier) -> tuple[EditNet, EditVJP]:
    """(EditNet, EditVJP) for two LoadedModels; layer and shape problems become one-line ExportErrors."""
    for model in (generator, classifier):
        if is_imported(model):
            raise ExportError(
                f"{model.path}: zsteer export writes the course models' graphs; an imported .pt2 runs on "
                "onnxruntime with its graphs exported in memory (--backend onnxruntime, without --onnx-dir)"
            )
    try:
        net = EditNet(generator, classifier, fold=True, channels_last=False)
    except (TypeError, ValueError) as exc:
        raise ExportError(f"cannot build the edit network: {exc}") from None
    return net, EditVJP(net)
