"""The ascent engine: row independence, the notebook's numbers, the step options."""

from __future__ import annotations

import copy
import logging
import math

import pytest
import torch
from modelkit import load_models

from zsteer.core.status import MAX_SHIFT, NON_FINITE, STEPS_DONE, TARGET_REACHED
from zsteer.kernels import dispatch
from zsteer.kernels.ascent_update import targets_reached
from zsteer.pipeline import ascent_loop
from zsteer.pipeline.engine import (
    AscentConfig,
    EngineConfig,
    default_preserve,
    make_engine,
    target_vector,
)
from zsteer.pipeline.models import ClassifierSpec, GeneratorSpec
from zsteer.pipeline.network import EditNet
from zsteer.pipeline.wide_conv import WideLayer


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


def test_scores_are_the_logits_of_render_without_making_images(models):
    z = torch.randn(21, 16, generator=torch.Generator().manual_seed(4))
    engine = _engine(models, batch_size=8, steps=0)
    images, logits = engine.render(z)
    asked = []
    forward = engine.forward
    engine.forward = lambda z, labels, images: asked.append(images) or forward(z, labels, images)
    scores = engine.scores(z)
    assert asked == [False] * 3, "batch by batch, and no images"
    assert images.shape[0] == 21 and torch.equal(scores, logits), "render's logits, bit for bit"


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


