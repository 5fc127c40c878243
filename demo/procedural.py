"""A procedural face data set with labelled binary attributes, standing in for CelebA.

Images are 64x64 RGB cartoon heads, float32 in [-1, 1], CHW, like the course's normalised CelebA. Every
image is drawn from its labels plus nuisance randomness (position, size, tilt, skin/hair/background/hat/
frame colours), so a model has to learn the attributes, not the pixels of one template.

Attributes and how they show:

- ``Smiling``: the mouth curves up and is wider (closed: an arc; open: a "D" with teeth).
- ``MouthOpen``: a dark open mouth with a band of white teeth.
- ``Eyeglasses``: two dark rings around the eyes and a bridge.
- ``WearingHat``: a coloured crown and brim over the top of the head.
- ``Beard``: the lower face and chin in a darker shade of the hair colour.
- ``BlondHair``: yellow hair instead of black-to-brown.
- ``LongHair``: hair falling beside the face down to the shoulders.
- ``DarkSkin``: a dark skin tone instead of a light one.

Correlations, on purpose, so the demo shows entanglement as CelebA does (marginal rates in ``RATES``):

- ``MouthOpen`` mostly with ``Smiling``: P(open | smiling) = 0.70, P(open | not smiling) = 0.15.
- ``Beard`` mostly with short hair: P(beard | long hair) = 0.08, P(beard | short hair) = 0.50.
- ``BlondHair`` rarely with ``DarkSkin``: P(blond | dark skin) = 0.10, P(blond | light skin) = 0.45.
- ``Smiling``, ``Eyeglasses``, ``WearingHat``, ``LongHair`` and ``DarkSkin`` are independent.
"""

from __future__ import annotations

import torch

ATTRIBUTES = (
    "Smiling",
    "MouthOpen",
    "Eyeglasses",
    "WearingHat",
    "Beard",
    "BlondHair",
    "LongHair",
    "DarkSkin",
)
INDEX = {name: i for i, name in enumerate(ATTRIBUTES)}
SIZE = 64

# Probabilities of the independent attributes, and of each dependent one given its parent.
P_SMILING, P_OPEN_IF_SMILING, P_OPEN_IF_NOT = 0.50, 0.70, 0.15
P_EYEGLASSES, P_HAT, P_LONG_HAIR, P_DARK_SKIN = 0.30, 0.25, 0.45, 0.35
P_BEARD_IF_LONG, P_BEARD_IF_SHORT = 0.08, 0.50
P_BLOND_IF_DARK, P_BLOND_IF_LIGHT = 0.10, 0.45

# Marginal rate of each attribute in the data set (what the generator's samples should reproduce).
RATES = {
    "Smiling": P_SMILING,
    "MouthOpen": P_SMILING * P_OPEN_IF_SMILING + (1 - P_SMILING) * P_OPEN_IF_NOT,
    "Eyeglasses": P_EYEGLASSES,
    "WearingHat": P_HAT,
    "Beard": P_LONG_HAIR * P_BEARD_IF_LONG + (1 - P_LONG_HAIR) * P_BEARD_IF_SHORT,
    "BlondHair": P_DARK_SKIN * P_BLOND_IF_DARK + (1 - P_DARK_SKIN) * P_BLOND_IF_LIGHT,
    "LongHair": P_LONG_HAIR,
    "DarkSkin": P_DARK_SKIN,
}

_LIGHT_SKIN = (0.96, 0.80, 0.68)
_DARK_SKIN = (0.47, 0.31, 0.21)
_BLOND = (0.96, 0.84, 0.36)
_BLACK_HAIR = (0.10, 0.08, 0.07)
_BROWN_HAIR = (0.36, 0.22, 0.10)
_LIP = (0.62, 0.16, 0.18)
_MOUTH_INSIDE = (0.28, 0.03, 0.06)
_TEETH = (0.97, 0.97, 0.93)


def sample_labels(n: int, gen: torch.Generator) -> torch.Tensor:
    """Labels [n, A] in {0, 1}, with the correlations stated in the module docstring."""
    u = torch.rand(n, len(ATTRIBUTES), generator=gen)  # [n, A]
    smiling = u[:, 0] < P_SMILING
    mouth_open = u[:, 1] < torch.where(smiling, P_OPEN_IF_SMILING, P_OPEN_IF_NOT)
    glasses = u[:, 2] < P_EYEGLASSES
    hat = u[:, 3] < P_HAT
    long_hair = u[:, 6] < P_LONG_HAIR
    beard = u[:, 4] < torch.where(long_hair, P_BEARD_IF_LONG, P_BEARD_IF_SHORT)
    dark = u[:, 7] < P_DARK_SKIN
    blond = u[:, 5] < torch.where(dark, P_BLOND_IF_DARK, P_BLOND_IF_LIGHT)
    cols = (smiling, mouth_open, glasses, hat, beard, blond, long_hair, dark)
    return torch.stack(cols, dim=1).float()


