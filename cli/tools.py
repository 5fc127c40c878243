"""`zsteer sheet`, `zsteer demo` and `zsteer export`: thin parsers into configs and library calls.

Imported only when one of them is named (main.LAZY_COMMANDS): they import torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from zsteer.core.errors import ZsteerError
from zsteer.demo.command import DemoConfig, format_report, run_demo
from zsteer.jobs.sheet import SheetConfig, job_sheet
from zsteer.pipeline.engine import AscentConfig
from zsteer.pipeline.loading import ModelSource, load_models

from .paths import PathOrUri, check_out_parent
from .values import int_values, settings_checked


@click.command()
@click.argument("job", type=PathOrUri(file_okay=False, path_type=Path))
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True, help="PNG file.")
@click.option("--rows", type=click.IntRange(min=1), default=16, show_default=True, help="Latents shown.")
@click.option(
    "--scale", type=click.IntRange(min=1, max=8), default=2, show_default=True, help="Pixel repeat."
)
def sheet(job, out, rows, scale):
    """Before/after contact sheet of the edit job in JOB (one row per latent)."""
    check_out_parent("--out", out)
    path = job_sheet(SheetConfig(job, out, rows, scale))
    click.echo(f"zsteer: wrote {path}", err=True)
    return 0


_DEMO = DemoConfig()


@click.command()
@click.option(
    "--out", "-o", type=click.Path(file_okay=False, path_type=Path), default=_DEMO.out, show_default=True
)
@click.option("--n", "n", type=click.IntRange(min=1), default=_DEMO.n, show_default=True, help="Latents.")
@click.option("--seed", type=click.IntRange(min=0), default=_DEMO.seed, show_default=True)
@click.option("--target", default=_DEMO.target, show_default=True, help="Demo attribute to add.")
@click.option("--steps", type=click.IntRange(min=1), default=_DEMO.ascent.steps, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=_DEMO.ascent.lr, show_default=True)
@click.option("--penalty", type=click.FloatRange(min=0), default=_DEMO.ascent.penalty, show_default=True)
def demo(out, n, seed, target, steps, lr, penalty):
    """Edit sampled latents on the embedded demo models; an independent judge scores the result."""
    check_out_parent("--out", out)
    with settings_checked():
        ascent = AscentConfig(steps=steps, lr=lr, penalty=penalty, normalize=True)
    report = run_demo(DemoConfig(out=out, n=n, seed=seed, target=target, ascent=ascent))
    click.echo(format_report(report))
    click.echo(f"zsteer: wrote {out / 'sheet.png'} and {out / 'demo_report.json'}", err=True)
    return 0


@click.command()
@click.option(
    "--generator", type=click.Path(dir_okay=False, path_type=Path), help="Default: the demo generator."
)
@click.option(
    "--classifier", type=click.Path(dir_okay=False, path_type=Path), help="Default: the demo classifier."
)
@click.option("--attributes", help="Classifier output names: a file or 'celeba40'.")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder.")
@click.option("--exporter", type=click.Choice(["dynamo", "torchscript"]), default="dynamo", show_default=True)
@click.option("--batch-sizes", default="1,7,128", show_default=True, help="Parity is checked at these sizes.")
@click.option("--no-step", is_flag=True, help="Export only the forward graphs, not the ascent step.")
def export(generator, classifier, attributes, out, exporter, batch_sizes, no_step):
    """ONNX graphs of the generator, the classifier and the whole ascent step, checked against torch."""
    from zsteer.export.onnx_export import export_models

    check_out_parent("--out", out)  # before the models load and the graphs are exported and checked
    sizes = int_values((batch_sizes,), "--batch-sizes")
    if not sizes:
        raise ZsteerError(
            f"--batch-sizes: expected a comma-separated list of positive integers, got {batch_sizes!r}"
        )
    gen, cls = load_models(ModelSource(generator, classifier, attributes))
    report = export_models(
        gen, cls, out, exporter=exporter, batch_sizes=sizes, steps=() if no_step else (False, True)
    )
    click.echo(
        f"zsteer: exported to {out}; parity with PyTorch passed at batch sizes {list(sizes)}", err=True
    )
    click.echo(json.dumps({"passed": report["passed"], "out": str(out)}))
    return 0