def _stop_case(models, n=24):
    """Latents, targets and a stop probability midway between two rows' starting probabilities: half the
    rows pass it at the start, by a margin, and the others are below it."""
    z = torch.randn(n, 16, generator=torch.Generator().manual_seed(5))
    w, p = _targets(n, 6)
    probe = _engine(models, steps=0).edit(z, w, p, render=False)
    start = torch.sigmoid(probe.logits_before[:, 2]).sort().values
    threshold = float((start[n // 2 - 1] + start[n // 2]) / 2)
    assert start[n // 2] - start[n // 2 - 1] > 1e-4, "pick a seed whose middle rows are apart"
    return z, w, p, probe, threshold


def _passes(logits, w, threshold):
    return targets_reached(logits, w, torch.full((logits.shape[0],), threshold))


def test_stop_at_prob_freezes_rows_and_says_why(models):
    z, w, p, probe, threshold = _stop_case(models)
    r = _engine(models, steps=3, lr=0.3, stop_at_prob=threshold).edit(z, w, p)
    reached = r.status == TARGET_REACHED
    already = _passes(probe.logits_before, w, threshold)
    assert already.sum() == 12
    assert (r.steps_taken[already] == 0).all() and reached[already].all()
    later = reached & ~already
    assert later.any() and (r.steps_taken[later] > 0).all(), "rows below the threshold reach it by stepping"
    assert (r.status == STEPS_DONE).any(), "and some do not within 3 steps"
    assert set(r.status.tolist()) == {TARGET_REACHED, STEPS_DONE}
    # a frozen row kept the z at which it reached the target (up to the final forward's rounding)
    assert (torch.sigmoid(r.logits_after[reached, 2]) >= threshold - 1e-4).all()
    # ... and a row reported "steps" does not pass on its final logits (the test after the last step)
    assert not _passes(r.logits_after, w, threshold)[r.status == STEPS_DONE].any()
    # per-row budgets: row i may take at most i % 3 steps
    budget = (torch.arange(24) % 3).to(torch.int32)
    r2 = _engine(models, steps=30, lr=0.3).edit(z, w, p, max_steps=budget)
    assert (r2.steps_taken == budget).all() and (r2.status == STEPS_DONE).all()


def test_a_row_that_reaches_the_target_on_its_last_step_says_so(models):
    z, w, p, _, threshold = _stop_case(models)
    free = _engine(models, steps=30, lr=0.3, stop_at_prob=threshold).edit(z, w, p, render=False)
    # Give each row that reached its target by stepping exactly the steps it needed: the threshold is
    # then passed by its last step's update, and only the test after the loop can see it.
    rows = (free.status == TARGET_REACHED) & (free.steps_taken > 0)
    margin = torch.logit(torch.sigmoid(free.logits_after[:, 2])) - math.log(threshold / (1 - threshold))
    rows &= margin > 1e-3  # past the threshold by more than two forwards' rounding apart
    assert rows.sum() >= 3
    budget = torch.where(rows, free.steps_taken, 30).to(torch.int32)
    r = _engine(models, steps=30, lr=0.3, stop_at_prob=threshold).edit(
        z, w, p, max_steps=budget, render=False
    )
    assert (r.status[rows] == TARGET_REACHED).all(), r.status[rows]
    assert torch.equal(r.steps_taken[rows], free.steps_taken[rows])
    torch.testing.assert_close(r.z_edited, free.z_edited, rtol=0, atol=1e-5)


def test_stopped_rows_are_dropped_from_the_compute(models, monkeypatch):
    z, w, p, _, threshold = _stop_case(models, n=32)
    engine = _engine(models, batch_size=32, steps=12, lr=0.3, stop_at_prob=threshold)
    sizes, run = [], []  # (active rows, rows padded to) per call of padded_size; rows the step ran
    real_size, step = ascent_loop.padded_size, engine._step

    def spy_size(m, n, batch_size, fixed):
        size = real_size(m, n, batch_size, fixed)
        sizes.append((m, size))
        return size

    def count_step(z_in, *args):
        run.append(z_in.shape[0])
        return step(z_in, *args)

    monkeypatch.setattr(ascent_loop, "padded_size", spy_size)
    monkeypatch.setattr(engine, "_step", count_step)
    r = engine.edit(z, w, p, render=False)
    steps = sizes[:-1]  # the last call pads the final forward
    assert [size for _, size in steps] == run, "the step runs exactly the padded rows"
    assert steps[0] == (32, 32), "step 0 runs every row"
    assert all(size == max(2, 1 << (m - 1).bit_length()) for m, size in steps[1:]), "power-of-two buckets"
    assert steps[1][0] <= 16 and run[1] <= 16, "half the rows stop at step 0: the batch halves"
    assert sum(run) < 32 * len(run)
    assert int((r.status == TARGET_REACHED).sum()) == 32 - steps[-1][0] or r.status.eq(0).sum() == 0


def test_a_zero_gradient_moves_nothing_and_counts_no_step(models):
    z = torch.randn(6, 16, generator=torch.Generator().manual_seed(10))
    w, p = _targets(6, 6)
    w[3] = 0.0  # no target and (penalty at z0) no gradient: the row's z never changes
    r = _engine(models, steps=4, lr=0.3).edit(z, w, default_preserve(w), render=False)
    assert r.steps_taken.tolist() == [4, 4, 4, 0, 4, 4]
    assert torch.equal(r.z_edited[3], z[3]) and r.status[3] == STEPS_DONE


def test_kernel_choice_is_made_once_and_reported(models, monkeypatch, caplog):
    monkeypatch.setattr(dispatch, "_said", set())
    z = torch.randn(5, 16, generator=torch.Generator().manual_seed(11))
    w, p = _targets(5, 6)
    engine = _engine(models, steps=2)
    assert engine.kernel_impls == {}
    with caplog.at_level(logging.INFO, logger="zsteer"):
        engine.edit(z, w, p, render=False)
        engine.edit(z, w, p, render=False)
    assert engine.kernel_impls == {"objective": "torch", "ascent_update": "torch"}
    said = [r.getMessage() for r in caplog.records if "using the torch reference" in r.getMessage()]
    assert len(said) == 2 and all("CUDA tensors only" in m for m in said), said
    assert {r.levelno for r in caplog.records if r.name.startswith("zsteer.kernels")} == {logging.INFO}


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


def test_the_compiled_step_traces_the_fast_forms_and_matches_eager(models):
    """CUDA's default step is compiled (pipeline/compile.py): torch.compile must trace the fast layout's
    custom-gradient layers (phase_conv, wide_conv, which steps aside while compiling) and give eager's
    edit up to rounding. Run on the CPU here, where it compiles the same graph."""
    z = torch.randn(8, 16, generator=torch.Generator().manual_seed(9))
    w, p = _targets(8, 6)
    engines = {
        mode: make_engine(
            *models, AscentConfig(steps=3, lr=0.5), EngineConfig(batch_size=8, compile=mode, impl="torch")
        )
        for mode in ("off", "on")
    }
    assert engines["on"].compiled and not engines["off"].compiled
    assert any(isinstance(m, WideLayer) for m in engines["on"].net.modules()), "the fast layout"
    edits = {mode: engine.edit(z, w, p, render=False) for mode, engine in engines.items()}
    assert edits["off"].latent_shift.min() > 1e-2, "the edit must actually move z"
    torch.testing.assert_close(edits["on"].z_edited, edits["off"].z_edited, rtol=0, atol=1e-5)
    assert torch.equal(edits["on"].steps_taken, edits["off"].steps_taken)


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
