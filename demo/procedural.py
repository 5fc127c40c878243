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
    canvas = _Canvas(nz, n)
    c = canvas

    # Background: a vertical gradient between two muted random colours.
    t = (torch.arange(SIZE, dtype=torch.float32) / (SIZE - 1)).view(1, 1, SIZE, 1)
    c.img = torch.lerp(_rgb(nz["bg_top"]), _rgb(nz["bg_bottom"]), t).expand(n, 3, SIZE, SIZE).contiguous()

    dark, blond = lab["DarkSkin"].view(n, 1) > 0.5, lab["BlondHair"].view(n, 1) > 0.5
    skin = torch.where(dark, torch.tensor(_DARK_SKIN), torch.tensor(_LIGHT_SKIN))
    skin = (skin + nz["skin"]).clamp(0, 1)  # [n, 3]
    dark_hair = torch.lerp(torch.tensor(_BLACK_HAIR), torch.tensor(_BROWN_HAIR), nz["hair_mix"].view(n, 1))
    hair = (torch.where(blond, torch.tensor(_BLOND), dark_hair) + nz["hair"]).clamp(0, 1)  # [n, 3]
    skin_c, hair_c = _rgb(skin), _rgb(hair)  # [n, 3, 1, 1]

    # Shoulders, then the head, which covers most of the image.
    u, v = c.window(-24.0, 24.0, 26.0, 40.0)
    c.over(c.ellipse(u, v, 0.0, 40.0, 24.0, 14.0), _rgb(nz["shirt"]))
    u, v = c.window(-21.0, 21.0, -24.0, 30.0)
    # Long hair falls behind the head to the shoulders: a rounded slab wider than the face.
    long_mask = torch.minimum(c.box(u, v, -19.5, 19.5, -8.0, 26.0), c.ellipse(u, v, 0.0, 6.0, 21.0, 24.0))
    c.over(long_mask * lab["LongHair"], hair_c)
    c.over(c.box(u, v, -5.5, 5.5, 10.0, 30.0), skin_c * 0.9)  # neck
    # Hair cap: an ellipse a bit larger than the face, kept above the temples; the face covers its middle.
    c.over(torch.minimum(c.ellipse(u, v, 0.0, -3.0, 17.5, 20.5), c.soft(-3.0 - v)), hair_c)
    c.over(c.ellipse(u, v, 0.0, 0.0, 14.0, 18.0), skin_c)
    for side in (-14.0, 14.0):
        u, v = c.window(side - 2.2, side + 2.2, -3.5, 3.5)
        c.over(c.ellipse(u, v, side, 0.0, 2.2, 3.5), skin_c * 0.92)  # an ear

    # Nose a shade darker than the skin; beard: the lower face and a fuller chin, below the nose.
    u, v = c.window(-15.5, 15.5, -1.0, 22.0)
    c.over(c.ellipse(u, v, 0.0, 3.0, 1.6, 3.2), skin_c * 0.82)
    beard = torch.minimum(c.ellipse(u, v, 0.0, 1.0, 15.0, 20.5), c.soft(v - 5.0))
    c.over(beard * lab["Beard"], hair_c * 0.72)

    # Eyes, and eyeglasses: two rings and a bridge in a dark frame colour.
    u, v = c.window(-10.5, 10.5, -10.0, 4.0)
    v = v - c.scalar("eye_dy", u)  # eye line moves up or down a little
    # Distance to the nearer eye centre at (+-5.5, -3).
    eye_d = torch.sqrt(torch.addcmul((u.abs() - 5.5) ** 2, v + 3.0, v + 3.0))
    c.over(c.soft(1.9 - eye_d), _rgb((0.08, 0.06, 0.06)))
    rings = c.soft(0.8 - (eye_d - 4.0).abs())
    bridge = c.soft(torch.minimum(0.7 - (v + 4.0).abs(), 1.8 - u.abs()))
    c.over(torch.maximum(rings, bridge) * lab["Eyeglasses"], _rgb(nz["frame"].expand(n, 3)))

    # Mouth. A smile bends the line up at the corners and widens it; an open mouth shows a dark inside
    # with a band of teeth at the top (an "O" when not smiling, a "D" when smiling).
    u, v = c.window(-8.0, 8.0, 5.0, 15.0)
    smile, mouth_open = lab["Smiling"], lab["MouthOpen"]
    arc = 9.5 + smile * 3.5 * (0.45 - (u / 6.5) ** 2)  # v of the lip line at u
    closed_line = c.soft(torch.minimum(0.9 - (v - arc).abs(), 5.0 + 1.8 * smile - u.abs()))
    o_mouth = c.ellipse(u, v, 0.0, 10.0, 3.6, 3.2)
    d_mouth = c.soft(torch.minimum(torch.minimum(v - 7.0, arc + 1.6 - v), 6.6 - u.abs()))
    inside = torch.lerp(o_mouth, d_mouth, smile)
    teeth = inside * c.soft(8.3 + 0.6 * (1 - smile) - v)
    c.over(closed_line * (1 - mouth_open), _rgb(_LIP))
    c.over(inside * mouth_open, _rgb(_MOUTH_INSIDE))
    c.over(teeth * mouth_open, _rgb(_TEETH))

    # Hat: a crown over the top of the head and a brim; hair stays visible at the temples below it.
    u, v = c.window(-22.0, 22.0, -32.0, -10.0)
    crown = torch.minimum(c.box(u, v, -13.5, 13.5, -32.0, -13.0), c.ellipse(u, v, 0.0, -16.0, 14.0, 15.0))
    brim = c.ellipse(u, v, 0.0, -13.0, 21.0, 2.6)
    c.over(torch.maximum(crown, brim) * lab["WearingHat"], _rgb(nz["hat"]))

    return c.img.mul_(2.0).sub_(1.0).clamp_(-1.0, 1.0)


