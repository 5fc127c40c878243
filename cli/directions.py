"""`zsteer directions fit|show`: find directions in z-space and write a directions file; list one.

Imported only when the command is used (main.LAZY_COMMANDS): fitting imports torch and scikit-learn.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import torch

from zsteer.core.errors import ZsteerError
from zsteer.jobs.direction_method import check_strength
from zsteer.pipeline.checkpoints import load_classifier
from zsteer.pipeline.direction_file import DirectionSet, load_directions, save_directions
from zsteer.pipeline.direction_fit import METHODS, FitConfig, fit_directions, judge_directions
from zsteer.pipeline.loading import demo_model_paths, load_models

from .models import model_options, model_source
from .paths import check_out_parent
from .values import settings_checked


@click.group()
def directions():
    """Directions in z-space: fit them (boundary, gradient, sefa, pca, axis) and show a directions file."""


def _names(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(n.strip() for value in values for n in value.split(",") if n.strip())


@directions.command()
@click.option(
    "--out",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Directions file to write: OUT.safetensors and OUT.json.",
)
@click.option(
    "--method",
    type=click.Choice(METHODS),
    default="boundary",
    show_default=True,
    help="boundary (InterFaceGAN, linear SVM), gradient (mean classifier gradient), sefa, pca "
    "(GANSpace), axis (every z coordinate).",
)
@click.option(
    "--attribute",
    "fit_attributes",
    multiple=True,
    help="boundary/gradient: attributes to fit (repeatable or comma-separated). Default: all.",
)
@click.option(
    "--n-samples",
    type=click.IntRange(min=2),
    help="Latents sampled (boundary 20000, gradient 2048, pca 4096 by default).",
)
@click.option(
    "--fraction",
    type=float,
    default=0.02,
    show_default=True,
    help="boundary: top and bottom share of the samples kept per attribute.",
)
@click.option(
    "--train-split",
    type=float,
    default=0.7,
    show_default=True,
    help="boundary: share of the kept samples the SVM is fitted on (the rest is held out).",
)
@click.option(
    "--k",
    type=click.IntRange(min=1),
    help="sefa/pca: directions kept, at most z_dim (default: z_dim for sefa, min(10, z_dim) for pca).",
)
@click.option(
    "--condition",
    multiple=True,
    help="Make every direction orthogonal to these directions of the fit (conditional manipulation).",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seeds the latents and the split.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=512,
    show_default=True,
    help="Latents scored at a time.",
)
@click.option("--threads", type=click.IntRange(min=1), help="torch CPU threads.")
@model_options
def fit(
    out,
    method,
    fit_attributes,
    n_samples,
    fraction,
    train_split,
    k,
    condition,
    seed,
    batch_size,
    threads,
    **opt,
):
    """Fit directions against the generator and classifier and write a directions file."""
    if threads:
        torch.set_num_threads(threads)  # the CLI owns its process
    check_out_parent("--out", out)
    with settings_checked():
        config = FitConfig(
            method=method, n_samples=n_samples, fraction=fraction, train_split=train_split, seed=seed,
            attributes=_names(fit_attributes), k=k, conditions=_names(condition), batch_size=batch_size,
        )  # fmt: skip
    generator, classifier = load_models(model_source(opt))
    try:
        found = fit_directions(generator, classifier, config)
    except ValueError as exc:
        raise ZsteerError(str(exc)) from None
    path = save_directions(found, out)
    timing = ", ".join(f"{key} {value:.1f} s" for key, value in found.info["seconds"].items())
    click.echo(f"zsteer: wrote {len(found.names)} {method} directions to {path} ({timing})", err=True)
    click.echo(format_table(found))
    return 0


def _stat_text(stats: dict) -> str:
    parts = []
    for key in ("accuracy_val", "accuracy_all"):
        if key in stats:
            parts.append(f"{key.split('_')[1]} {stats[key]:.3f}")
    if "eigenvalue" in stats:
        parts.append(f"eigenvalue {stats['eigenvalue']:.4g}")
    if "explained_variance" in stats:
        parts.append(f"variance {stats['explained_variance']:.3f}")
    if stats.get("conditioned_on"):
        parts.append("orthogonal to " + ",".join(stats["conditioned_on"]))
    return "; ".join(parts)


def format_table(found: DirectionSet, moves: list[str] | None = None) -> str:
    """One line per direction: name, attribute, statistics (and what it moves, when judged)."""
    header = f"{found.method} directions (z_dim {found.z_dim}, seed {found.info.get('seed')}"
    if found.info.get("n_samples"):
        header += f", {found.info['n_samples']} samples"
    lines = [header + ")"]
    width = max(len(n) for n in found.names)
    for i, (name, attribute, stats) in enumerate(
        zip(found.names, found.attributes, found.stats, strict=True)
    ):
        line = f"  {name:<{width}}  {attribute or '-':<12}  {_stat_text(stats)}"
        if moves is not None:
            line += f"  moves: {moves[i]}"
        lines.append(line.rstrip())
    return "\n".join(lines)


def _judge(judge: Path | None, generator_fingerprint: str, found_generator: str | None):
    """The judge classifier: --judge, or the demo judge when the generator is the demo one."""
    if judge is not None:
        return load_classifier(judge)
    demo = demo_model_paths()
    if "judge" in demo and demo["judge"].is_file() and generator_fingerprint == found_generator:
        return load_classifier(demo["judge"])
    raise ZsteerError(
        "--judge: give a classifier to judge the directions with (the demo judge serves only "
        "the demo generator)"
    )


@directions.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--judge",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Classifier that judges which attributes each unsupervised direction moves. Default: the "
    "demo judge for the demo generator.",
)
@click.option(
    "--samples",
    type=click.IntRange(min=2),
    default=128,
    show_default=True,
    help="Latents judged per direction.",
)
@click.option("--alpha", type=float, default=3.0, show_default=True, help="How far the judged latents move.")
@click.option(
    "--top", type=click.IntRange(min=1), default=3, show_default=True, help="Attributes listed per direction."
)
@click.option("--json", "as_json", is_flag=True, help="Print the sidecar and the judged moves as JSON.")
@model_options
def show(file, judge, samples, alpha, top, as_json, **opt):
    """A table of FILE's directions and statistics; for sefa, pca and axis, which attributes each moves
    (judged on samples)."""
    try:
        check_strength("--alpha", alpha)
    except ValueError as exc:
        raise ZsteerError(str(exc)) from None
    found = load_directions(file)
    moves_text, moves = None, None
    if found.method in ("sefa", "pca", "axis"):
        generator, _ = load_models(model_source(opt))
        expected = found.generator_fingerprint
        if expected is not None and expected != generator.fingerprint:
            click.echo(
                f"zsteer: {file} was fitted on another generator ({expected}); judging on "
                f"{generator.fingerprint}",
                err=True,
            )
        judged = _judge(judge, generator.fingerprint, demo_fingerprint())
        moves = judge_directions(generator, judged, found.vectors, samples, alpha)  # [K, A]
        moves_text = []
        for row in moves:
            order = torch.argsort(row.abs(), descending=True)[:top]
            moves_text.append(", ".join(f"{judged.attributes[i]} {float(row[i]):+.2f}" for i in order))
    if as_json:
        doc = {
            "file": str(file),
            "method": found.method,
            "names": list(found.names),
            "attributes": list(found.attributes),
            "stats": list(found.stats),
            "info": found.info,
        }
        if moves is not None:
            doc["moves"] = {"alpha": alpha, "samples": samples, "delta_p": moves.tolist()}
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(format_table(found, moves_text))
    return 0


def demo_fingerprint() -> str | None:
    """The demo generator's fingerprint (None when the demo models are not installed)."""
    try:
        from zsteer.pipeline.checkpoints import file_fingerprint

        return file_fingerprint(demo_model_paths()["generator"])
    except (ZsteerError, OSError):
        return None
