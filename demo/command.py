"""`zsteer demo`: the main job on the embedded demo models, judged by a classifier it never optimised.

It samples latents, runs the edit job twice on them (with the penalty and without it), and has the
judge (a second classifier, trained apart) score the images before and after. Ascent on one classifier
can fool that classifier without changing the picture; the judge tells whether the picture changed.
The report says how many rows gained the target by the judge and how far the other attributes moved,
with and without the penalty: the entanglement the penalty is there to hold back.

The demo owns its folder: run again with the same settings, it resumes its two jobs; with other
settings, it replaces them (a job refuses a resume with other settings, and the user never named them).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from zsteer.jobs.ascent_method import AscentMethod
from zsteer.jobs.config import EditSpec, JobConfig, OutputConfig
from zsteer.jobs.folder import JOB_JSON, TMP_PREFIX, JobFolder, write_json_atomic
from zsteer.jobs.identity import zsteer_version
from zsteer.jobs.jobview import open_job
from zsteer.jobs.lock import FolderLock
from zsteer.jobs.report import ReportConfig, judge_probabilities, report_job
from zsteer.jobs.runner import run_job
from zsteer.jobs.sample import SampleConfig, write_sample
from zsteer.jobs.sheet import contact_sheet, decode_png, first_rows, render_latents, starting_latents
from zsteer.pipeline.attributes import resolve_attribute
from zsteer.pipeline.checkpoints import file_fingerprint, load_classifier, load_generator
from zsteer.pipeline.engine import AscentConfig
from zsteer.pipeline.loading import ModelSource, demo_model_paths

log = logging.getLogger("zsteer.demo.command")
MANIFEST, SETTINGS_JSON, REPORT_JSON, SHEET_PNG = (
    "manifest.parquet", "demo_settings.json", "demo_report.json", "sheet.png",
)  # fmt: skip
JOB_FOLDERS = {"penalty": "edit", "no_penalty": "edit_no_penalty"}


@dataclass(frozen=True)
class DemoConfig:
    """What the demo edits and where it writes."""

    # Demo folder: manifest.parquet, edit/, edit_no_penalty/, sheet.png, demo_report.json and
    # demo_settings.json (what the jobs in it were run with).
    out: Path = Path("runs/demo")
    # Latents to edit: enough for stable rates, few enough to run in a minute on 2 cores.
    n: int = 256
    # Seed of the latents.
    seed: int = 0
    # The attribute to add (a demo attribute name; see demo/weights/MODEL_CARD.md).
    target: str = "Smiling"
    # Ascent settings of the penalised run; the comparison run differs only in penalty = 0. Unit steps of
    # 0.5 (||z|| is about 8) and lambda 0.5 were picked on the demo models: most rows gain the target,
    # and the penalty visibly holds the entangled attributes (MouthOpen with Smiling).
    ascent: AscentConfig = AscentConfig(steps=12, lr=0.5, penalty=0.5, normalize=True)
    # Rows shown on the contact sheet.
    sheet_rows: int = 12


def _after_images(job: Path, n: int) -> tuple[list, np.ndarray]:
    """ids and decoded images [n, H, W, C] of the first ``n`` rows the job wrote."""
    columns = first_rows(JobFolder(job).committed_parts(), n)
    return columns["id"], np.stack([decode_png(png) for png in columns["image"]])


def _settings(config: DemoConfig, manifest: Path, paths: dict[str, Path]) -> dict:
    """What the demo's jobs depend on: the same settings resume them, other settings replace them."""
    settings = {
        "n": config.n,
        "seed": config.seed,
        "target": config.target,
        "ascent": asdict(config.ascent),
        "manifest": file_fingerprint(manifest),
        "models": {role: file_fingerprint(paths[role]) for role in ("generator", "classifier")},
        "zsteer_version": zsteer_version(),  # job.json records it, and a resume compares it
    }
    return json.loads(json.dumps(settings))  # as it reads back, so a comparison is exact


