"""Edit quality on the demo models: how much does each method drag the other attributes for its success?

    flock /tmp/zsteer-heavy.lock python benchmarks/quality.py [--n 128] [--attributes Smiling,Eyeglasses,BlondHair]
                                                             [--out runs/quality] [--threads 1]

For each attribute, on the same --n sampled latents, every setting below is run as an edit job and
judged by the demo judge (`zsteer report`'s numbers: jobs/report.py), never by the steering classifier:

- ascent, the demo's 12 unit steps of 0.5, with a penalty sweep (lambda 0, 0.5, 1, 2);
- ascent with --stop-at-prob 0.9 (lambda 0), which stops each row once the classifier is convinced;
- ascent (lambda 0, 0.25, 0.5, 1) with 24 steps and --stop-at-prob 0.99;
- boundary (InterFaceGAN's linear SVM normal), gradient (mean normalised classifier gradient) and
  conditional boundary (made orthogonal to every other attribute's boundary), each with an alpha sweep;
- direction --until-prob P along the boundary and the conditional boundary (P 0.9 and 0.99): per row
  the smallest strength at which the classifier's probability reaches P.

Reported per setting: success (rows lacking the target that gain it, by the judge), mean other-attribute
drift (judge |dp|) and flip rate, latent shift, and cost in latents/s (the job's own rate, one thread,
on a shared machine: compare within one run). For every method family it reports the least drift among
settings with success >= --goal-success, and whether the issue's goal holds: success >= 90% with drift at
most half of unpenalised ascent's. Directions are fitted once per run (their time is reported apart).

Writes OUT/quality.json, OUT/quality.md, per attribute OUT/ATTR/report.{json,csv,md} with the heatmap
and the Pareto plot of its settings, and OUT/dependency/: the attribute x attribute matrix of every
attribute edited by unpenalised and penalised ascent.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from zsteer.demo import demo_paths
from zsteer.jobs.ascent_method import AscentMethod
from zsteer.jobs.config import EditSpec, JobConfig, OutputConfig
from zsteer.jobs.direction_method import DirectionMethod
from zsteer.jobs.jobview import open_job
from zsteer.jobs.report import ReportConfig, report_job, write_report
from zsteer.jobs.runner import run_job
from zsteer.jobs.sample import SampleConfig, write_sample
from zsteer.pipeline.checkpoints import load_classifier, load_generator
from zsteer.pipeline.config import AscentConfig
from zsteer.pipeline.direction_file import save_directions
from zsteer.pipeline.direction_fit import FitConfig, fit_directions
from zsteer.pipeline.loading import ModelSource

DEMO_ASCENT = AscentConfig(steps=12, lr=0.5, penalty=0.0, normalize=True)  # `zsteer demo`'s, unpenalised
PENALTIES = (0.0, 0.5, 1.0, 2.0)
ALPHAS = (1.5, 3.0, 4.5, 6.0)
UNTIL = (0.9, 0.99)
ACROSS = ("ascent l0", "ascent l0.5")  # the settings of the cross-attribute dependency report


@dataclass(frozen=True)
class Setting:
    """One job of the benchmark: its family (a line of the summary), a short label, and the method."""

    family: str
    label: str
    method: object
    targets: tuple[str, ...] = ()


def settings_for(attribute: str, others: tuple[str, ...], files: dict[str, Path]) -> list[Setting]:
    """Every setting run for ``attribute``."""
    out = [
        Setting("ascent", f"ascent l{lam:g}", AscentMethod(replace(DEMO_ASCENT, penalty=lam)), (attribute,))
        for lam in PENALTIES
    ]
    stop = replace(DEMO_ASCENT, stop_at_prob=0.9)
    out.append(Setting("ascent stop-at-prob", "ascent stop .9", AscentMethod(stop), (attribute,)))
    # Penalised ascent given twice the steps but stopped per row once the classifier is sure: the
    # penalty holds the other attributes while each row goes as far as it needs, and no further.
    for lam in (0.0, 0.25, 0.5, 1.0):
        longer = replace(DEMO_ASCENT, steps=24, penalty=lam, stop_at_prob=0.99)
        out.append(
            Setting(
                "ascent x24 stop-at-prob .99",
                f"ascent l{lam:g} x24 stop .99",
                AscentMethod(longer),
                (attribute,),
            )
        )
    for family, file, conditions in (
        ("boundary", files["boundary"], ()),
        ("conditional boundary", files["boundary"], others),
        ("gradient", files["gradient"], ()),
    ):
        short = {"boundary": "bnd", "conditional boundary": "cbnd", "gradient": "grad"}[family]
        for alpha in ALPHAS:
            method = DirectionMethod(directions=file, direction=attribute, alpha=alpha, conditions=conditions)
            out.append(Setting(family, f"{short} a{alpha:g}", method))
    for family, conditions in (("boundary until-prob", ()), ("conditional boundary until-prob", others)):
        short = "bnd" if not conditions else "cbnd"
        for p in UNTIL:
            method = DirectionMethod(
                directions=files["boundary"], direction=attribute, until_prob=p, conditions=conditions
            )
            out.append(Setting(family, f"{short} until {p:g}", method))
    return out


def report_of(judge, jobs: list[dict]) -> dict:
    """A `zsteer report` document over judged jobs (jobs/report.py's report_job results)."""
    return {
        "judge": {"path": str(judge.path), "fingerprint": judge.fingerprint},
        "attributes": list(judge.attributes),
        "jobs": jobs,
    }


def run_setting(setting: Setting, manifest: Path, out: Path, paths: dict[str, Path]) -> dict:
    """Run one job (fresh folder); its summary."""
    shutil.rmtree(out, ignore_errors=True)
    config = JobConfig(
        manifests=(str(manifest),),
        output=OutputConfig(out=out, workers=0, images="none"),
        models=ModelSource(paths["generator"], paths["classifier"]),
        edit=EditSpec(targets=setting.targets),
        method=setting.method,
        progress_seconds=1e9,
    )
    return run_job(config).summary


def family_summary(rows: list[dict], goal_success: float) -> dict:
    """Per family: the least-drift setting with success >= goal_success (None if none reaches it)."""
    out: dict = {}
    for row in rows:
        best = out.get(row["family"])
        ok = row["success_rate"] is not None and row["success_rate"] >= goal_success
        if ok and (best is None or row["mean_other_drift"] < best["mean_other_drift"]):
            out[row["family"]] = row
        out.setdefault(row["family"], None)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=128, help="latents edited per job")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--attributes", default="Smiling,Eyeglasses,BlondHair")
    ap.add_argument("--out", type=Path, default=Path("runs/quality"))
    ap.add_argument("--goal-success", type=float, default=0.9)
    ap.add_argument("--boundary-samples", type=int, default=None, help="default: FitConfig's")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    paths = demo_paths()
    gen, cls = load_generator(paths["generator"]), load_classifier(paths["classifier"])
    judge = load_classifier(paths["judge"])
    manifest = write_sample(SampleConfig(args.n, args.seed, args.out / "manifest.parquet"))
    attributes = tuple(a.strip() for a in args.attributes.split(",") if a.strip())

    files, fit_seconds = {}, {}
    for method in ("boundary", "gradient"):
        t0 = time.perf_counter()
        found = fit_directions(
            gen,
            cls,
            FitConfig(method=method, n_samples=args.boundary_samples if method == "boundary" else None),
        )
        fit_seconds[method] = round(time.perf_counter() - t0, 1)
        files[method] = save_directions(found, args.out / f"{method}.safetensors")
        print(f"fitted {method} directions in {fit_seconds[method]} s", flush=True)

    rows: list[dict] = []
    across: list[dict] = []
    for attribute in attributes:
        others = tuple(a for a in cls.attributes if a != attribute)
        reports = []
        for setting in settings_for(attribute, others, files):
            folder = args.out / attribute / "jobs" / setting.label.replace(" ", "_")
            summary = run_setting(setting, manifest, folder, paths)
            config = ReportConfig(jobs=(folder,), judge=paths["judge"], out=args.out, targets=(attribute,))
            judged = report_job(open_job(folder), judge, config)
            judged["name"] = setting.label
            reports.append(judged)
            t = judged["targets"][0]
            row = {
                "attribute": attribute, "family": setting.family, "setting": setting.label,
                "success_rate": t["success_rate"], "rows_lacking_target": t["rows_lacking_target"],
                "target_prob_before": t["target_prob_before"], "target_prob_after": t["target_prob_after"],
                "mean_other_drift": t["mean_other_drift"], "mean_other_flip_rate": t["mean_other_flip_rate"],
                "latent_shift": t["latent_shift"], "latents_per_second": summary.get("latents_per_second"),
            }  # fmt: skip
            rows.append(row)
            success = "-" if t["success_rate"] is None else f"{t['success_rate']:.2f}"
            print(
                f"{attribute:10} {setting.label:18} success {success} drift {t['mean_other_drift']:.3f} "
                f"flips {t['mean_other_flip_rate']:.3f} shift {t['latent_shift']:.2f} "
                f"{row['latents_per_second']} latents/s",
                flush=True,
            )
        write_report(report_of(judge, reports), args.out / attribute)
        across.extend(r for r in reports if r["name"] in ACROSS)
    # The attribute x attribute matrix: each attribute edited by unpenalised and penalised ascent.
    write_report(report_of(judge, across), args.out / "dependency")

    verdicts = {}
    for attribute in attributes:
        mine = [r for r in rows if r["attribute"] == attribute]
        baseline = next(r for r in mine if r["setting"] == "ascent l0")
        best = family_summary(mine, args.goal_success)
        met = [
            r for r in mine
            if r["success_rate"] is not None and r["success_rate"] >= args.goal_success
            and r["mean_other_drift"] <= 0.5 * baseline["mean_other_drift"]
        ]  # fmt: skip
        verdicts[attribute] = {
            "unpenalised_ascent": baseline,
            "best_per_family": best,
            "goal_met_by": [r["setting"] for r in met],
        }
    result = {
        "n": args.n, "seed": args.seed, "threads": args.threads, "goal_success": args.goal_success,
        "fit_seconds": fit_seconds, "rows": rows, "verdicts": verdicts,
    }  # fmt: skip
    (args.out / "quality.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "quality.md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    """The benchmark's tables: every setting, then the goal per attribute."""
    lines = [
        f"{result['n']} latents per job, judged by the demo judge; cost on {result['threads']} thread(s).",
        "",
        "| attribute | setting | success | other drift | drift / ascent l0 | other flips | shift | latents/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        base = result["verdicts"][r["attribute"]]["unpenalised_ascent"]["mean_other_drift"]
        success = "-" if r["success_rate"] is None else f"{r['success_rate']:.2f}"
        lines.append(
            f"| {r['attribute']} | {r['setting']} | {success} | {r['mean_other_drift']:.3f} | "
            f"{r['mean_other_drift'] / base:.2f}x | {r['mean_other_flip_rate']:.3f} | {r['latent_shift']:.2f} | "
            f"{r['latents_per_second']} |"
        )
    lines += ["", f"Least drift per family among settings with success >= {result['goal_success']:.0%}:", ""]
    for attribute, verdict in result["verdicts"].items():
        base = verdict["unpenalised_ascent"]["mean_other_drift"]
        parts = [
            f"{family}: "
            + (
                "not reached"
                if r is None
                else f"{r['setting']} ({r['success_rate']:.0%}, {r['mean_other_drift'] / base:.2f}x)"
            )
            for family, r in verdict["best_per_family"].items()
        ]
        goal = ", ".join(verdict["goal_met_by"]) or "none"
        lines.append(
            f"- {attribute}: " + "; ".join(parts) + f". Goal (>= 90% at <= 0.5x drift) met by: {goal}."
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
