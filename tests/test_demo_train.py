"""Demo training: tiny runs that check the loop, the saved files, and that a resumed GAN run matches."""

from __future__ import annotations

import re

import torch

from zsteer.demo.procedural import ATTRIBUTES
from zsteer.demo.train import (
    DISCRIMINATOR_VIEW,
    ClassifierConfig,
    GanConfig,
    build_discriminator,
    main,
    random_crops,
    train_classifier,
    train_gan,
)
from zsteer.pipeline.checkpoints import load_classifier, load_generator
from zsteer.pipeline.models import ClassifierSpec

TINY_GAN = GanConfig(g_hidden=4, d_hidden=4, steps=4, batch=4)


def _trained_with_losses(cfg: ClassifierConfig, capsys) -> tuple[torch.nn.Module, ClassifierSpec, dict, list]:
    """train_classifier logging every step, and the loss of each step read back from its log lines."""
    capsys.readouterr()
    model, spec, info = train_classifier(cfg, "classifier", log_every=1)
    losses = [float(x) for x in re.findall(r"loss (\d+\.\d+)", capsys.readouterr().out)]
    assert len(losses) == cfg.steps
    return model, spec, info, losses


def test_classifier_loss_falls_and_is_deterministic(capsys):
    # 20 steps of batch 16 at width 4 take a fraction of a second; with fewer the batch noise is
    # larger than the fall.
    cfg = ClassifierConfig(hidden_dim=4, seed=1, steps=20, batch=16)
    a, spec, info, losses = _trained_with_losses(cfg, capsys)
    b, _, _, again = _trained_with_losses(cfg, capsys)
    assert spec.n_classes == len(ATTRIBUTES) and info["steps"] == 20
    assert not a.training
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first - 0.05, losses
    assert again == losses
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


def test_discriminator_has_no_batchnorm():
    d = build_discriminator(4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules())
    assert d(torch.zeros(3, 3, 64, 64)).shape == (3, 1)


def _pixels_seen(d: torch.nn.Module, size: int) -> torch.Tensor:
    """[size, size] bool: the input pixels the discriminator's logit depends on."""
    x = torch.randn(1, 3, size, size, requires_grad=True)
    d(x).sum().backward()
    return x.grad.abs().sum((0, 1)) > 0


def test_discriminator_sees_every_pixel_of_its_crops_and_crops_cover_the_image():
    d = build_discriminator(4)
    assert _pixels_seen(d, DISCRIMINATOR_VIEW).all()
    # On the whole 64x64 image the last rows and columns never reach the logit: the checkerboard border.
    assert not _pixels_seen(d, 64)[-1].any() and not _pixels_seen(d, 64)[:, -1].any()
    images = torch.arange(64.0 * 64).view(1, 1, 64, 64).expand(512, 1, 64, 64)
    crops = random_crops(images, DISCRIMINATOR_VIEW, torch.Generator().manual_seed(0))
    assert crops.shape == (512, 1, DISCRIMINATOR_VIEW, DISCRIMINATOR_VIEW)
    seen = torch.zeros(64 * 64, dtype=torch.bool)
    seen[crops.long().flatten()] = True
    assert seen.all()  # every pixel is in some crop of a batch
    # Each crop is a contiguous window of the image.
    top_left = crops[:, 0, 0, 0].long()
    row, col = top_left // 64, top_left % 64
    for k in range(0, 512, 97):
        window = images[k, 0, row[k] : row[k] + DISCRIMINATOR_VIEW, col[k] : col[k] + DISCRIMINATOR_VIEW]
        assert torch.equal(crops[k, 0], window)


def test_gan_resume_matches_uninterrupted(tmp_path):
    straight, _, _ = train_gan(TINY_GAN, log_every=1000)
    half = GanConfig(**{**TINY_GAN.__dict__, "steps": 2})
    train_gan(half, tmp_path, log_every=1000, save_every=1)
    resumed, _, info = train_gan(TINY_GAN, tmp_path, log_every=1000, save_every=1)
    assert info["steps"] == 4
    for (name, pa), pb in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=name)


def test_cli_writes_loadable_models(tmp_path):
    main(
        [
            "--out", str(tmp_path), "--classifier-steps", "1", "--judge-steps", "1", "--gan-steps", "1",
            "--gan-batch", "4", "--g-hidden", "4", "--d-hidden", "4",
        ]
    )  # fmt: skip
    gen = load_generator(tmp_path / "generator.safetensors")
    assert gen.spec.hidden_dim == 4 and gen.spec.z_dim == 64
    for role in ("classifier", "judge"):
        assert load_classifier(tmp_path / f"{role}.safetensors").attributes == ATTRIBUTES
    assert (tmp_path / "training_log.json").is_file()
