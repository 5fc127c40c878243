"""The flags of the direction and interpolate edit methods, and their parsing into the methods' dataclasses.

`zsteer edit` adds them with ``method_options``; ``METHOD_PARSERS[name](opt)`` builds the method the
``--method`` flag names from the parsed values. A flag of one method given with another is refused
(``refuse_other_methods_flags``, the ascent's flags included).
"""

from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource

from zsteer.core.errors import ZsteerError
from zsteer.jobs.direction_method import MAX_STRIP, DirectionMethod, parse_alphas
from zsteer.jobs.interpolate_method import InterpolateMethod
from zsteer.pipeline.directions import PATHS

_DIRECTION_FLAGS = (
    "directions", "direction", "alpha", "alphas", "distance", "until_prob", "max_alpha", "max_evals",
    "condition", "scores_before",
)  # fmt: skip
_INTERPOLATE_FLAGS = ("frames", "path")
# The ascent's flags (AscentConfig), defined with the job's in edit.py.
_ASCENT_FLAGS = (
    "steps",
    "lr",
    "penalty",
    "normalize",
    "max_shift",
    "stop_at_prob",
    "lab_compat",
    "lab_batch",
)
# Each built-in method's own flags. One the user gave for another method would be ignored (a --max-shift
# that caps nothing), so it is refused; a registered method of its own takes none of them.
METHOD_FLAGS = {"ascent": _ASCENT_FLAGS, "direction": _DIRECTION_FLAGS, "interpolate": _INTERPOLATE_FLAGS}


def method_options(fn):
    """--directions ... --condition (direction) and --frames, --path (interpolate)."""
    d, i = DirectionMethod(), InterpolateMethod()
    prob = click.FloatRange(0, 1, min_open=True, max_open=True)
    options = [
        click.option("--directions", type=click.Path(dir_okay=False, path_type=Path),
                     help="--method direction: a directions file (`zsteer directions fit`)."),
        click.option("--direction", help="--method direction: the direction to move along (a row's "
                     "'direction' column overrides it). Default: the file's only direction."),
        click.option("--alpha", type=float, help=f"--method direction: strength (default {d.alpha}; a row's "
                     "'alpha' column overrides it)."),
        click.option("--alphas", help="--method direction: a strip, START:STOP:COUNT (e.g. -3:3:7) or a,b,c; "
                     f"one output row per (row, alpha), at most {MAX_STRIP} values."),
        click.option("--distance", type=float, help="--method direction: move to this signed distance from "
                     "the direction's fitted boundary (boundary directions)."),
        click.option("--until-prob", type=prob, help="--method direction: per row, the smallest |alpha| at "
                     "which P(direction's attribute) reaches this (stop_reason not_reached if it cannot)."),
        click.option("--max-alpha", type=click.FloatRange(min=0, min_open=True),
                     help=f"--until-prob: largest |alpha| tried (default {d.max_alpha})."),
        click.option("--max-evals", type=click.IntRange(min=1),
                     help=f"--until-prob: most forwards per row (default {d.max_evals})."),
        click.option("--condition", multiple=True, help="--method direction: directions of the file to stay "
                     "orthogonal to (repeatable or comma-separated; conditional manipulation)."),
        click.option("--scores-before/--no-scores-before", default=None,
                     help="--method direction: score the starting latent (logits_before; default on). "
                     "--no-scores-before writes NaN there and halves a fixed-alpha edit's forwards."),
        click.option("--frames", type=click.IntRange(min=2),
                     help=f"--method interpolate: frames per row, both ends included, at most {MAX_STRIP} "
                     f"(default {i.frames})."),
        click.option("--path", "path", type=click.Choice(PATHS),
                     help=f"--method interpolate: lerp or slerp (default {i.path})."),
    ]  # fmt: skip
    for option in reversed(options):
        fn = option(fn)
    return fn


def given_flags(ctx: click.Context) -> set[str]:
    """The parameters the user gave (on the command line or in the environment), not their defaults."""
    given = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    return {name for name in ctx.params if ctx.get_parameter_source(name) in given}


def refuse_other_methods_flags(ctx: click.Context, method: str) -> None:
    """A flag of another method than ``method`` that the user gave is refused in one line naming it."""
    given = given_flags(ctx)
    for owner, flags in METHOD_FLAGS.items():
        for name in flags if owner != method else ():
            if name in given:
                raise ZsteerError(f"--{name.replace('_', '-')}: not an option of --method {method}")


def _given(opt: dict, names: tuple[str, ...]) -> dict:
    return {name: opt[name] for name in names if opt.get(name) is not None}


def direction_method(opt: dict) -> DirectionMethod:
    """DirectionMethod from the parsed flags."""
    if opt.get("directions") is None:
        raise ZsteerError(
            "--method direction: give --directions FILE (write one with `zsteer directions fit`)"
        )
    conditions = tuple(
        n.strip() for value in opt.get("condition") or () for n in value.split(",") if n.strip()
    )
    settings = _given(
        opt, ("direction", "alpha", "distance", "until_prob", "max_alpha", "max_evals", "scores_before")
    )
    if opt.get("alphas"):
        settings["alphas"] = parse_alphas(opt["alphas"])
    if "alpha" in settings and ("alphas" in settings or "distance" in settings or "until_prob" in settings):
        raise ZsteerError("--alpha: give one of --alpha, --alphas, --distance and --until-prob")
    try:
        return DirectionMethod(directions=opt["directions"], conditions=conditions, **settings)
    except ValueError as exc:
        raise ZsteerError(f"--method direction: {exc}") from None


def interpolate_method(opt: dict) -> InterpolateMethod:
    """InterpolateMethod from the parsed flags."""
    try:
        return InterpolateMethod(**_given(opt, _INTERPOLATE_FLAGS))
    except ValueError as exc:
        raise ZsteerError(f"--method interpolate: {exc}") from None


# --method name -> the parser of its settings (ascent's flags are parsed in edit.py).
METHOD_PARSERS = {"direction": direction_method, "interpolate": interpolate_method}