def _rgb(rgb) -> torch.Tensor:
    """A colour [3] or per-image colours [n, 3] as [1 or n, 3, 1, 1]."""
    return torch.as_tensor(rgb, dtype=torch.float32).view(-1, 3, 1, 1)


class _Canvas:
    """Draws soft shapes in head-local coordinates, one rectangular window of the image at a time.

    Local coordinates: u right, v down, in units of a scale-1 head centred near (32, 33); a local distance
    times the image's scale is a pixel distance. Each feature is evaluated only over the pixel window that
    its local bounding box can reach in this batch: the mouth or the eyes cover a sixth of the image, and
    drawing must stay fast because training draws fresh batches every step.
    """

    def __init__(self, nz: dict[str, torch.Tensor], n: int):
        self.n = n
        self.cx, self.cy = 32.0 + nz["dx"], 33.0 + nz["dy"]  # [n]
        self.s = nz["scale"]
        self.cos, self.sin = torch.cos(nz["tilt"]), torch.sin(nz["tilt"])
        self.nz = nz
        self.img = torch.empty(0)
        self.box_ = (slice(0, SIZE), slice(0, SIZE))
        self._s = self.s.view(n, 1, 1)

    def window(self, u0: float, u1: float, v0: float, v1: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Select the pixel window the local box can reach; return local (u, v) over it, each [n, h, w]."""
        n, s = self.n, self.s
        cu = torch.tensor([u0, u1, u0, u1]).view(1, 4)
        cv = torch.tensor([v0, v0, v1, v1]).view(1, 4)
        # Corners in pixels: x = cx + s (cos u - sin v), y = cy + s (sin u + cos v).
        xs = self.cx.view(n, 1) + s.view(n, 1) * (self.cos.view(n, 1) * cu - self.sin.view(n, 1) * cv)
        ys = self.cy.view(n, 1) + s.view(n, 1) * (self.sin.view(n, 1) * cu + self.cos.view(n, 1) * cv)
        # Two pixels of margin for the anti-aliased edges.
        x0, x1 = max(int(xs.min()) - 2, 0), min(int(xs.max()) + 3, SIZE)
        y0, y1 = max(int(ys.min()) - 2, 0), min(int(ys.max()) + 3, SIZE)
        self.box_ = (slice(y0, y1), slice(x0, x1))
        gy = torch.arange(y0, y1, dtype=torch.float32).view(1, -1, 1) - self.cy.view(n, 1, 1)  # [n, h, 1]
        gx = torch.arange(x0, x1, dtype=torch.float32).view(1, 1, -1) - self.cx.view(n, 1, 1)  # [n, 1, w]
        cos, sin = self.cos.view(n, 1, 1) / self._s, self.sin.view(n, 1, 1) / self._s
        u = cos * gx + sin * gy  # [n, h, w]
        v = cos * gy - sin * gx
        return u, v

    def scalar(self, key: str, like: torch.Tensor) -> torch.Tensor:
        return self.nz[key].view(self.n, 1, 1).to(like.dtype)

    def soft(self, sd: torch.Tensor) -> torch.Tensor:
        # Signed distance (local units, positive inside) -> anti-aliased coverage in [0, 1]; smooth edges are
        # easier to learn and to generate than hard ones.
        return torch.addcmul(torch.full((), 0.5), sd, self._s).clamp_(0.0, 1.0)

    def ellipse(self, u, v, cu: float, cv: float, ru: float, rv: float) -> torch.Tensor:
        # 1 - d is about (1 - d^2) / 2 near the edge, where the coverage is fractional; no sqrt needed.
        du, dv = (u - cu) * (1.0 / ru), (v - cv) * (1.0 / rv)
        d2 = torch.addcmul(du * du, dv, dv)
        return self.soft(d2.sub_(1.0).mul_(-0.5 * min(ru, rv)))

    def box(self, u, v, u0: float, u1: float, v0: float, v1: float) -> torch.Tensor:
        return self.soft(torch.minimum(torch.minimum(u - u0, u1 - u), torch.minimum(v - v0, v1 - v)))

    def over(self, mask: torch.Tensor, rgb: torch.Tensor) -> None:
        """Paint colour rgb [1 or n, 3, 1, 1] with coverage mask [n, h, w] over the current window."""
        region = self.img[(slice(None), slice(None), *self.box_)]  # a view: lerp_ writes into the image
        region.lerp_(rgb.expand_as(region), mask.unsqueeze(1))


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
