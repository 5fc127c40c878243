"""Direction edits: boundaries, projections, SeFa, PCA and interpolation."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from zsteer.core.errors import ZsteerError
from zsteer.pipeline.direction_file import (
    DirectionSet,
    directions_fingerprint,
    load_directions,
    save_directions,
)
from zsteer.pipeline.directions import (
    apply_direction,
    boundary_directions,
    interpolate,
    interpolate_at,
    pca_directions,
    project_out,
    sefa_directions,
)
from zsteer.pipeline.network import EditNet


@pytest.fixture(scope="module")
def net(unit_gain_models):
    return EditNet(*unit_gain_models)


def test_boundaries_recover_planted_directions():
    """Labels from known hyperplanes plus noise: the LinearSVC normals are within 0.05 in cosine."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4000, 12, generator=g)
    truth = torch.nn.functional.normalize(torch.randn(3, 12, generator=g), dim=1)
    logits = z @ truth.T * 4 + 0.3 + 0.5 * torch.randn(4000, 3, generator=g)
    normals, intercepts, stats = boundary_directions(z, logits, fraction=0.1)
    cosine = (normals * truth).sum(1)
    assert (cosine > 0.95).all(), cosine
    assert all(s["accuracy_val"] > 0.95 and s["positives"] == 400 and s["val"] == 240 for s in stats)
    assert all(s["accuracy_all"] > 0.8 for s in stats)
    distance = z @ normals.T + intercepts  # signed distance: positive on the attribute's side
    assert ((distance > 0) == (logits > 0)).float().mean() > 0.8


def test_projection_leaves_other_attributes_alone():
    g = torch.Generator().manual_seed(1)
    d, others = torch.randn(10, generator=g), torch.randn(3, 10, generator=g)
    p = project_out(d, others)
    torch.testing.assert_close(others @ p, torch.zeros(3), atol=1e-6, rtol=0)
    assert abs(p.norm() - 1) < 1e-6 and (p @ d) > 0
    dependent = torch.cat([others, others[:1] + 2 * others[1:2]])  # a repeated span: still solvable
    q = project_out(d, dependent)
    assert (dependent @ q).abs().max() < 1e-6 and torch.allclose(p, q, atol=1e-6)


def test_conditioning_a_direction_set_keeps_its_boundaries():
    g = torch.Generator().manual_seed(3)
    vectors = torch.nn.functional.normalize(torch.randn(4, 16, generator=g), dim=1)
    found = DirectionSet(
        method="boundary", names=("a", "b", "c", "d"), vectors=vectors, intercepts=torch.tensor([0.1, 0.2, 0.3, 0.4]),
        attributes=("a", "b", "c", "d"), stats=({},) * 4,
    )  # fmt: skip
    conditioned = found.with_conditions(("b", "c"))
    for name in ("a", "d"):
        v = conditioned.vectors[found.index(name)]
        assert (conditioned.vectors[1:3] @ v).abs().max() < 1e-6
    assert conditioned.stats[0]["conditioned_on"] == ["b", "c"] and conditioned.stats[1][
        "conditioned_on"
    ] == ["c"]
    normal, offset = conditioned.boundary("a")
    assert torch.equal(normal, vectors[0]) and offset == pytest.approx(0.1)


