"""Direction edits: boundaries, projections, SeFa, PCA and interpolation."""

from __future__ import annotations

import pytest
import torch

from zsteer.pipeline.directions import (
    apply_direction,
    boundary_directions,
    interpolate,
    pca_directions,
    project_out,
    sefa_directions,
)
from zsteer.pipeline.network import EditNet


@pytest.fixture(scope="module")
def net(unit_gain_models):
    return EditNet(*unit_gain_models)


def test_boundaries_recover_planted_directions():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2000, 12, generator=g)
    truth = torch.nn.functional.normalize(torch.randn(3, 12, generator=g), dim=1)
    logits = z @ truth.T * 4 + 0.3
    normals, intercepts, stats = boundary_directions(z, logits, fraction=0.2)
    cosine = (normals * truth).sum(1)
    assert (cosine > 0.95).all() and all(s["accuracy_val"] > 0.97 for s in stats)
    assert intercepts.shape == (3,)


def test_projection_leaves_other_attributes_alone():
    g = torch.Generator().manual_seed(1)
    d, others = torch.randn(10, generator=g), torch.randn(3, 10, generator=g)
    p = project_out(d, others)
    torch.testing.assert_close(others @ p, torch.zeros(3), atol=1e-6, rtol=0)
    assert abs(p.norm() - 1) < 1e-6 and (p @ d) > 0


def test_sefa_directions_are_the_generators_most_sensitive(net):
    dirs, values = sefa_directions(net, 4, column_normalize=False)
    assert dirs.shape == (4, 16) and (values[:-1] >= values[1:]).all()
    torch.testing.assert_close(dirs @ dirs.T, torch.eye(4), atol=1e-5, rtol=0)
    # moving along the top direction changes the first layer more than a random unit direction
    first = net.gen[0]

    def change(d):
        x = d.view(1, 16, 1, 1)
        return first(x).sub(first(torch.zeros_like(x))).norm()

    random = torch.nn.functional.normalize(torch.randn(16, generator=torch.Generator().manual_seed(2)), dim=0)
    assert change(dirs[0]) > change(random)
    assert change(dirs[0]) ** 2 == pytest.approx(float(values[0]), rel=1e-4)


def test_pca_directions_are_unit_and_ordered(net):
    dirs, ratio = pca_directions(net, 3, n_samples=512)
    assert dirs.shape == (3, 16) and (ratio[:-1] >= ratio[1:]).all() and ratio.sum() <= 1
    torch.testing.assert_close(dirs.norm(dim=1), torch.ones(3))


def test_interpolation_ends_and_norms():
    a, b = torch.randn(8), torch.randn(8)
    for mode in ("linear", "slerp"):
        path = interpolate(a, b, 5, mode)
        torch.testing.assert_close(path[0], a)
        torch.testing.assert_close(path[-1], b, atol=1e-5, rtol=1e-5)
    moved = apply_direction(torch.zeros(2, 8), torch.ones(8), torch.tensor([0.0, 2.0]))
    assert moved.shape == (2, 2, 8) and abs(moved[0, 1].norm() - 2) < 1e-6
    with pytest.raises(ValueError):
        interpolate(a, b, 3, "cubic")
