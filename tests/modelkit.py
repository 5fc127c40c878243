"""Small models with real gain for tests.

Random-init course models have input gradients near 1e-8, below fp32 resolution (docs/NOTES.md, "Test
models need real gain"), so a test of the ascent on them compares noise with noise. These initialise
every convolution with unit gain (He-normal over the fan-in each output sees) and give BatchNorm
non-trivial running statistics.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from zsteer.pipeline.checkpoints import load_classifier, load_generator, save_model
from zsteer.pipeline.models import ClassifierSpec, GeneratorSpec, build_classifier, build_generator


@torch.no_grad()
def init_unit_gain(module: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d):
            w = layer.weight
            k = w.shape[2] * w.shape[3]
            if isinstance(layer, nn.Conv2d):
                fan = w.shape[1] * k
            else:  # a transposed conv output sees in_channels * k / stride^2 inputs on average
                fan = w.shape[0] * k / (layer.stride[0] * layer.stride[1])
            w.copy_(torch.randn(w.shape, generator=g) * math.sqrt(2.0 / fan))
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=g) * 0.1)
        elif isinstance(layer, nn.BatchNorm2d):
            layer.running_mean.copy_(torch.randn(layer.running_mean.shape, generator=g) * 0.1)
            layer.running_var.copy_(torch.rand(layer.running_var.shape, generator=g) + 0.5)
            layer.weight.copy_(torch.rand(layer.weight.shape, generator=g) + 0.5)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=g) * 0.1)
    return module.eval()


SMALL_GENERATOR = GeneratorSpec(z_dim=16, hidden_dim=8)
SMALL_CLASSIFIER = ClassifierSpec(n_classes=6, hidden_dim=8)


def write_models(
    folder: Path,
    gspec: GeneratorSpec = SMALL_GENERATOR,
    cspec: ClassifierSpec = SMALL_CLASSIFIER,
    seed: int = 0,
):
    """Save a unit-gain generator and classifier in the project format; return their paths."""
    gen = init_unit_gain(build_generator(gspec), seed)
    cls = init_unit_gain(build_classifier(cspec), seed + 1)
    names = tuple(f"attr{i}" for i in range(cspec.n_classes))
    gpath, cpath = folder / "generator.safetensors", folder / "classifier.safetensors"
    save_model(gen, gspec, gpath)
    save_model(cls, cspec, cpath, attributes=names)
    return gpath, cpath


def load_models(folder: Path, **kwargs):
    gpath, cpath = write_models(folder, **kwargs)
    return load_generator(gpath), load_classifier(cpath)
