"""The model options every command that loads a generator and a classifier shares (edit, bench).

``model_options`` adds the flags; ``model_source(opt)`` turns the parsed values into the library's
``ModelSource``. One definition, so a new model format or flag reaches every command at once.
"""

from __future__ import annotations

from pathlib import Path

import click

from zsteer.pipeline.loading import ModelSource

_GEN_OVERRIDES = ("z_dim", "gen_hidden_dim", "gen_im_chan", "gen_n_classes", "gen_kind")
_CLS_OVERRIDES = ("cls_hidden_dim", "cls_im_chan", "cls_n_classes", "cls_image_size")


def _overrides(options: dict, names: tuple[str, ...], prefix: str) -> tuple[tuple[str, object], ...]:
    """Spec overrides given on the command line, keyed by the spec's field names."""
    return tuple((name.removeprefix(prefix), options[name]) for name in names if options[name] is not None)


def model_source(opt: dict) -> ModelSource:
    """The ModelSource of the options ``model_options`` added."""
    return ModelSource(
        generator=opt["generator"],
        classifier=opt["classifier"],
        attributes=opt["attributes"],
        generator_overrides=_overrides(opt, _GEN_OVERRIDES, "gen_"),
        classifier_overrides=_overrides(opt, _CLS_OVERRIDES, "cls_"),
    )


def model_options(fn):
    """--generator, --classifier, --attributes and the shape flags of bare course .pth files."""
    options = [
        click.option("--generator", type=click.Path(dir_okay=False, path_type=Path),
                     help="Generator weights (.safetensors + .json, the course's .pth, or a .pt2 + .json "
                     "written by `zsteer import`). Default: demo."),
        click.option("--classifier", type=click.Path(dir_okay=False, path_type=Path),
                     help="Classifier weights (as --generator). Default: the embedded demo classifier."),
        click.option("--attributes", help="Classifier output names: a file (JSON list or one per line) or "
                     "'celeba40'. Default: the classifier's own, else celeba40."),
        click.option("--z-dim", type=click.IntRange(min=1), help="Generator z length (bare .pth files)."),
        click.option("--gen-hidden-dim", type=click.IntRange(min=1), help="Generator width (bare .pth)."),
        click.option("--gen-im-chan", type=click.IntRange(min=1), help="Generator image channels (bare .pth)."),
        click.option("--gen-n-classes", type=click.IntRange(min=0),
                     help="Classes of a conditional generator (bare .pth); rows then need a label."),
        click.option("--gen-kind", type=click.Choice(["course_generator", "course_conditional_generator"]),
                     help="Generator architecture (bare .pth): C1W4B faces or C1W4A conditional MNIST."),
        click.option("--cls-hidden-dim", type=click.IntRange(min=1), help="Classifier width (bare .pth)."),
        click.option("--cls-im-chan", type=click.IntRange(min=1), help="Classifier image channels (bare .pth)."),
        click.option("--cls-n-classes", type=click.IntRange(min=1), help="Classifier outputs (bare .pth)."),
        click.option("--cls-image-size", type=click.IntRange(min=1), help="Classifier input size (bare .pth)."),
    ]  # fmt: skip
    for option in reversed(options):
        fn = option(fn)
    return fn