def test_sefa_on_a_linear_first_layer_with_a_known_spectrum():
    """First layer weights U diag(s) V^T: eigh of W^T W gives s^2 largest first, with V's columns."""
    g = torch.Generator().manual_seed(4)
    d, c = 6, 4
    u, _ = torch.linalg.qr(torch.randn(c * 16, d, generator=g, dtype=torch.float64))  # [F, D] orthonormal
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    spectrum = torch.tensor([0.5, 3.0, 1.0, 5.0, 2.0, 4.0], dtype=torch.float64)  # known, unsorted
    matrix = u @ torch.diag(spectrum) @ v.T  # [F, D]
    layer = torch.nn.ConvTranspose2d(d, c, 4, bias=True)
    with torch.no_grad():
        layer.weight.copy_(matrix.T.reshape(d, c, 4, 4).float())
    fake = SimpleNamespace(gen=[layer], z_dim=d)
    dirs, values = sefa_directions(fake, d, column_normalize=False)
    order = torch.argsort(spectrum, descending=True)
    torch.testing.assert_close(values.double(), spectrum[order] ** 2, rtol=1e-4, atol=1e-4)
    cosine = (dirs.double() * v[:, order].T).sum(1).abs()
    assert (cosine > 1 - 1e-4).all(), "each eigenvector is V's column of that singular value"
    dirs, values = sefa_directions(fake, d)  # column-normalised, as SeFa does
    assert (values[:-1] >= values[1:]).all()
    rows = torch.nn.functional.normalize(matrix, dim=1)
    expect = torch.linalg.eigvalsh(rows.T @ rows).flip(0)
    torch.testing.assert_close(values.double(), expect, rtol=1e-4, atol=1e-4)


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
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(8, generator=g), 2 * torch.randn(8, generator=g)
    for mode in ("lerp", "slerp"):
        path = interpolate(a, b, 5, mode)
        assert torch.equal(path[0], a) and torch.equal(path[-1], b), "endpoints bit for bit"
    t = torch.linspace(0, 1, 7)
    za, zb = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g) * 3
    frames = interpolate_at(za, zb, t, "slerp")  # [3, 7, 8]
    norms = (1 - t) * za.norm(dim=1, keepdim=True) + t * zb.norm(dim=1, keepdim=True)
    torch.testing.assert_close(frames.norm(dim=2), norms, rtol=1e-5, atol=1e-5)  # slerp keeps norms
    assert (interpolate_at(za, zb, t, "lerp")[:, 3].norm(dim=1) < norms[:, 3]).all(), "a straight line sags"
    parallel = interpolate_at(za[:1], 2 * za[:1], t, "slerp")
    assert torch.isfinite(parallel).all()
    moved = apply_direction(torch.zeros(2, 8), torch.ones(8), torch.tensor([0.0, 2.0]))
    assert moved.shape == (2, 2, 8) and abs(moved[0, 1].norm() - 2) < 1e-6
    with pytest.raises(ValueError):
        interpolate(a, b, 3, "cubic")


def test_a_directions_file_round_trips_and_refuses_what_it_is_not(tmp_path):
    found = DirectionSet(
        method="sefa", names=("s0", "s1"), vectors=torch.eye(2, 4), intercepts=torch.full((2,), float("nan")),
        attributes=(None, None), stats=({"eigenvalue": 2.0}, {"eigenvalue": 1.0}), values=torch.tensor([2.0, 1.0]),
        info={"seed": 3},
    )  # fmt: skip
    path = save_directions(found, tmp_path / "d")
    back = load_directions(tmp_path / "d.json")
    assert torch.equal(back.vectors, found.vectors) and back.names == found.names and back.info["seed"] == 3
    assert torch.equal(back.values, found.values) and not back.has_boundary("s0")
    fingerprint = directions_fingerprint(path)
    (tmp_path / "d.json").write_text('{"format": "other"}')
    with pytest.raises(ZsteerError, match="not a zsteer directions sidecar"):
        load_directions(path)
    assert directions_fingerprint(path) != fingerprint
    with pytest.raises(ZsteerError, match="no direction 'x'"):
        found.index("x")


def test_a_sidecar_whose_z_dim_disagrees_with_its_vectors_is_refused(tmp_path):
    """A .json saying z_dim 32 over vectors of 64 values: one line naming the file and both numbers."""
    import json

    found = DirectionSet(
        method="axis", names=("z0", "z1"), vectors=torch.eye(2, 64), intercepts=torch.full((2,), float("nan")),
        attributes=(None, None), stats=({}, {}),
    )  # fmt: skip
    path = save_directions(found, tmp_path / "d")
    sidecar = tmp_path / "d.json"
    doc = json.loads(sidecar.read_text())
    doc["z_dim"] = 32
    sidecar.write_text(json.dumps(doc))
    with pytest.raises(
        ZsteerError, match=r"d\.json: z_dim is 32 but the vectors of d\.safetensors have 64 values$"
    ):
        load_directions(path)


def test_a_path_that_is_no_directions_file_is_named_as_given(tmp_path):
    """--directions good.parquet: the message names good.parquet and what a directions file is, not a
    good.safetensors the user never gave."""
    given = tmp_path / "good.parquet"
    given.write_bytes(b"PAR1")
    with pytest.raises(ZsteerError) as caught:
        load_directions(given)
    message = str(caught.value)
    assert message.startswith(f"{given}: not a directions file; expected NAME.safetensors + NAME.json"), (
        message
    )
    assert "\n" not in message


def test_a_directions_file_knows_the_generator_it_was_fitted_on():
    def with_info(info):
        return DirectionSet(
            method="axis", names=("z0",), vectors=torch.eye(1, 4), intercepts=torch.full((1,), float("nan")),
            attributes=(None,), stats=({},), info=info,
        )  # fmt: skip

    fitted = {"models": {"generator": {"fingerprint": "abc"}, "classifier": {"fingerprint": "def"}}}
    assert with_info(fitted).generator_fingerprint == "abc"
    assert with_info({}).generator_fingerprint is None
    assert with_info({"models": "garbage"}).generator_fingerprint is None
