"""Attribute names: the course's CelebA list, or the user's own from a JSON or text file."""

from __future__ import annotations

import difflib
import json
import math
from pathlib import Path

from zsteer.core.errors import AttributeNameError

# The C1W4B notebook's `feature_names`, in its order and spelling ("Sideburn", not "Sideburns").
CELEBA40 = (
    "5oClockShadow", "ArchedEyebrows", "Attractive", "BagsUnderEyes", "Bald", "Bangs", "BigLips",
    "BigNose", "BlackHair", "BlondHair", "Blurry", "BrownHair", "BushyEyebrows", "Chubby", "DoubleChin",
    "Eyeglasses", "Goatee", "GrayHair", "HeavyMakeup", "HighCheekbones", "Male", "MouthSlightlyOpen",
    "Mustache", "NarrowEyes", "NoBeard", "OvalFace", "PaleSkin", "PointyNose", "RecedingHairline",
    "RosyCheeks", "Sideburn", "Smiling", "StraightHair", "WavyHair", "WearingEarrings", "WearingHat",
    "WearingLipstick", "WearingNecklace", "WearingNecktie", "Young",
)  # fmt: skip

NAMED_LISTS = {"celeba40": CELEBA40}


def read_utf8(path: Path, error: type[Exception]) -> str:
    """The text of ``path``; bytes that are not UTF-8 raise ``error`` naming the file and the offset."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise error(
            f"{path}: not UTF-8 text (invalid byte at offset {exc.start}); save it as UTF-8"
        ) from None


def read_json(path: Path, error: type[Exception]):
    """The JSON document in ``path`` (UTF-8); text that is not JSON, or nested too deeply to be settings,
    raises ``error`` in one line naming the file."""
    try:
        return json.loads(read_utf8(path, error))
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    except RecursionError:
        raise error(f"{path}: JSON nested too deeply to be model settings") from None


def load_attribute_names(source: str) -> tuple[str, ...]:
    """A named list (``celeba40``), a JSON file holding a list of names, or a text file, one name a line."""
    if source in NAMED_LISTS:
        return NAMED_LISTS[source]
    path = Path(source)
    if not path.is_file():
        raise AttributeNameError(
            f"attribute names {source!r}: not a named list ({', '.join(NAMED_LISTS)}) nor a readable file"
        )
    text = read_utf8(path, AttributeNameError)
    if path.suffix.lower() == ".json":
        try:
            names = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AttributeNameError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        if isinstance(names, dict):
            names = names.get("attributes")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise AttributeNameError(f"{path}: expected a JSON list of attribute names (strings)")
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise AttributeNameError(
            f"{path}: no attribute names in it (expected one name a line, or a JSON list)"
        )
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise AttributeNameError(f"{path}: attribute {dup!r} is listed twice")
    return tuple(names)


def resolve_attribute(name: str, names: tuple[str, ...], where: str = "target") -> int:
    """Index of ``name`` in ``names``; an unknown name raises with the closest matches."""
    if name in names:
        return names.index(name)
    folded = {n.lower(): i for i, n in enumerate(names)}
    if name.lower() in folded:
        return folded[name.lower()]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(names[:8])}..."
    raise AttributeNameError(f"{where}: unknown attribute {name!r}{hint}")


FLOAT32_MAX = 3.4028234663852886e38  # the largest finite float32


def parse_target(spec: str, names: tuple[str, ...]) -> tuple[int, float]:
    """``Smiling`` or ``Eyeglasses=-1`` -> (attribute index, signed weight)."""
    name, sep, weight_text = spec.partition("=")
    weight = 1.0
    if sep:
        try:
            weight = float(weight_text)
        except ValueError:
            raise AttributeNameError(f"--target {spec!r}: weight {weight_text!r} is not a number") from None
        # Weights are float32 on the device: NaN, inf and anything past float32's range make every row
        # end non_finite, so they are refused here.
        if not math.isfinite(weight) or abs(weight) > FLOAT32_MAX:
            raise AttributeNameError(
                f"--target {spec!r}: weight {weight_text!r} must be a finite number of at most {FLOAT32_MAX:.3g}"
            )
    return resolve_attribute(name.strip(), names, where=f"--target {spec!r}"), weight
