"""The ascent engine: row independence, the notebook's numbers, the step options."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from modelkit import load_models

from zsteer.kernels.ascent_update import MAX_SHIFT, NON_FINITE, STEPS_DONE, TARGET_REACHED
from zsteer.pipeline.engine import (
    AscentConfig,
    EngineConfig,
    default_preserve,
    make_engine,
    target_vector,
)
from zsteer.pipeline.models import ClassifierSpec, GeneratorSpec
from zsteer.pipeline.network import EditNet


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return load_models(tmp_path_factory.mktemp("models"))


def _engine(models, batch_size=16, **ascent):
    return make_engine(*models, AscentConfig(**ascent), EngineConfig(batch_size=batch_size))


def _targets(n, a, targets=((2, 1.0),)):
    w = target_vector(list(targets), a).expand(n, a).clone()
    return w, default_preserve(w)


def test_rows_do_not_depend_on_batch_size_or_neighbours(models):
    z = torch.randn(37, 16, generator=torch.Generator().manual_seed(1))
    w, p = _targets(37, 6, ((2, 1.0), (4, -0.5)))
    results = [_engine(models, bs, steps=6, lr=0.5).edit(z, w, p) for bs in (37, 8, 5)]
    assert results[0].latent_shift.min() > 1e-2, "the edit must actually move z"
    for other in results[1:]:
        torch.testing.assert_close(other.z_edited, results[0].z_edited, rtol=0, atol=1e-5)
        torch.testing.assert_close(other.logits_after, results[0].logits_after, rtol=0, atol=1e-4)
        assert torch.equal(other.steps_taken, results[0].steps_taken)


def test_ascent_raises_the_target_and_reports_it(models):
    z = torch.randn(16, 16, generator=torch.Generator().manual_seed(2))
    w, p = _targets(16, 6)
    r = _engine(models, steps=8, lr=0.3).edit(z, w, p)
    gain = r.logits_after[:, 2] - r.logits_before[:, 2]
    assert (gain > 0).all()
    torch.testing.assert_close(r.latent_shift, (r.z_edited - z).norm(dim=1))
    assert (r.status == STEPS_DONE).all() and (r.steps_taken == 8).all()
    assert r.images.dtype == torch.uint8 and r.images.shape == (16, 64, 64, 3)


def test_penalty_keeps_other_attributes_closer(models):
    z = torch.randn(16, 16, generator=torch.Generator().manual_seed(3))
    w, p = _targets(16, 6)
    moved = {}
    for lam in (0.0, 2.0):
        r = _engine(models, steps=10, lr=0.3, penalty=lam).edit(z, w, p)
        moved[lam] = ((r.logits_after - r.logits_before) * p).norm(dim=1).mean()
    assert moved[2.0] < moved[0.0]


# The C1W4B notebook, as written there (eval-mode course modules, parameter grads and all).
def _get_score(current, original, target_indices, other_indices, penalty_weight):
    other_distances = current[:, other_indices] - original[:, other_indices]
    other_class_penalty = -torch.norm(other_distances, dim=1).mean() * penalty_weight
    target_score = current[:, target_indices].mean()
    return target_score + other_class_penalty


def _notebook_edit(gen, classifier, noise, target_indices, n_classes, grad_steps):
    gen, classifier = copy.deepcopy(gen).requires_grad_(True), copy.deepcopy(classifier).requires_grad_(True)
    opt = torch.optim.Adam(classifier.parameters(), lr=0.01)
    if isinstance(target_indices, int):
        other_indices = [cur_idx != target_indices for cur_idx in range(n_classes)]
    else:
        other_indices = [cur_idx not in target_indices for cur_idx in range(n_classes)]
    noise = noise.clone().requires_grad_()
    original_classifications = classifier(gen(noise)).detach()
    for _ in range(grad_steps):
        opt.zero_grad()
        fake = gen(noise)
        fake_score = _get_score(
            classifier(fake), original_classifications, target_indices, other_indices, 0.1
        )
        fake_score.backward()
        noise.data = noise + noise.grad * (1 / grad_steps)
    return noise.detach()


@pytest.mark.parametrize("targets", [2, [1, 4]])
def test_lab_compat_reproduces_the_notebook(models, targets):
    gen, cls = models
    n, steps = 8, 10
    noise = torch.randn(n, 16, generator=torch.Generator().manual_seed(4))
    expected = _notebook_edit(gen.module, cls.module, noise, targets, 6, steps)
    idx = [targets] if isinstance(targets, int) else targets
    w, p = _targets(n, 6, [(i, 1.0) for i in idx])
    for batch_size in (8, 3):
        engine = _engine(models, batch_size, steps=steps, penalty=0.1, lab_compat=True, lab_batch=n)
        got = engine.edit(noise, w, p).z_edited
        assert (expected - noise).abs().max() > 1e-2, (
            "the notebook edit must move z for the test to mean much"
        )
        assert (got - expected).abs().max() <= 1e-5


def test_stop_at_prob_freezes_rows_and_says_why(models):
    z = torch.randn(24, 16, generator=torch.Generator().manual_seed(5))
    w, p = _targets(24, 6)
    probe = _engine(models, steps=0).edit(z, w, p, render=False)
    threshold = float(torch.sigmoid(probe.logits_before[:, 2]).median())
    r = _engine(models, steps=30, lr=0.3, stop_at_prob=threshold).edit(z, w, p)
    reached = r.status == TARGET_REACHED
    assert reached.any() and (~reached).any() or reached.all()
    already = torch.sigmoid(probe.logits_before[:, 2]) >= threshold
    assert (r.steps_taken[already] == 0).all() and (r.status[already] == TARGET_REACHED).all()
    # a frozen row kept the z at which it reached the target
    assert (torch.sigmoid(r.logits_after[reached, 2]) >= threshold - 1e-4).all()
    # per-row budgets: row i may take at most i % 3 steps
    budget = (torch.arange(24) % 3).to(torch.int32)
    r2 = _engine(models, steps=30, lr=0.3).edit(z, w, p, max_steps=budget)
    assert (r2.steps_taken == budget).all() and (r2.status == STEPS_DONE).all()


def test_max_shift_caps_and_normalised_steps_have_unit_length(models):
    z = torch.randn(12, 16, generator=torch.Generator().manual_seed(6))
    w, p = _targets(12, 6)
    r = _engine(models, steps=5, lr=0.25, normalize=True).edit(z, w, p)
    # five unit steps of 0.25 along (nearly) the same direction: at most 1.25 from the start
    assert (r.latent_shift <= 1.25 + 1e-5).all() and (r.latent_shift > 0.5).all()
    capped = _engine(models, steps=50, lr=0.25, normalize=True, max_shift=0.6).edit(z, w, p)
    assert (capped.status == MAX_SHIFT).all()
    torch.testing.assert_close(capped.latent_shift, torch.full((12,), 0.6), rtol=1e-5, atol=1e-5)


def test_non_finite_rows_are_frozen_and_flagged(models):
    z = torch.randn(6, 16, generator=torch.Generator().manual_seed(7))
    w, p = _targets(6, 6)
    w[3, 2] = math.inf  # an infinite weight gives a non-finite gradient for row 3 only
    r = _engine(models, steps=3, lr=0.1).edit(z, w, p)
    assert r.status[3] == NON_FINITE and r.steps_taken[3] == 0
    torch.testing.assert_close(r.z_edited[3], z[3])
    assert (r.status[[0, 1, 2, 4, 5]] == STEPS_DONE).all()


def test_folded_channels_last_matches_the_plain_modules(models):
    gen, cls = models
    z = torch.randn(9, 16, generator=torch.Generator().manual_seed(8))
    fast, plain = EditNet(gen, cls), EditNet(gen, cls, fold=False, channels_last=False)
    torch.testing.assert_close(fast(z), cls.module(gen.module(z)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(plain(z), cls.module(gen.module(z)), rtol=0, atol=0)


def test_conditional_generator_moves_only_z(tmp_path):
    gspec = GeneratorSpec(kind="course_conditional_generator", z_dim=10, hidden_dim=8, im_chan=1, n_classes=4)
    cspec = ClassifierSpec(im_chan=1, n_classes=3, hidden_dim=8, image_size=64)
    models = load_models(tmp_path, gspec=gspec, cspec=cspec)
    z = torch.randn(5, 10, generator=torch.Generator().manual_seed(9))
    labels = torch.tensor([0, 1, 2, 3, 0])
    w, p = _targets(5, 3, ((0, 1.0),))
    r = _engine(models, steps=3, lr=0.3).edit(z, w, p, labels=labels)
    assert r.z_edited.shape == (5, 10) and r.images.shape == (5, 28, 28, 1)
    assert (r.logits_after[:, 0] > r.logits_before[:, 0]).all()
    # the label matters: the same z with another class draws another image
    other = _engine(models, steps=0).edit(z, w, p, labels=torch.tensor([1, 2, 3, 0, 1]))
    assert not torch.equal(other.images, _engine(models, steps=0).edit(z, w, p, labels=labels).images)
    with pytest.raises(ValueError, match="label"):
        _engine(models, steps=1).edit(z, w, p)
