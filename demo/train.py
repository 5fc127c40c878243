"""Train the demo models on the procedural data set, on CPU, reproducibly from a seed.

    python -m zsteer.demo.train --out demo/weights                 # all three, one after another
    python -m zsteer.demo.train --out demo/weights --only gan --state /tmp/gan   # one, resumable

Three models, all course architectures (``zsteer.pipeline.models``):

- ``classifier``: the course classifier, one logit per attribute, BCE-with-logits; the model users steer with.
- ``judge``: a second classifier of another width, trained from another seed on other batches; used only to
  score edits, so an edit that fools the steering classifier without changing the image is not counted.
- ``generator``: the course generator (z_dim 64), trained as a DCGAN against a discriminator of the
  course-classifier architecture (one logit, spectral norm instead of BatchNorm), non-saturating loss,
  Adam 2e-4 (0.5, 0.999). The saved weights are an exponential moving average of the generator's, with
  BatchNorm statistics recomputed at the end.

Every random draw is keyed by (seed, step), so a run resumed from ``--state`` continues exactly as an
uninterrupted one would (bit-exactness still depends on the torch build and thread count).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from zsteer.pipeline.checkpoints import save_model
from zsteer.pipeline.models import (
    ClassifierSpec,
    CourseClassifier,
    GeneratorSpec,
    build_classifier,
    build_generator,
)

from .procedural import ATTRIBUTES, make_batch

# Disjoint ranges of data seeds, so no model sees another's batches or the evaluation images.
DATA_SEEDS = {"classifier": 1_000_000, "judge": 2_000_000, "gan": 3_000_000, "eval": 9_000_000}
LOG_NAME = "training_log.json"
# The crops' random draws use seed + this, apart from the latents' draws (seed) and BatchNorm's (seed + 7).
CROP_SEED_OFFSET = 11


@dataclass
class ClassifierConfig:
    hidden_dim: int
    seed: int
    steps: int = 800
    batch: int = 128
    lr: float = 1e-3


@dataclass
class GanConfig:
    g_hidden: int = 32
    d_hidden: int = 32
    z_dim: int = 64
    seed: int = 0
    steps: int = 6000
    batch: int = 32
    lr: float = 2e-4
    ema: float = 0.995


# The shipped weights were trained with these defaults (demo/weights/training_log.json).
CLASSIFIER = ClassifierConfig(hidden_dim=32, seed=1, steps=800)
JUDGE = ClassifierConfig(hidden_dim=16, seed=2, steps=600)


def course_init(module: nn.Module) -> None:
    """The course's ``weights_init``: N(0, 0.02) convolutions, N(1, 0.02) BatchNorm scales, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        if isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def build_discriminator(hidden_dim: int) -> nn.Module:
    """The course classifier with one logit, BatchNorm replaced by spectral normalisation of every conv.

    With BatchNorm (the course's discriminator) and the smooth procedural images, the discriminator won
    within a few hundred steps and the generator never recovered; a spectrally normalised one stays
    Lipschitz, so its gradients keep telling the generator where the data is.
    """
    d = CourseClassifier(im_chan=3, n_classes=1, hidden_dim=hidden_dim)
    for m in list(d.modules()):
        if isinstance(m, nn.Sequential):
            for i, layer in enumerate(m):
                if isinstance(layer, nn.BatchNorm2d):
                    m[i] = nn.Identity()
                elif isinstance(layer, nn.Conv2d):
                    m[i] = nn.utils.parametrizations.spectral_norm(layer)
    return d