def _previous_settings(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none (a first run) or damaged: either way the jobs are not known
        return None


def _prepare_folder(config: DemoConfig, paths: dict[str, Path]) -> Path:
    """Put the manifest in place, replacing the jobs of a demo run with other settings; its path."""
    out = config.out
    fresh = write_sample(SampleConfig(config.n, config.seed, out / (TMP_PREFIX + MANIFEST)))
    settings = _settings(config, fresh, paths)
    manifest = out / MANIFEST
    if (
        _previous_settings(out / SETTINGS_JSON) == settings
        and manifest.is_file()
        and file_fingerprint(manifest) == settings["manifest"]
    ):
        fresh.unlink()  # the same rows: keep the file the jobs recorded (a rewrite would change its mtime)
        return manifest
    stale = [out / name for name in JOB_FOLDERS.values() if (out / name / JOB_JSON).exists()]
    if stale:
        log.info(
            "demo settings differ from the last run in %s: replacing %s",
            out, " and ".join(f"{p.name}/" for p in stale),
        )  # fmt: skip
    for path in stale:
        shutil.rmtree(path)
    for name in (REPORT_JSON, SHEET_PNG):
        (out / name).unlink(missing_ok=True)
    # The manifest before the record: a crash between the two leaves a record that differs, so the
    # next run replaces the jobs instead of resuming them on another manifest.
    fresh.replace(manifest)
    write_json_atomic(out / SETTINGS_JSON, settings)
    return manifest


def run_demo(config: DemoConfig) -> dict:
    """Run the demo; returns the report written to ``out/demo_report.json``."""
    paths = demo_model_paths()
    judge = load_classifier(paths["judge"])
    target = resolve_attribute(config.target, judge.attributes, where="--target")
    with FolderLock(config.out):  # one demo per folder: replacing its jobs must not race another run
        return _run_locked(config, paths, judge, target)


def _run_locked(config: DemoConfig, paths: dict[str, Path], judge, target: int) -> dict:
    manifest = _prepare_folder(config, paths)
    runs = {"penalty": config.ascent, "no_penalty": replace(config.ascent, penalty=0.0)}
    folders = {name: config.out / sub for name, sub in JOB_FOLDERS.items()}
    summaries = {}
    for name, ascent in runs.items():
        job = JobConfig(
            manifests=(str(manifest),),
            output=OutputConfig(out=folders[name], workers=0),
            models=ModelSource(paths["generator"], paths["classifier"]),
            edit=EditSpec(targets=(config.target,)),
            method=AscentMethod(ascent),
            progress_seconds=1e9,
        )
        summaries[name] = run_job(job).summary
    # The judged numbers are `zsteer report`'s, on the whole of each job.
    settings = ReportConfig(jobs=tuple(folders.values()), judge=paths["judge"], out=config.out)
    judged = {name: report_job(open_job(folders[name]), judge, settings)["targets"][0] for name in runs}
    report = {
        "config": {**asdict(config), "out": str(config.out)},
        "judge": judged,
        "classifier_latents_per_second": {name: s.get("latents_per_second") for name, s in summaries.items()},
    }
    k = config.sheet_rows
    ids, after = _after_images(folders["penalty"], k)
    ids_np, after_np = _after_images(folders["no_penalty"], k)
    order = {key: i for i, key in enumerate(ids_np)}
    after_np = after_np[[order[key] for key in ids]]
    z, _ = starting_latents([str(manifest)], ids)
    with torch.no_grad():
        before = render_latents(load_generator(paths["generator"]), z, None)
    probs = [judge_probabilities(judge, x)[:, target] for x in (before, after, after_np)]
    captions = [
        f"id {ids[i]}: {probs[0][i]:.2f} {probs[1][i]:.2f} {probs[2][i]:.2f}" for i in range(len(ids))
    ]
    lam = config.ascent.penalty
    sheet = contact_sheet([before, after, after_np], ["before", f"penalty {lam:g}", "penalty 0"], captions)
    sheet.save(config.out / SHEET_PNG)
    (config.out / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def format_report(report: dict) -> str:
    """A few lines for the terminal."""
    cfg = report["config"]
    lines = [f"zsteer demo: {cfg['n']} latents towards {cfg['target']}, judged by an independent classifier"]
    for name, run in report["judge"].items():
        rate = run["success_rate"]
        lines.append(
            f"  {name:10} gained {run['gained_target']}/{run['rows_lacking_target']} rows"
            f" ({0 if rate is None else rate:.0%}); {cfg['target']} prob {run['target_prob_before']:.2f} -> "
            f"{run['target_prob_after']:.2f}; other attributes moved {run['mean_other_drift']:.3f} on average"
        )
    drift = report["judge"]["no_penalty"]["mean_abs_dp"]
    worst = max(
        (kv for kv in drift.items() if kv[0] != report["judge"]["no_penalty"]["target"]), key=lambda kv: kv[1]
    )
    lines.append(
        f"  most entangled: {worst[0]} moved {worst[1]:.3f} without the penalty, "
        f"{report['judge']['penalty']['mean_abs_dp'][worst[0]]:.3f} with it"
    )
    return "\n".join(lines)
