"""Shared helpers of the export tests (no tests here): small frozen models with real gain, edge-case rows.

Also used by ``benchmarks/onnx.py``, which puts tests/ on its path.

Random-init course models have input gradients of about 1e-8 per step, below fp32 resolution, so a
comparison of two gradient paths on them compares rounding noise (docs/NOTES.md, "Test models need real
gain"). These models are initialised so that every layer keeps the signal's variance (He-style gain per
activation, BatchNorm with plausible running statistics): logits are O(1) and d logits / d z is
O(0.1-1), like a trained model's.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch
from torch import nn

from zsteer.core.status import ACTIVE, STEPS_DONE
from zsteer.pipeline.checkpoints import LoadedModel
from zsteer.pipeline.models import ClassifierSpec, GeneratorSpec, build_classifier, build_generator
from zsteer.pipeline.network import flatten_layers


@torch.no_grad()
def init_with_gain(module: nn.Module, seed: int = 0, last_gain: float = 1.0) -> nn.Module:
    """Re-initialise a course model's stack in place so that activations keep unit scale."""
    gen = torch.Generator().manual_seed(seed)
    layers = flatten_layers(next(module.children()))
    for i, layer in enumerate(layers):
        nxt = layers[i + 1 : i + 3]
        if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d):
            k = layer.kernel_size[0] * layer.kernel_size[1]
            if isinstance(layer, nn.Conv2d):
                fan = layer.in_channels * k / layer.groups
            else:  # each output of a transposed conv sums about in_channels * k / stride^2 inputs
                fan = layer.in_channels * k / (layer.stride[0] * layer.stride[1])
            act = next((m for m in nxt if isinstance(m, nn.ReLU | nn.LeakyReLU | nn.Tanh)), None)
            if isinstance(act, nn.ReLU):
                gain = math.sqrt(2.0)
            elif isinstance(act, nn.LeakyReLU):
                gain = math.sqrt(2.0 / (1 + act.negative_slope**2))
            else:
                gain = last_gain
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * gain / math.sqrt(fan))
            if layer.bias is not None:
                layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen) * 0.05)
        elif isinstance(layer, nn.BatchNorm2d):
            c = layer.num_features
            layer.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
            layer.running_var.copy_(torch.rand(c, generator=gen) * 0.5 + 0.75)
            layer.weight.copy_(torch.rand(c, generator=gen) * 0.4 + 0.8)
            layer.bias.copy_(torch.randn(c, generator=gen) * 0.1)
    return module


def _loaded(module: nn.Module, spec, role: str, attributes: tuple[str, ...] = ()) -> LoadedModel:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return LoadedModel(module, spec, digest.hexdigest()[:16], f"<{role} in memory>", attributes)


def gain_models(
    z_dim: int = 8,
    hidden_dim: int = 8,
    n_attributes: int = 5,
    *,
    n_labels: int = 0,
    conditional_kind: bool = False,
    im_chan: int = 3,
    class_chan: int | None = None,
    class_size: int = 64,
    seed: int = 0,
    gain: bool = True,
) -> tuple[LoadedModel, LoadedModel]:
    """(generator, classifier) LoadedModels of the course architectures with real gain (``gain=False``:
    PyTorch's default init, for throughput only). ``conditional_kind`` gives the C1W4A 28x28 generator."""
    torch.manual_seed(seed)
    gspec = GeneratorSpec(
        kind="course_conditional_generator" if conditional_kind else "course_generator",
        z_dim=z_dim, hidden_dim=hidden_dim, im_chan=im_chan, n_classes=n_labels,
    )  # fmt: skip
    cspec = ClassifierSpec(
        im_chan=im_chan if class_chan is None else class_chan, n_classes=n_attributes,
        hidden_dim=hidden_dim, image_size=class_size,
    )  # fmt: skip
    gen, cls = build_generator(gspec), build_classifier(cspec)
    if gain:
        init_with_gain(gen, seed)
        init_with_gain(cls, seed + 1)
    names = tuple(f"attr{i}" for i in range(n_attributes))
    return _loaded(gen, gspec, "generator"), _loaded(cls, cspec, "classifier", names)


def update_edge_cases():
    """Rows that exercise every branch of ascent_update: frozen, reached, capped, non-finite, zero grad."""
    n, d, a = 9, 4, 3
    g = torch.Generator().manual_seed(3)
    z0 = torch.randn(n, d, generator=g)
    z = z0 + 0.1 * torch.randn(n, d, generator=g)
    grad = torch.randn(n, d, generator=g)
    grad[3] = 0.0  # zero gradient: normalisation must give 0, not NaN
    grad[4, 1] = math.nan
    grad[5, 0] = math.inf
    grad[6] *= 100.0  # a huge step from far out: capped by max_shift
    z[6] = z0[6] + 0.4
    logits = torch.randn(n, a, generator=g)
    logits[1] = torch.tensor([5.0, -5.0, 0.0])  # targets reached
    logits[2] = torch.tensor([5.0, 5.0, 0.0])  # w < 0 target not reached
    weights = torch.tensor([[1.0, -1.0, 0.0]]).repeat(n, 1)
    weights[7] = 0.0  # no target: never "reached"
    stop_prob = torch.full((n,), 0.9)
    stop_prob[8] = math.nan
    status = torch.full((n,), ACTIVE, dtype=torch.int32)
    status[0] = STEPS_DONE  # frozen
    accum = torch.randn(n, d, generator=g)
    return z, z0, grad, accum, logits, weights, stop_prob, status


def weight_initializers(weight_shape: tuple[int, ...], n_bias: int | None) -> tuple[list, list[str]]:
    """Random float32 ONNX initializers "W" [weight_shape] and, when ``n_bias``, "B" [n_bias], with the node
    input names that read them (after "x"): (initializers, ["x", "W"(, "B")])."""
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(weight_shape).astype(np.float32), "W")]
    if n_bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(n_bias).astype(np.float32), "B"))
    return inits, ["x", "W", "B"][: len(inits) + 1]