def _rng(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


# The side of the square the discriminator sees whole. Its unpadded convolutions (kernel 4, strides
# 2, 2, 3, 2) read only pixels 0..57 of a 64x64 image: the last 6 rows and columns never reached its
# logit, so the generator got no gradient there and drew a noisy checkerboard border on the right and
# bottom edges. 58 is the size the four layers tile exactly (58 -> 28 -> 13 -> 4 -> 1).
DISCRIMINATOR_VIEW = 58


def random_crops(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """One random ``size`` x ``size`` crop per image (differentiable): [B, C, H, W] -> [B, C, size, size].

    Fed to the discriminator, every pixel of the generator's image is seen in some crop of most batches
    (translation augmentation, as DiffAugment does for real and fake alike).
    """
    b, c, h, w = images.shape
    dy = torch.randint(0, h - size + 1, (b,), generator=generator)  # [B]
    dx = torch.randint(0, w - size + 1, (b,), generator=generator)  # [B]
    span = torch.arange(size)
    rows = (dy[:, None] + span)[:, None, :, None]  # [B, 1, size, 1]
    cols = (dx[:, None] + span)[:, None, None, :]  # [B, 1, 1, size]
    return images[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


def fit_attributes(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    steps: int,
    batch: int,
    data_seed: int,
    name: str,
    log_every: int = 100,
) -> None:
    """The demo's one attribute-classifier loop: ``steps`` steps of BCE-with-logits on procedural batches
    (batch ``data_seed + step``: disjoint seed ranges keep the models' data apart), the learning rate decayed
    to zero on a cosine; the model is left in eval mode. The course classifiers (``train_classifier``) and
    the ResNet judge (demo/resnet_judge.py) both train with it; ``log_every`` 0 logs nothing."""
    # Cosine decay to zero: the last steps average out batch noise, which is what lifts the rarer attributes
    # above 95% accuracy.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    start = time.perf_counter()
    model.train()
    for step in range(steps):
        images, labels = make_batch(batch, data_seed + step)  # [B, 3, 64, 64], [B, A]
        loss = F.binary_cross_entropy_with_logits(model(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log_every and ((step + 1) % log_every == 0 or step == 0):
            rate = (step + 1) / (time.perf_counter() - start)
            print(f"[{name}] step {step + 1}/{steps} loss {loss.item():.4f} ({rate:.2f} steps/s)", flush=True)
    model.eval()


def train_classifier(
    cfg: ClassifierConfig, role: str, log_every: int = 100
) -> tuple[nn.Module, ClassifierSpec, dict]:
    """Train one attribute classifier; returns (eval-mode module, spec, info for the log)."""
    torch.manual_seed(cfg.seed)
    spec = ClassifierSpec(n_classes=len(ATTRIBUTES), hidden_dim=cfg.hidden_dim)
    model = build_classifier(spec)
    course_init(model)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    start = time.perf_counter()
    fit_attributes(model, opt, cfg.steps, cfg.batch, DATA_SEEDS[role] + cfg.seed * 100_000, role, log_every)
    info = {
        "steps": cfg.steps,
        "batch": cfg.batch,
        "lr": cfg.lr,
        "seed": cfg.seed,
        "hidden_dim": cfg.hidden_dim,
    }
    info["seconds"] = round(time.perf_counter() - start, 1)
    info["threads"] = torch.get_num_threads()
    return model, spec, info


def _gan_state(g, d, g_ema, opt_g, opt_d, step: int, seconds: float) -> dict:
    return {
        "g": g.state_dict(),
        "d": d.state_dict(),
        "g_ema": g_ema.state_dict(),
        "opt_g": opt_g.state_dict(),
        "opt_d": opt_d.state_dict(),
        "step": step,
        "seconds": seconds,
    }


@torch.no_grad()
def recalibrate_batchnorm(gen: nn.Module, z_dim: int, seed: int, batches: int = 32, batch: int = 256) -> None:
    """Replace the running BatchNorm statistics with their exact average over fresh z batches.

    The EMA generator's weights were never run in train mode, so its running statistics belong to no set
    of weights; the loaded model is used in eval mode, where these statistics decide the images.
    """
    bns = [m for m in gen.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    gen.train()
    for i in range(batches):
        gen(torch.randn(batch, z_dim, generator=_rng(seed + 7, i)))
    for m in bns:
        m.momentum = 0.1
    gen.eval()


def train_gan(cfg: GanConfig, state_dir: Path | None = None, log_every: int = 50, save_every: int = 250):
    """Train the generator as a GAN; returns (eval-mode EMA generator, spec, info for the log)."""
    torch.manual_seed(cfg.seed)
    spec = GeneratorSpec(z_dim=cfg.z_dim, hidden_dim=cfg.g_hidden)
    g = build_generator(spec)
    d = build_discriminator(cfg.d_hidden)
    course_init(g)
    # The course init leaves the last layer of a narrow generator so small that its images are grey
    # (pre-tanh std ~0.14 at hidden 32), and Adam at 2e-4 takes thousands of steps to grow it; start
    # it at about half unit gain instead: std 0.5/sqrt(effective fan-in), 0.044 at hidden 32.
    last = g.gen[-1][0]
    fan_in = last.in_channels * (last.kernel_size[0] // last.stride[0]) ** 2
    nn.init.normal_(last.weight, 0.0, 0.5 * fan_in**-0.5)
    g_ema = copy.deepcopy(g)
    for p in g_ema.parameters():
        p.requires_grad_(False)
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    first, spent = 0, 0.0
    state_path = state_dir / "gan_state.pt" if state_dir else None
    if state_path and state_path.is_file():
        state = torch.load(state_path, weights_only=True)
        g.load_state_dict(state["g"])
        d.load_state_dict(state["d"])
        g_ema.load_state_dict(state["g_ema"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        first, spent = state["step"], state["seconds"]
        if first > cfg.steps:
            raise SystemExit(f"{state_path} is at step {first}, past --gan-steps {cfg.steps}")
        print(f"[gan] resumed at step {first} ({spent:.0f} s spent)", flush=True)

    ones, zeros = torch.ones(cfg.batch, 1), torch.zeros(cfg.batch, 1)
    start = time.perf_counter() - spent
    g.train()
    d.train()
    for step in range(first, cfg.steps):
        real, _ = make_batch(cfg.batch, DATA_SEEDS["gan"] + cfg.seed * 100_000 + step)  # [B, 3, 64, 64]
        z = torch.randn(cfg.batch, cfg.z_dim, generator=_rng(cfg.seed, step))  # [B, z_dim]
        fake = g(z)

        # The discriminator sees random crops it covers whole (DISCRIMINATOR_VIEW), so no pixel is blind.
        crops = _rng(cfg.seed + CROP_SEED_OFFSET, step)
        real = random_crops(real, DISCRIMINATOR_VIEW, crops)  # [B, 3, 58, 58]
        fake_seen = random_crops(fake, DISCRIMINATOR_VIEW, crops)  # [B, 3, 58, 58]

        # Discriminator: real and fake in separate forward passes, as in the course (BatchNorm sees one kind).
        loss_d = 0.5 * (
            F.binary_cross_entropy_with_logits(d(real), ones)
            + F.binary_cross_entropy_with_logits(d(fake_seen.detach()), zeros)
        )
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()

        # Generator: non-saturating loss, -log D(G(z)).
        loss_g = F.binary_cross_entropy_with_logits(d(fake_seen), ones)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()

        with torch.no_grad():
            # Warm up the average: early weights are noise and should not linger in it.
            decay = min(cfg.ema, (1 + step) / (10 + step))
            for pe, p in zip(g_ema.parameters(), g.parameters(), strict=True):
                pe.lerp_(p, 1 - decay)
            for be, b in zip(g_ema.buffers(), g.buffers(), strict=True):
                be.copy_(b)

        done = step + 1
        if done % log_every == 0 or step == first:
            elapsed = time.perf_counter() - start
            print(
                f"[gan] step {done}/{cfg.steps} loss_d {loss_d.item():.3f} loss_g {loss_g.item():.3f} "
                f"({elapsed:.0f} s, {elapsed / done:.3f} s/step)",
                flush=True,
            )
        if state_path and (done % save_every == 0 or done == cfg.steps):
            state_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = state_path.with_suffix(".tmp")
            torch.save(_gan_state(g, d, g_ema, opt_g, opt_d, done, time.perf_counter() - start), tmp)
            tmp.replace(state_path)  # atomic: a kill mid-save leaves the previous state
            if done % 1000 == 0:  # snapshots, to finish a run early at a round number of steps
                torch.save(torch.load(state_path, weights_only=True), state_dir / f"gan_state_{done}.pt")

    seconds = time.perf_counter() - start
    recalibrate_batchnorm(g_ema, cfg.z_dim, cfg.seed)
    info = {
        "steps": cfg.steps,
        "batch": cfg.batch,
        "lr": cfg.lr,
        "seed": cfg.seed,
        "hidden_dim": cfg.g_hidden,
        "discriminator": "course classifier, 1 logit, spectral norm, no BatchNorm, random 58x58 crops",
        "discriminator_hidden_dim": cfg.d_hidden,
        "ema": cfg.ema,
        "seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
    }
    return g_ema, spec, info


def generator_from_state(state_path: Path, cfg: GanConfig) -> nn.Module:
    """The EMA generator of a saved GAN state, BatchNorm recalibrated (for checking a run in progress)."""
    g = build_generator(GeneratorSpec(z_dim=cfg.z_dim, hidden_dim=cfg.g_hidden))
    g.load_state_dict(torch.load(state_path, weights_only=True)["g_ema"])
    recalibrate_batchnorm(g, cfg.z_dim, cfg.seed)
    return g


def _record(out: Path, name: str, info: dict) -> None:
    path = out / LOG_NAME
    log = json.loads(path.read_text()) if path.is_file() else {}
    log[name] = info
    path.write_text(json.dumps(log, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m zsteer.demo.train", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "weights")
    ap.add_argument("--only", choices=("all", "classifier", "judge", "gan"), default="all")
    ap.add_argument("--classifier-steps", type=int, default=CLASSIFIER.steps)
    ap.add_argument("--judge-steps", type=int, default=JUDGE.steps)
    ap.add_argument("--gan-steps", type=int, default=GanConfig.steps)
    ap.add_argument("--gan-batch", type=int, default=GanConfig.batch)
    ap.add_argument("--g-hidden", type=int, default=GanConfig.g_hidden)
    ap.add_argument("--d-hidden", type=int, default=GanConfig.d_hidden)
    ap.add_argument(
        "--ema", type=float, default=GanConfig.ema, help="decay of the generator's weight average"
    )
    ap.add_argument("--seed", type=int, default=0, help="GAN seed (the classifiers use seeds 1 and 2)")
    ap.add_argument("--state", type=Path, default=None, help="folder for resumable GAN state")
    # One thread: on the shared 2-core machine a 2-thread GAN step took 3.6 s against 0.8 s with one, as
    # OpenMP threads spin-wait for each other whenever another process holds a core.
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    if args.only in ("all", "classifier"):
        cfg = ClassifierConfig(CLASSIFIER.hidden_dim, CLASSIFIER.seed, args.classifier_steps)
        model, spec, info = train_classifier(cfg, "classifier")
        save_model(model, spec, args.out / "classifier.safetensors", ATTRIBUTES, half=True)
        _record(args.out, "classifier", info)
    if args.only in ("all", "judge"):
        cfg = ClassifierConfig(JUDGE.hidden_dim, JUDGE.seed, args.judge_steps)
        model, spec, info = train_classifier(cfg, "judge")
        save_model(model, spec, args.out / "judge.safetensors", ATTRIBUTES, half=True)
        _record(args.out, "judge", info)
    if args.only in ("all", "gan"):
        cfg = GanConfig(
            g_hidden=args.g_hidden,
            d_hidden=args.d_hidden,
            seed=args.seed,
            steps=args.gan_steps,
            batch=args.gan_batch,
            ema=args.ema,
        )
        model, spec, info = train_gan(cfg, args.state)
        save_model(model, spec, args.out / "generator.safetensors", half=True)
        _record(args.out, "generator", info)


if __name__ == "__main__":
    main()