def sample_nuisance(n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Everything random about an image except its labels, drawn independently of them.

    Drawn whether or not an attribute is present (e.g. a hat colour for every image), so that flipping one
    label while keeping the nuisance changes only what that attribute draws.
    """

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, *shape, generator=gen)

    return {
        "dx": uniform(-3.0, 3.0),  # [n] face centre offset, pixels
        "dy": uniform(-3.0, 3.0),
        "scale": uniform(0.88, 1.08),
        "tilt": uniform(-0.16, 0.16),  # radians
        "skin": uniform(-0.05, 0.05, 3) + uniform(-0.06, 0.04, 1),  # [n, 3] per-channel + brightness
        "hair_mix": uniform(0.0, 1.0),  # black -> brown for non-blond hair
        "hair": uniform(-0.04, 0.04, 3),
        "bg_top": uniform(0.35, 0.85, 3),
        "bg_bottom": uniform(0.35, 0.85, 3),
        "shirt": uniform(0.1, 0.9, 3),
        "hat": uniform(0.0, 1.0, 3),
        "frame": uniform(0.0, 0.22, 1),
        "eye_dy": uniform(-1.0, 1.0),
    }


def render(labels: torch.Tensor, nz: dict[str, torch.Tensor]) -> torch.Tensor:
    """Images [n, 3, 64, 64] in [-1, 1] from labels [n, A] and a nuisance dict from ``sample_nuisance``."""
    n = labels.shape[0]
    lab = {name: labels[:, i].view(n, 1, 1) for i, name in enumerate(ATTRIBUTES)}  # each [n, 1, 1]

    def p(key: str) -> torch.Tensor:  # a per-image scalar as [n, 1, 1] for broadcasting over pixels
        return nz[key].view(n, 1, 1)

    # Head-local coordinates: u right, v down, in units of a scale-1 head; pixel distance = local * s.
    ys, xs = torch.meshgrid(
        torch.arange(SIZE, dtype=torch.float32), torch.arange(SIZE, dtype=torch.float32), indexing="ij"
    )
    s = p("scale")
    lx = xs - (32.0 + p("dx"))  # [n, 64, 64]
    ly = ys - (33.0 + p("dy"))
    cos, sin = torch.cos(p("tilt")), torch.sin(p("tilt"))
    u = (cos * lx + sin * ly) / s
    v = (-sin * lx + cos * ly) / s

    def soft(sd: torch.Tensor) -> torch.Tensor:
        # Signed distance (local units, positive inside) -> anti-aliased coverage; smooth edges are easier to
        # learn and to generate than hard ones.
        return (sd * s + 0.5).clamp(0.0, 1.0)

    def ellipse(cu: float, cv: float, ru: float, rv: float) -> torch.Tensor:
        d = torch.sqrt(((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2)
        return soft((1.0 - d) * min(ru, rv))

    def box(u0: float, u1: float, v0: float, v1: float) -> torch.Tensor:
        return soft(torch.minimum(torch.minimum(u - u0, u1 - u), torch.minimum(v - v0, v1 - v)))

    def colour(rgb) -> torch.Tensor:  # [1 or n, 3] -> [.., 3, 1, 1]
        t = torch.as_tensor(rgb, dtype=torch.float32)
        return t.view(-1, 3, 1, 1)

    def over(img: torch.Tensor, mask: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(1)  # [n, 1, 64, 64]
        return img * (1.0 - m) + rgb * m

    # Background: a vertical gradient between two muted random colours.
    t = (ys / (SIZE - 1)).view(1, 1, SIZE, SIZE)
    img = colour(nz["bg_top"]) * (1 - t) + colour(nz["bg_bottom"]) * t  # [n, 3, 64, 64]
    img = img.expand(n, 3, SIZE, SIZE).contiguous()

    skin = torch.where(
        lab["DarkSkin"].view(n, 1) > 0.5, colour(_DARK_SKIN).view(1, 3), colour(_LIGHT_SKIN).view(1, 3)
    )
    skin = (skin + nz["skin"]).clamp(0, 1)  # [n, 3]
    dark_hair = colour(_BLACK_HAIR).view(1, 3) * (1 - nz["hair_mix"].view(n, 1)) + colour(_BROWN_HAIR).view(
        1, 3
    ) * nz["hair_mix"].view(n, 1)
    hair = torch.where(lab["BlondHair"].view(n, 1) > 0.5, colour(_BLOND).view(1, 3), dark_hair)
    hair = (hair + nz["hair"]).clamp(0, 1)  # [n, 3]
    skin_c, hair_c = colour(skin), colour(hair)

    # Shoulders and neck.
    img = over(img, ellipse(0.0, 40.0, 24.0, 14.0), colour(nz["shirt"]))
    # Long hair falls behind the head to the shoulders: a rounded slab wider than the face.
    long_mask = torch.minimum(box(-19.5, 19.5, -8.0, 26.0), ellipse(0.0, 6.0, 21.0, 24.0))
    img = over(img, long_mask * lab["LongHair"], hair_c)
    img = over(img, box(-5.5, 5.5, 10.0, 30.0), skin_c * 0.9)
    # Hair cap: an ellipse a bit larger than the face, kept above the temples; the face covers its middle.
    cap = torch.minimum(ellipse(0.0, -3.0, 17.5, 20.5), soft(-3.0 - v))
    img = over(img, cap, hair_c)
    face = ellipse(0.0, 0.0, 14.0, 18.0)
    img = over(img, face, skin_c)
    # Ears, then a nose a shade darker than the skin.
    img = over(img, ellipse(-14.0, 0.0, 2.2, 3.5) + ellipse(14.0, 0.0, 2.2, 3.5), skin_c * 0.92)
    img = over(img, ellipse(0.0, 3.0, 1.6, 3.2), skin_c * 0.82)

    # Beard: the lower face and a fuller chin, below the nose.
    beard = torch.minimum(ellipse(0.0, 1.0, 15.0, 20.5), soft(v - 5.0))
    img = over(img, beard * lab["Beard"], hair_c * 0.72)

    # Eyes.
    ey = -3.0 + p("eye_dy")
    for cu in (-5.5, 5.5):
        d = torch.sqrt((u - cu) ** 2 + (v - ey) ** 2)
        img = over(img, soft(1.9 - d), colour((0.08, 0.06, 0.06)))
    # Eyeglasses: two rings and a bridge, in a dark frame colour.
    rings = torch.zeros_like(u)
    for cu in (-5.5, 5.5):
        d = torch.sqrt((u - cu) ** 2 + (v - ey) ** 2)
        rings = torch.maximum(rings, soft(0.8 - (d - 4.0).abs()))
    bridge = soft(torch.minimum(0.7 - (v - ey + 1.0).abs(), 1.8 - u.abs()))
    frame = colour(nz["frame"].expand(n, 3))
    img = over(img, torch.maximum(rings, bridge) * lab["Eyeglasses"], frame)

    # Mouth. A smile bends the line up at the corners and widens it; an open mouth shows a dark inside
    # with a band of teeth at the top (an "O" when not smiling, a "D" when smiling).
    smile, mouth_open = lab["Smiling"], lab["MouthOpen"]
    half_w = 4.5 + 1.5 * smile
    arc = 9.0 + smile * 2.5 * (0.5 - (u / 6.0) ** 2)  # v of the lip line at u
    closed_line = soft(torch.minimum(0.85 - (v - arc).abs(), half_w - u.abs()))
    o_mouth = ellipse(0.0, 9.5, 3.2, 2.6)
    d_mouth = soft(torch.minimum(torch.minimum(v - 7.2, arc + 1.0 - v), 6.0 - u.abs()))
    inside = o_mouth * (1 - smile) + d_mouth * smile
    teeth = inside * soft(8.6 + 0.8 * (1 - smile) - v)
    img = over(img, closed_line * (1 - mouth_open), colour(_LIP))
    img = over(img, inside * mouth_open, colour(_MOUTH_INSIDE))
    img = over(img, teeth * mouth_open, colour(_TEETH))

    # Hat: a crown over the top of the head and a brim; hair stays visible at the temples below it.
    crown = torch.minimum(box(-13.5, 13.5, -30.0, -13.0), ellipse(0.0, -16.0, 14.0, 15.0))
    brim = ellipse(0.0, -13.0, 21.0, 2.6)
    img = over(img, torch.maximum(crown, brim) * lab["WearingHat"], colour(nz["hat"]))

    return (img * 2.0 - 1.0).clamp(-1.0, 1.0)


def make_batch(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images float32 [n, 3, 64, 64] in [-1, 1], labels float32 [n, A]), deterministic from ``seed``."""
    gen = torch.Generator().manual_seed(int(seed))
    labels = sample_labels(n, gen)
    return render(labels, sample_nuisance(n, gen)), labels


def correlation(labels: torch.Tensor) -> torch.Tensor:
    """Pearson correlation [A, A] between attribute columns of labels [n, A]."""
    x = labels - labels.mean(0)
    cov = x.T @ x / max(len(labels) - 1, 1)
    sd = cov.diagonal().clamp_min(1e-12).sqrt()
    return cov / (sd[:, None] * sd[None, :])


__all__ = ["ATTRIBUTES", "RATES", "make_batch", "render", "sample_labels", "sample_nuisance", "correlation"]
