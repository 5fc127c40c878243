"""Finding directions against a generator and a classifier: ``fit_directions(generator, classifier, config)``.

The methods (pipeline/directions.py has the maths):

- ``boundary``: InterFaceGAN. Sample N latents, score them with the classifier, fit a linear SVM per
  attribute on the top and bottom ``fraction``; the unit normal and intercept are kept.
- ``gradient``: the mean of the normalised classifier gradients d logit_a / dz at sampled latents.
- ``sefa``: eigenvectors of the column-normalised first-layer weights (no classifier).
- ``pca``: GANSpace, principal components of first-block activations mapped back to z (no classifier).
- ``axis``: every coordinate of z (no classifier).

``judge_directions`` says which attributes each direction moves, judged on samples by any classifier (an
independent judge, so that an unsupervised direction is not described by what it was never fitted to).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch

from .ascent_loop import MIN_ROWS, pad_rows
from .checkpoints import LoadedModel
from .direction_file import DirectionSet
from .directions import _unit, axis_directions, boundary_directions, pca_directions, sefa_directions
from .generic_net import build_net
from .network import EditNet
from .probability import probabilities

METHODS = ("boundary", "gradient", "sefa", "pca", "axis")
# Samples per method when FitConfig.n_samples is None: the boundary keeps 2% top and bottom, so 20,000
# samples give it 400 + 400 per attribute (InterFaceGAN keeps 2% too); gradients cost a backward each.
DEFAULT_SAMPLES = {"boundary": 20_000, "gradient": 2048, "pca": 4096, "sefa": 0, "axis": 0}


@dataclass(frozen=True)
class FitConfig:
    """How `zsteer directions fit` finds directions; recorded in the file's sidecar."""

    # One of METHODS.
    method: str = "boundary"
    # Latents sampled (boundary, gradient, pca); None = DEFAULT_SAMPLES[method].
    n_samples: int | None = None
    # Boundary: the top and bottom share of the samples kept per attribute (InterFaceGAN: 2%).
    fraction: float = 0.02
    # Boundary: the share of the kept samples the SVM is fitted on; the rest is held out.
    train_split: float = 0.7
    # Boundary: LinearSVC's C.
    svm_c: float = 1.0
    # Seeds the latents, the labels of a conditional generator and the train/held-out split.
    seed: int = 0
    # Boundary, gradient: the attributes to fit (empty = every attribute of the classifier).
    attributes: tuple[str, ...] = ()
    # sefa, pca: directions kept, at most z_dim (None = z_dim for sefa, min(10, z_dim) for pca).
    k: int | None = None
    # Directions of this fit every direction is made orthogonal to (conditional manipulation).
    conditions: tuple[str, ...] = ()
    # Latents scored at a time (memory only).
    batch_size: int = 512

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if not 0 < self.fraction < 0.5:
            raise ValueError(f"fraction must be in (0, 0.5), got {self.fraction}")
        if not 0 < self.train_split < 1:
            raise ValueError(f"train_split must be in (0, 1), got {self.train_split}")
        if self.n_samples is not None and self.n_samples < 2:
            raise ValueError(f"n_samples must be >= 2, got {self.n_samples}")
        if self.attributes and self.conditions:  # refused before the fit's minutes, not after
            _check_not_self_conditioned(self.attributes, self.conditions)

    @property
    def samples(self) -> int:
        return DEFAULT_SAMPLES[self.method] if self.n_samples is None else self.n_samples


def _check_not_self_conditioned(names: tuple[str, ...], conditions: tuple[str, ...]) -> None:
    """ValueError when conditioning would change no direction: each is only conditioned on itself."""
    if all(set(conditions) <= {name} for name in names):
        raise ValueError(
            f"--condition {','.join(conditions)}: a direction cannot be made orthogonal to itself, "
            f"and this fit has no other direction ({', '.join(names)})"
        )


def _model_doc(model: LoadedModel) -> dict:
    """As job.json records a model (jobs/identity.py): fingerprint and spec."""
    return {"fingerprint": model.fingerprint, "spec": model.spec.to_dict()}


