"""Direction edits: z + alpha * d, with d found from classifier scores, the generator's weights, or PCA.

- ``boundary_directions``: InterFaceGAN. Fit a linear boundary per attribute in z-space to the
  classifier's decisions on sampled latents; its unit normal is the attribute's direction.
- ``project_out``: conditional manipulation. Remove from a direction its components along other
  attributes' normals, so moving along it leaves those (linearly) alone. This is the direction-edit
  answer to entanglement, as the penalty is for gradient ascent.
- ``sefa_directions``: SeFa. The top eigenvectors of W^T W for the generator's first (linear in z)
  layer: the directions the generator is most sensitive to, found without any classifier.
- ``pca_directions``: GANSpace-style. Principal components of first-block activations over sampled
  latents, mapped back to z by least squares.
- ``axis_directions``: every coordinate of z as its own direction.
- ``interpolate``: linear or spherical paths between two latents; ``blend_classes`` between two classes.

Fitting against a classifier (sampling, scoring, scikit-learn's LinearSVC) is in ``direction_fit.py``;
the directions file (safetensors + JSON) in ``direction_file.py``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .network import EditNet


def _unit(d: torch.Tensor) -> torch.Tensor:  # [..., D] -> same, unit rows
    return d / torch.linalg.vector_norm(d, dim=-1, keepdim=True).clamp_min(1e-12)


def boundary_directions(
    z: torch.Tensor,  # [N, D] sampled latents
    logits: torch.Tensor,  # [N, A] classifier logits for them
    fraction: float = 0.02,  # top and bottom share of the samples kept per attribute (InterFaceGAN: 2%)
    train_split: float = 0.7,  # of the kept samples, the share the SVM is fitted on; the rest validates
    seed: int = 0,  # shuffles the kept samples before the split
    svm_c: float = 1.0,  # LinearSVC's C (inverse regularisation), InterFaceGAN's default
) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """InterFaceGAN boundaries: unit normals [A, D], intercepts [A] (signed distance = z . n + b) and per
    attribute the statistics (held-out and all-sample accuracy, samples used).

    Per attribute, the samples with the highest and the lowest logits (``fraction`` of N each) are the
    positives and negatives; a linear SVM (scikit-learn's LinearSVC, InterFaceGAN's choice) is fitted on
    ``train_split`` of them and validated on the rest, then judged on every sample against the
    classifier's own decision (logit > 0).
    """
    from sklearn.svm import LinearSVC  # the fit's only use of scikit-learn: imported when fitting

    x = z.detach().cpu().double().numpy()  # [N, D]
    scores = logits.detach().cpu().double().numpy()  # [N, A]
    n = x.shape[0]
    keep = max(2, int(n * fraction))
    if 2 * keep > n:
        raise ValueError(f"fraction {fraction} keeps {keep} top and {keep} bottom of only {n} samples")
    rng = np.random.default_rng(seed)
    normals, intercepts, stats = [], [], []
    for a in range(scores.shape[1]):
        order = np.argsort(scores[:, a], kind="stable")
        rows = np.concatenate([order[-keep:], order[:keep]])  # [2k] positives first
        labels = np.concatenate([np.ones(keep), np.zeros(keep)])
        shuffled = rng.permutation(2 * keep)
        rows, labels = rows[shuffled], labels[shuffled]
        cut = max(1, min(2 * keep - 1, int(round(2 * keep * train_split))))
        svm = LinearSVC(C=svm_c, dual="auto", max_iter=10_000, random_state=seed)
        svm.fit(x[rows[:cut]], labels[:cut])
        w, b = svm.coef_[0], float(svm.intercept_[0])
        norm = float(np.linalg.norm(w)) or 1.0
        normals.append(w / norm)
        intercepts.append(b / norm)
        distance = x @ (w / norm) + b / norm  # [N] signed distance to the boundary
        stats.append(
            {
                "accuracy_val": float(((x[rows[cut:]] @ w + b > 0) == (labels[cut:] > 0)).mean()),
                "accuracy_all": float(((distance > 0) == (scores[:, a] > 0)).mean()),
                "positives": keep,
                "negatives": keep,
                "train": cut,
                "val": 2 * keep - cut,
            }
        )
    return (
        torch.tensor(np.stack(normals), dtype=z.dtype),
        torch.tensor(intercepts, dtype=z.dtype),
        stats,
    )


def project_out(direction: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """InterFaceGAN's conditional manipulation: ``direction`` [D] with no component along any row of
    ``others`` [K, D], unit length.

    Solves (C C^T) x = C n, then n' = normalize(n - x^T C) (least squares, so repeated or dependent
    conditions are fine).
    """
    if others.numel() == 0:
        return _unit(direction)
    c = others.reshape(-1, direction.shape[-1]).to(torch.float64)  # [K, D]
    n = direction.to(torch.float64)  # [D]
    x = torch.linalg.lstsq(c @ c.T, (c @ n).unsqueeze(1)).solution.squeeze(1)  # [K]
    return _unit(n - x @ c).to(direction.dtype)


def axis_directions(z_dim: int) -> torch.Tensor:
    """Every coordinate of z as a direction: the identity [D, D] ("what does each dimension mean?")."""
    return torch.eye(z_dim)


def _first_linear_map(net: EditNet) -> tuple[torch.Tensor, torch.Tensor]:
    """The generator's first layer as a matrix over z: weight [F, D] and bias [F] (BatchNorm folded)."""
    first = net.gen[0]
    if not isinstance(first, nn.ConvTranspose2d):
        raise TypeError(f"the generator's first layer is {type(first).__name__}, expected ConvTranspose2d")
    weight = first.weight[: net.z_dim]  # [D, C, k, k]: on a 1x1 input every output is linear in z
    matrix = weight.reshape(net.z_dim, -1).T  # [C*k*k, D]
    bias = first.bias.repeat_interleave(weight.shape[2] * weight.shape[3])
    return matrix, bias


