"""The export gate is well posed: every correct model exports, every planted wrong graph is refused.

The gradient of the exported step is judged against autograd through the user's own modules, over the
rows of every batch size together, with each row allowed its own conditioning (export/parity.py). A
wrong adjoint is in the exported graph and in its torch twin alike, so only autograd can refuse it.
"""

from __future__ import annotations

import pytest
import torch
from exportkit import gain_models

from zsteer.core.errors import ExportError
from zsteer.export import vjp as vjp_module
from zsteer.export.onnx_export import MANIFEST, export_models

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow
SEEDS = range(20)


def _export(tmp_path, seed: int = 0, **kw):
    generator, classifier = gain_models(z_dim=8, hidden_dim=4, n_attributes=5, seed=seed)
    return export_models(generator, classifier, tmp_path, exporter="torchscript", **kw)


@pytest.mark.parametrize("seed", SEEDS)
def test_correct_models_with_real_gain_export_at_every_seed(tmp_path, seed):
    report = _export(tmp_path, seed)
    assert report["passed"], report["failure"]
    assert all(g["max_grad_norm"] > 1e-2 for g in report["gradients"].values())  # real gain
    assert (tmp_path / MANIFEST).is_file()


def _flip_sign_of_the_classifier_stack(monkeypatch):
    real, seen = vjp_module.VJPStack.backward, []

    def backward(self, g, tape):
        if not seen:
            seen.append(id(self))
        out = real(self, g, tape)
        return -out if id(self) == seen[0] else out  # the first stack run backwards: the classifier's

    monkeypatch.setattr(vjp_module.VJPStack, "backward", backward)


def _wrong_output_padding(monkeypatch):
    real = vjp_module._adjoint_output_padding

    def padding(conv, in_hw, out_hw):
        pad = real(conv, in_hw, out_hw)
        return tuple((p + 1) % s for p, s in zip(pad, conv.stride, strict=True))

    monkeypatch.setattr(vjp_module, "_adjoint_output_padding", padding)


def _leaky_slope_in_the_gradient(monkeypatch):
    real = vjp_module.VJPStack.backward

    def backward(self, g, tape):
        leaky = [layer for layer in self.layers if isinstance(layer, torch.nn.LeakyReLU)]
        saved = [layer.negative_slope for layer in leaky]
        for layer in leaky:
            layer.negative_slope = 0.1  # the classifier's is 0.2; its forward keeps 0.2
        try:
            return real(self, g, tape)
        finally:
            for layer, slope in zip(leaky, saved, strict=True):
                layer.negative_slope = slope

    monkeypatch.setattr(vjp_module.VJPStack, "backward", backward)


@pytest.mark.parametrize(
    "plant", [_flip_sign_of_the_classifier_stack, _wrong_output_padding, _leaky_slope_in_the_gradient]
)
def test_planted_wrong_graphs_are_refused(tmp_path, monkeypatch, plant):
    plant(monkeypatch)
    with pytest.raises(ExportError) as info:
        _export(tmp_path, steps=(False,))
    assert "\n" not in str(info.value)
    assert not (tmp_path / MANIFEST).exists(), "a refused export leaves no manifest"
