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
- ``interpolate``: linear or spherical paths between two latents.
"""

from __future__ import annotations

import torch
from torch import nn

from .network import EditNet


def _unit(d: torch.Tensor) -> torch.Tensor:  # [..., D] -> same, unit rows
    return d / torch.linalg.vector_norm(d, dim=-1, keepdim=True).clamp_min(1e-12)


def boundary_directions(
    z: torch.Tensor,  # [N, D] sampled latents
    logits: torch.Tensor,  # [N, A] classifier logits for them
    l2: float = 1e-3,  # ridge strength: keeps the fit stable for rare attributes
    iters: int = 50,
) -> tuple[torch.Tensor, torch.Tensor]:  # unit normals [A, D], accuracy of each boundary [A]
    """Logistic-regression boundaries (one per attribute) on the classifier's decisions logits > 0."""
    labels = (logits > 0).to(torch.float64)  # [N, A]
    x = torch.cat([z.to(torch.float64), torch.ones(z.shape[0], 1, dtype=torch.float64)], dim=1)  # [N, D+1]
    w = torch.zeros(x.shape[1], labels.shape[1], dtype=torch.float64)  # [D+1, A]
    reg = torch.eye(x.shape[1], dtype=torch.float64) * l2 * x.shape[0]
    reg[-1, -1] = 0  # the intercept is not shrunk
    for _ in range(iters):  # Newton steps, one system per attribute
        p = torch.sigmoid(x @ w)  # [N, A]
        grad = x.T @ (p - labels) + reg @ w  # [D+1, A]
        s = p * (1 - p)  # [N, A]
        hess = torch.einsum("na,nd,ne->ade", s, x, x) + reg  # [A, D+1, D+1]
        step = torch.linalg.solve(hess, grad.T.unsqueeze(-1)).squeeze(-1).T  # [D+1, A]
        w = w - step
        if step.abs().max() < 1e-8:
            break
    accuracy = (((x @ w) > 0).to(torch.float64) == labels).to(torch.float64).mean(0)
    return _unit(w[:-1].T).to(z.dtype), accuracy.to(z.dtype)


def project_out(direction: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """``direction`` [D] minus its components in the span of ``others`` [K, D], unit length."""
    if others.numel() == 0:
        return _unit(direction)
    basis, _ = torch.linalg.qr(others.T.to(torch.float64))  # [D, K] orthonormal
    d = direction.to(torch.float64)
    return _unit(d - basis @ (basis.T @ d)).to(direction.dtype)


def _first_linear_map(net: EditNet) -> tuple[torch.Tensor, torch.Tensor]:
    """The generator's first layer as a matrix over z: weight [F, D] and bias [F] (BatchNorm folded)."""
    first = net.gen[0]
    if not isinstance(first, nn.ConvTranspose2d):
        raise TypeError(f"the generator's first layer is {type(first).__name__}, expected ConvTranspose2d")
    weight = first.weight[: net.z_dim]  # [D, C, k, k]: on a 1x1 input every output is linear in z
    matrix = weight.reshape(net.z_dim, -1).T  # [C*k*k, D]
    bias = first.bias.repeat_interleave(weight.shape[2] * weight.shape[3])
    return matrix, bias


def sefa_directions(net: EditNet, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` SeFa directions [k, D] and their eigenvalues [k], largest first."""
    matrix, _ = _first_linear_map(net)
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


def interpolate(z_a: torch.Tensor, z_b: torch.Tensor, steps: int, mode: str = "linear") -> torch.Tensor:
    """[steps, D] latents from ``z_a`` to ``z_b`` (both [D]); "slerp" keeps the norm typical of N(0, I)."""
    t = torch.linspace(0, 1, steps, dtype=z_a.dtype).unsqueeze(1)  # [steps, 1]
    if mode == "linear":
        return (1 - t) * z_a + t * z_b
    if mode != "slerp":
        raise ValueError(f"mode must be linear or slerp, got {mode!r}")
    a, b = _unit(z_a), _unit(z_b)
    omega = torch.arccos((a * b).sum().clamp(-1, 1))
    if omega.abs() < 1e-6:
        return (1 - t) * z_a + t * z_b
    return (torch.sin((1 - t) * omega) * z_a + torch.sin(t * omega) * z_b) / torch.sin(omega)


def apply_direction(z: torch.Tensor, direction: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """z [N, D] moved by each alpha [S] along ``direction`` [D] -> [N, S, D]."""
    return z.unsqueeze(1) + alphas.view(1, -1, 1) * _unit(direction).view(1, 1, -1)