def sample_latents(net: EditNet, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """z [n, D] ~ N(0, I) and, for a conditional generator, uniform labels [n]; from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, net.z_dim, generator=g)
    labels = torch.randint(0, net.n_labels, (n,), generator=g) if net.n_labels else None
    return z, labels


def _batches(
    z: torch.Tensor, labels: torch.Tensor | None, batch: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, int]]:
    """(z [b, D], labels [b] or None, m): ``batch`` rows at a time, each padded to at least MIN_ROWS rows
    (of which the first m are real), as the engine runs them, so a row's bits do not depend on ``batch``."""
    for s in range(0, z.shape[0], batch):
        zb = z[s : s + batch]
        m = zb.shape[0]
        size = max(m, MIN_ROWS)
        yield pad_rows(zb, size), pad_rows(None if labels is None else labels[s : s + batch], size), m


@torch.no_grad()
def score_latents(net: EditNet, z: torch.Tensor, labels: torch.Tensor | None, batch: int) -> torch.Tensor:
    """Classifier logits [N, A] of latents z [N, D], ``batch`` at a time."""
    return torch.cat(
        [net(net.latent_input(zb, lab))[:m].float() for zb, lab, m in _batches(z, labels, batch)]
    )


def gradient_directions(
    net: EditNet, z: torch.Tensor, labels: torch.Tensor | None, attributes: list[int], batch: int
) -> torch.Tensor:
    """Per attribute, the mean over z [N, D] of the unit gradients d logit_a / dz -> unit rows [len, D].

    The sum runs in float64 by batches and ends as float32: how ``batch`` groups it moves the float64 sum by
    about 1e-16, which the float32 result keeps only where it sits on a rounding boundary."""
    total = torch.zeros(len(attributes), net.z_dim, dtype=torch.float64)
    for zb, lab, m in _batches(z, labels, batch):
        zb = zb.clone().requires_grad_(True)
        with torch.enable_grad():
            logits = net(net.latent_input(zb, lab))[:m]  # [m, A]
            for i, a in enumerate(attributes):
                (grad,) = torch.autograd.grad(logits[:, a].sum(), zb, retain_graph=i + 1 < len(attributes))
                total[i] += _unit(grad[:m].double()).sum(0)
    return _unit(total).float()


def _attribute_indices(classifier: LoadedModel, names: tuple[str, ...]) -> list[int]:
    known = list(classifier.attributes)
    missing = [n for n in names if n not in known]
    if missing:
        raise ValueError(f"unknown attribute {missing[0]!r}; the classifier has: {', '.join(known)}")
    return [known.index(n) for n in names] if names else list(range(len(known)))


def fit_directions(generator: LoadedModel, classifier: LoadedModel, config: FitConfig) -> DirectionSet:
    """Find directions by ``config.method``; the result records models, seed, settings and timings."""
    net = build_net(generator, classifier, fast=True)  # EditNet, or ModelNet for imported models
    d, nan = net.z_dim, float("nan")
    seconds: dict[str, float] = {}
    values, stats = None, None
    t0 = time.perf_counter()
    if config.method in ("boundary", "gradient"):
        chosen = _attribute_indices(classifier, config.attributes)
        names = tuple(classifier.attributes[a] for a in chosen)
        attributes: tuple[str | None, ...] = names
        z, labels = sample_latents(net, config.samples, config.seed)
        if config.method == "boundary":
            logits = score_latents(net, z, labels, config.batch_size)[:, chosen]  # [N, a]
            seconds["sample"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            vectors, intercepts, stats = boundary_directions(
                z, logits, config.fraction, config.train_split, config.seed, config.svm_c
            )
            seconds["fit"] = time.perf_counter() - t1
        else:
            vectors = gradient_directions(net, z, labels, chosen, config.batch_size)
            intercepts = torch.full((len(chosen),), nan)
            seconds["sample_and_fit"] = time.perf_counter() - t0
    else:
        if config.k is not None and config.k > d and config.method in ("sefa", "pca"):
            raise ValueError(f"--k {config.k}: at most z_dim={d} directions in a {d}-dimensional z-space")
        if config.method == "sefa":
            if not isinstance(net, EditNet):
                raise ValueError(
                    "sefa factorises the course generator's first layer; an imported generator's graph has no "
                    "such layer to read (use boundary, gradient or axis)"
                )
            vectors, values = sefa_directions(net, config.k or d)
            names = tuple(f"sefa{i}" for i in range(len(vectors)))
            stats = [{"eigenvalue": float(v)} for v in values]
        elif config.method == "pca":
            if not isinstance(net, EditNet):
                raise ValueError(
                    "pca reads the course generator's first block; an imported generator's graph has no such "
                    "block to read (use boundary, gradient or axis)"
                )
            vectors, values = pca_directions(net, config.k or min(10, d), config.samples, config.seed)
            names = tuple(f"pc{i}" for i in range(len(vectors)))
            stats = [{"explained_variance": float(v)} for v in values]
        else:
            vectors = axis_directions(d)
            names = tuple(f"z{i}" for i in range(d))
        attributes = (None,) * len(names)
        intercepts = torch.full((len(names),), nan)
        seconds["fit"] = time.perf_counter() - t0
    result = DirectionSet(
        method=config.method, names=names, vectors=vectors.float(), intercepts=intercepts.float(),
        attributes=attributes, stats=tuple(stats or ({} for _ in names)), values=values,
        info={
            "models": {"generator": _model_doc(generator), "classifier": _model_doc(classifier)},
            "seed": config.seed,
            "n_samples": config.samples if config.method not in ("sefa", "axis") else 0,
            "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()},
            "seconds": {k: round(v, 3) for k, v in seconds.items()},
        },
    )  # fmt: skip
    if config.conditions:
        missing = [c for c in config.conditions if c not in names]
        if missing:
            raise ValueError(f"--condition {missing[0]}: not a direction of this fit ({', '.join(names)})")
        _check_not_self_conditioned(names, config.conditions)
        result = result.with_conditions(config.conditions)
    return result


@torch.no_grad()
def judge_directions(
    generator: LoadedModel,
    judge: LoadedModel,
    vectors: torch.Tensor,  # [K, D] unit directions
    n: int = 128,  # latents per direction
    alpha: float = 3.0,  # how far each latent is moved
    seed: int = 0,
    batch: int = 512,
) -> torch.Tensor:
    """[K, A] mean change of the judge's probability of each attribute when latents move by ``alpha``
    along each direction: which attributes a direction moves, and how strongly."""
    net = build_net(generator, judge, fast=True)
    z, labels = sample_latents(net, n, seed)
    before = probabilities(score_latents(net, z, labels, batch))  # [n, A]
    out = []
    for v in vectors:
        moved = probabilities(score_latents(net, z + alpha * v, labels, batch))
        out.append((moved - before).mean(0))
    return torch.stack(out)