def sefa_directions(net: EditNet, k: int, column_normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` SeFa directions [k, D] and their eigenvalues [k], largest first.

    As SeFa does, each output feature's weights over z are first scaled to unit length
    (``column_normalize``), so a few large features do not decide alone. SeFa calls ``eig`` on the
    symmetric W^T W and keeps its order; ``eigh`` is the symmetric solver, sorted here by eigenvalue.
    """
    matrix, _ = _first_linear_map(net)  # [F, D]
    if column_normalize:
        matrix = _unit(matrix)
    values, vectors = torch.linalg.eigh((matrix.T @ matrix).to(torch.float64))  # ascending
    order = torch.argsort(values, descending=True)[:k]
    return vectors[:, order].T.to(matrix.dtype), values[order].to(matrix.dtype)


@torch.no_grad()
def pca_directions(
    net: EditNet, k: int, n_samples: int = 4096, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` directions [k, D] from PCA of first-block activations, and explained variance ratios [k]."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n_samples, net.z_dim, generator=g)  # [S, D]
    matrix, bias = _first_linear_map(net)
    feats = torch.relu(z @ matrix.T + bias)  # [S, F] the first block's output
    feats = feats - feats.mean(0)
    _, sing, v = torch.linalg.svd(feats.to(torch.float64), full_matrices=False)
    coords = feats.to(torch.float64) @ v[:k].T  # [S, k]
    # z-space direction whose movement best explains each component (least squares, GANSpace).
    dirs = torch.linalg.lstsq(z.to(torch.float64), coords).solution.T  # [k, D]
    ratio = sing[:k] ** 2 / (sing**2).sum()
    return _unit(dirs).to(z.dtype), ratio.to(z.dtype)


PATHS = ("lerp", "slerp")


def interpolate_at(z_a: torch.Tensor, z_b: torch.Tensor, t: torch.Tensor, path: str = "lerp") -> torch.Tensor:
    """Latents [N, F, D] from ``z_a`` to ``z_b`` (both [N, D]) at fractions ``t`` [F].

    "lerp" is the straight line. "slerp" turns the direction along the great circle and moves the norm
    linearly from |z_a| to |z_b|, so every frame keeps the norm typical of N(0, I) that a straight
    line between two samples loses in the middle. t = 0 and t = 1 give the endpoints bit for bit.
    """
    t = t.to(z_a.dtype).view(1, -1, 1)  # [1, F, 1]
    a, b = z_a.unsqueeze(1), z_b.unsqueeze(1)  # [N, 1, D]
    if path == "lerp":
        out = (1 - t) * a + t * b
    elif path == "slerp":
        norm_a = torch.linalg.vector_norm(a, dim=-1, keepdim=True)  # [N, 1, 1]
        norm_b = torch.linalg.vector_norm(b, dim=-1, keepdim=True)
        ua, ub = _unit(a), _unit(b)
        omega = torch.arccos((ua * ub).sum(-1, keepdim=True).clamp(-1, 1))  # [N, 1, 1]
        sin = torch.sin(omega)
        # Nearly parallel rows: the great circle is the line (and sin(omega) would divide by ~0).
        straight = sin.abs() < 1e-6
        safe = torch.where(straight, torch.ones_like(sin), sin)
        turned = (torch.sin((1 - t) * omega) * ua + torch.sin(t * omega) * ub) / safe
        turned = torch.where(straight, _unit((1 - t) * ua + t * ub), _unit(turned))
        out = ((1 - t) * norm_a + t * norm_b) * turned
    else:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    out = torch.where(t == 0, a, out)
    return torch.where(t == 1, b, out)


def blend_classes(
    labels: torch.Tensor, labels_to: torch.Tensor, t: torch.Tensor, n_classes: int
) -> torch.Tensor:
    """The class input of a conditional generator blended from ``labels`` [N] to ``labels_to`` [N] at
    fractions ``t`` [N]: (1 - t) * one_hot(label) + t * one_hot(label_to), [N, n_classes] float32, as in
    the course's C1W4A notebook (`--method interpolate`'s label_to, and the report that judges it)."""
    start = torch.nn.functional.one_hot(labels.long(), n_classes).float()
    end = torch.nn.functional.one_hot(labels_to.long(), n_classes).float()
    tt = t.float().unsqueeze(1)  # [N, 1]
    return (1 - tt) * start + tt * end


def interpolate(z_a: torch.Tensor, z_b: torch.Tensor, steps: int, mode: str = "lerp") -> torch.Tensor:
    """[steps, D] latents from ``z_a`` to ``z_b`` (both [D]), evenly spaced; ``mode`` as ``interpolate_at``."""
    mode = "lerp" if mode == "linear" else mode
    t = torch.linspace(0, 1, steps, dtype=z_a.dtype)
    return interpolate_at(z_a.unsqueeze(0), z_b.unsqueeze(0), t, mode)[0]


def apply_direction(z: torch.Tensor, direction: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """z [N, D] moved by each alpha [S] along ``direction`` [D] -> [N, S, D]."""
    return z.unsqueeze(1) + alphas.view(1, -1, 1) * _unit(direction).view(1, 1, -1)
