"""`zsteer report`: a thin parser into ``jobs.report.ReportConfig`` and the library calls.

Imported only when named (main.LAZY_COMMANDS): it imports torch.
"""

from __future__ import annotations

from pathlib import Path

import click

from zsteer.core.errors import ZsteerError
from zsteer.demo import WEIGHTS_DIR
from zsteer.demo.evaluate import attribute_correlation, correlation_section
from zsteer.jobs.report import ReportConfig, build_report, demo_judge_for, load_judge, write_report

from .paths import PathOrUri, check_out_parent


@click.command()
@click.argument("jobs", nargs=-1, required=True, type=PathOrUri(file_okay=False, path_type=Path))
@click.option(
    "--judge", type=click.Path(dir_okay=False, path_type=Path),
    help="Classifier that scores the images (one the edits did not steer with). Default on the demo "
    "models: the demo judge; required elsewhere.",
)  # fmt: skip
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder.")
@click.option(
    "--target", "-t", "targets", multiple=True,
    help="NAME or NAME=WEIGHT to score (repeatable); default: each job's own targets.",
)  # fmt: skip
@click.option(
    "--allow-same-classifier", is_flag=True,
    help="Judge with the classifier the jobs steered with (self-grading: a warning says why).",
)  # fmt: skip
@click.option(
    "--batch", type=click.IntRange(min=1), default=256, show_default=True,
    help="Rows rendered and judged at once (memory, not results).",
)  # fmt: skip
def report(jobs, judge, out, targets, allow_same_classifier, batch):
    """Judged entanglement report of the edit jobs in JOBS: success, target probability, the attribute
    dependency matrix (mean |dp|, flip rate), latent shift; report.json, report.csv, report.md and PNGs."""
    check_out_parent("--out", out)
    demo_judge = demo_judge_for(jobs)
    if judge is None and demo_judge is None:
        raise ZsteerError(
            "--judge: required (the jobs did not run on the demo models): give a classifier the edits "
            "did not steer with"
        )
    config = ReportConfig(
        jobs=tuple(jobs), judge=judge or demo_judge, out=out, allow_same_classifier=allow_same_classifier,
        targets=tuple(targets), batch=batch,
    )  # fmt: skip
    data = build_report(config, load_judge(config.judge))
    if demo_judge is not None:  # the demo models: show the correlations the procedural data planted
        correlation = attribute_correlation(WEIGHTS_DIR)
        data["demo_correlation"] = correlation
        data["sections"] = [correlation_section(correlation)]
    paths = write_report(data, out)
    for job in data["jobs"]:
        for t in job["targets"]:
            rate = "-" if t["success_rate"] is None else f"{t['success_rate']:.0%}"
            strip = f" ({t['strip']['column']} {t['strip']['value']:g})" if "strip" in t else ""
            click.echo(
                f"{job['name']}: {t['target']}{strip} success {rate} of {t['rows_lacking_target']} rows, "
                f"p {t['target_prob_before']:.2f} -> {t['target_prob_after']:.2f}, "
                f"other drift {t['mean_other_drift']:.3f}, shift {t['latent_shift']:.2f}"
            )
    click.echo(f"zsteer: wrote {', '.join(str(p) for p in paths.values())}", err=True)
    return 0
