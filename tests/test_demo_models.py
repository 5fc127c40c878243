"""The shipped demo weights load with the project's loaders and pass the issue's quality gates (seconds).

The weights are tracked in git, so a missing file fails here rather than skipping.
"""

from __future__ import annotations

import pytest
import torch

from zsteer.demo import ROLES, WEIGHTS_DIR, demo_paths
from zsteer.demo.evaluate import MAX_RATE_GAP, MIN_ACCURACY, evaluate
from zsteer.demo.procedural import ATTRIBUTES
from zsteer.pipeline.checkpoints import load_classifier, load_generator

PATHS = demo_paths()
# Samples per gate. At 512 the generator's weakest attribute (Smiling, -0.074 on the model card) came
# within one sample of the 10-point gate on one held-out seed: 2048 keeps sampling noise (about 0.011)
# well below the margin, and is the model card's own evaluation.
N_EVAL = 2048


@pytest.fixture(scope="module")
def evaluation():
    """demo.evaluate on held-out procedural images and generator samples (the model card's run)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # far faster than 2 threads on a shared 2-core machine
    try:
        return evaluate(WEIGHTS_DIR, n=N_EVAL)
    finally:
        torch.set_num_threads(before)


def test_demo_paths_and_every_weight_file_is_shipped():
    assert set(PATHS) == set(ROLES) == {"generator", "classifier", "judge"}
    for path in PATHS.values():
        assert path.parent == WEIGHTS_DIR and path.suffix == ".safetensors"
        assert path.is_file() and path.with_suffix(".json").is_file(), path


def test_the_gates_are_the_issues():
    assert MIN_ACCURACY == 0.95 and MAX_RATE_GAP == 0.10


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


@pytest.mark.parametrize("role", ["classifier", "judge"])
def test_classifier_accuracy_on_every_attribute(evaluation, role):
    accuracy = evaluation[role]["accuracy"]  # attribute -> accuracy on held-out procedural images
    assert list(accuracy) == list(ATTRIBUTES)
    low = {name: acc for name, acc in accuracy.items() if acc < MIN_ACCURACY}
    assert not low, f"{role} below {MIN_ACCURACY:.0%}: {low}"


def test_generator_attribute_rates_match_the_data(evaluation):
    """Generator samples scored by the judge show each attribute within 10 points of the data's rate."""
    gaps = evaluation["generator"]["gap"]  # judged rate - data rate, per attribute
    assert list(gaps) == list(ATTRIBUTES)
    far = {name: gap for name, gap in gaps.items() if abs(gap) > MAX_RATE_GAP}
    assert not far, f"rates more than {MAX_RATE_GAP:.0%} from the data's: {far}"


def test_classifier_and_judge_are_different_models():
    c, j = load_classifier(PATHS["classifier"]), load_classifier(PATHS["judge"])
    assert c.attributes == j.attributes == ATTRIBUTES
    assert c.fingerprint != j.fingerprint
    assert c.spec.hidden_dim != j.spec.hidden_dim
