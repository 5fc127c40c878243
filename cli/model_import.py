"""`zsteer import`: the user's own model, traced into a .pt2 program and its sidecar (pipeline/importer.py).

Imported only when named (main.LAZY_COMMANDS): it imports torch, and the user's module.
"""

from __future__ import annotations

from pathlib import Path

import click

from zsteer.core.errors import ZsteerError
from zsteer.pipeline.attributes import load_attribute_names
from zsteer.pipeline.imported import parse_range
from zsteer.pipeline.importer import ClassifierCard, GeneratorCard, ImportConfig, import_model

from .paths import check_out_parent


def _shape(text: str | None) -> tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in (text or "").split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ZsteerError(f"--input-shape {text}: expected C,H,W (three positive integers), e.g. 3,64,64")
    return shape


def _attributes(text: str | None) -> tuple[str, ...]:
    if not text:
        raise ZsteerError("--attributes is required for a classifier: a file of names, 'celeba40', or a,b,c")
    if "," in text and not Path(text).exists():
        return tuple(name.strip() for name in text.split(",") if name.strip())
    return load_attribute_names(text)


@click.command(name="import")
@click.option(
    "--module", "factory", required=True, help="package.module:ClassOrFactory building the nn.Module."
)
@click.option("--kind", type=click.Choice(["generator", "classifier"]), required=True)
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True, help="NAME.pt2")
@click.option(
    "--weights", type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="state_dict to load (.pth/.pt read with weights_only, or .safetensors); default: the factory's.",
)  # fmt: skip
@click.option(
    "--path", "paths", multiple=True, type=click.Path(file_okay=False, path_type=Path),
    help="Folder to import the module from (repeatable); the current folder is always searched.",
)  # fmt: skip
@click.option("--z-dim", type=click.IntRange(min=1), help="Generator: length of z.")
@click.option(
    "--n-classes", type=click.IntRange(min=0), default=0, show_default=True, help="Generator classes."
)
@click.option(
    "--class-input", type=click.Choice(["none", "onehot", "embedding"]), default=None,
    help="Generator: how the class enters: onehot = forward([z, one_hot]); embedding = forward(z, labels).",
)  # fmt: skip
@click.option(
    "--output-range", default="-1,1", show_default=True, help="Generator: pixel range, -1,1 or 0,1."
)
@click.option("--input-shape", help="Classifier: C,H,W of the images it reads.")
@click.option(
    "--input-range", default="-1,1", show_default=True, help="Classifier: pixel range, -1,1 or 0,1."
)
@click.option("--attributes", help="Classifier: names of its logits: a file, 'celeba40', or a,b,c.")
def import_(factory, kind, out, weights, paths, z_dim, n_classes, class_input, output_range, input_shape,
            input_range, attributes):  # fmt: skip
    """Trace your own generator or classifier into OUT (.pt2) + its sidecar (.json), checked against eager.

    This runs your code (the module's constructor and forward), here; a job only ever reads the files.
    """
    check_out_parent("--out", out)
    if kind == "generator":
        if z_dim is None:
            raise ZsteerError("--z-dim is required for a generator")
        card = GeneratorCard(
            z_dim=z_dim, n_classes=n_classes,
            class_input=class_input or ("onehot" if n_classes else "none"),
            output_range=parse_range(output_range, "--output-range"),
        )  # fmt: skip
    else:
        card = ClassifierCard(
            input_shape=_shape(input_shape), attributes=_attributes(attributes),
            input_range=parse_range(input_range, "--input-range"),
        )  # fmt: skip
    model = import_model(ImportConfig(factory, card, out, weights, (Path.cwd(), *paths)))
    click.echo(
        f"zsteer: wrote {out} and {out.with_suffix('.json')} ({kind}, {model.spec.to_dict()})", err=True
    )
    return 0
