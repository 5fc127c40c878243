"""The shipped demo weights load with the project's loaders and do their jobs (a quick check, seconds)."""

from __future__ import annotations

import pytest
import torch

from zsteer.demo import WEIGHTS_DIR, demo_paths
from zsteer.demo.procedural import ATTRIBUTES, make_batch
from zsteer.pipeline.checkpoints import load_classifier, load_generator

PATHS = demo_paths()
needs_weights = pytest.mark.skipif(
    not all(p.is_file() for p in PATHS.values()), reason=f"demo weights not in {WEIGHTS_DIR}"
)
# Held-out images: a seed range none of the models was trained on (see zsteer.demo.train.DATA_SEEDS).
HELDOUT_SEED = 9_500_000


def test_demo_paths():
    assert set(PATHS) == {"generator", "classifier", "judge"}
    assert all(p.parent == WEIGHTS_DIR and p.suffix == ".safetensors" for p in PATHS.values())


@needs_weights
def test_generator_loads_and_draws():
    loaded = load_generator(PATHS["generator"])
    assert loaded.spec.z_dim == 64 and not loaded.module.training
    z = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        images = loaded.module(z)  # [4, 3, 64, 64]
    assert images.shape == (4, 3, 64, 64)
    assert images.min() >= -1 and images.max() <= 1
    assert images.std() > 0.2  # a picture, not a flat field
    # Rows are independent in eval mode: one latent alone draws the same image.
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(z[:1]), images[:1], atol=1e-5, rtol=1e-4)


@needs_weights
@pytest.mark.parametrize("role", ["classifier", "judge"])
def test_classifier_accuracy(role):
    loaded = load_classifier(PATHS[role])
    assert loaded.attributes == ATTRIBUTES
    images, labels = make_batch(256, HELDOUT_SEED)
    with torch.no_grad():
        logits = loaded.module(images)  # [256, A]
    assert logits.shape == (256, len(ATTRIBUTES))
    accuracy = ((logits > 0).float() == labels).float().mean(0)  # [A]
    assert accuracy.mean() >= 0.90, dict(zip(ATTRIBUTES, accuracy.tolist(), strict=True))


@needs_weights
def test_classifier_and_judge_are_different_models():
    c, j = load_classifier(PATHS["classifier"]), load_classifier(PATHS["judge"])
    assert c.fingerprint != j.fingerprint
    assert c.spec.hidden_dim != j.spec.hidden_dim
