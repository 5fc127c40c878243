"""`zsteer report`: the judged entanglement report of one or more edit jobs.

A judge (a classifier the edit never optimised) scores the image of every output row before and after
the edit, both rendered from z: the starting z read from the job's manifests, and ``z_edited``. For each
job and target it reports:

- the success rate: of the rows that lacked the target (judge probability < 0.5; for a negative weight,
  rows that had it), the fraction that gained it (lost it);
- the target's mean judge probability before and after;
- for every attribute, the mean |dp| and the flip rate (0.5 crossed): one row of the attribute x
  attribute dependency matrix; "mean other drift" is the mean |dp| over the attributes that are not
  targets of the job;
- the mean latent shift ||z_edited - z||.

Rows are read shard by shard and judged ``batch`` at a time, so memory does not grow with the job.
Writing the files (report.json, report.csv, report.md and the plots of ``report_plots``) is
``write_report``.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from zsteer.core.errors import ZsteerError
from zsteer.pipeline.attributes import parse_target
from zsteer.pipeline.checkpoints import LoadedModel, file_fingerprint, load_classifier, load_generator
from zsteer.pipeline.generic_net import classifier_input_shape, invariant_call
from zsteer.pipeline.loading import demo_model_paths
from zsteer.pipeline.network import fit_to_classifier
from zsteer.pipeline.probability import probabilities

from .folder import write_bytes_atomic, write_json_atomic
from .jobview import JobView, ManifestLatents, open_job, read_job_doc
from .sheet import output_classes, render_latents

log = logging.getLogger("zsteer.report")
REPORT_JSON, REPORT_CSV, REPORT_MD = "report.json", "report.csv", "report.md"
HEATMAP_PNG, PARETO_PNG = "dependency.png", "pareto.png"
# An interpolation's output columns that say which frames blend two classes (jobs/interpolate_method.py).
BLEND_COLUMNS = ("label_to", "t")
SELF_GRADING = (
    "the judge is the classifier the edit steered with: an edit can raise that classifier's scores "
    "without changing the picture (an adversarial edit), so it grades its own homework and the success "
    "rate is an upper bound, not evidence"
)


@dataclass(frozen=True)
class ReportConfig:
    """What `zsteer report` judges and where it writes."""

    # Job folders written by `zsteer edit`, one point each on the Pareto plot.
    jobs: tuple[Path, ...]
    # The judge classifier's weights: one the edits did not steer with.
    judge: Path
    # Output folder for report.json, report.csv, report.md and the PNGs.
    out: Path
    # Judge with the steering classifier anyway (a warning says why that is self-grading).
    allow_same_classifier: bool = False
    # Attributes to score as targets, as --target writes them (NAME or NAME=WEIGHT, a negative weight
    # scoring removal); empty = each job's own targets. Needed for jobs whose method records none.
    targets: tuple[str, ...] = ()
    # Rows rendered and judged at once: bounds memory and sets the speed, not the numbers (a row's judged
    # bits and the counts are the same at any batch; means only up to float summation order).
    batch: int = 256


@dataclass
class TargetTally:
    """Running sums for one target of one job, over judge probabilities of rows before and after."""

    target: int  # index of the target in the judge's attributes
    sign: float  # +1: the edit adds the target; -1: it removes it
    n_attributes: int
    rows: int = 0
    eligible: int = 0  # rows that lacked the target (had it, for sign -1)
    succeeded: int = 0  # of those, rows that reached it
    prob_before: float = 0.0
    prob_after: float = 0.0
    shift: float = 0.0
    abs_dp: np.ndarray = field(default=None)  # [A] sums of |p_after - p_before|
    flips: np.ndarray = field(default=None)  # [A] counts of rows whose decision (p >= 0.5) changed

    def __post_init__(self):
        self.abs_dp = np.zeros(self.n_attributes) if self.abs_dp is None else self.abs_dp
        self.flips = np.zeros(self.n_attributes, dtype=np.int64) if self.flips is None else self.flips

    def add(self, before: np.ndarray, after: np.ndarray, shift: np.ndarray) -> None:
        """Count rows: judge probabilities before [n, A] and after [n, A], latent shift [n]."""
        t = self.target
        had, has = before[:, t] >= 0.5, after[:, t] >= 0.5  # [n]
        lacked, reached = (~had, has) if self.sign > 0 else (had, ~has)
        self.rows += len(before)
        self.eligible += int(lacked.sum())
        self.succeeded += int((lacked & reached).sum())
        self.prob_before += float(before[:, t].sum())
        self.prob_after += float(after[:, t].sum())
        self.shift += float(shift.sum())
        self.abs_dp += np.abs(after - before).sum(0)
        self.flips += ((before >= 0.5) != (after >= 0.5)).sum(0)

    def result(self, attributes: tuple[str, ...], others: list[int]) -> dict:
        """Means over the rows counted; ``others``: indices of the attributes that are not targets."""
        n = max(self.rows, 1)
        dp, flips = self.abs_dp / n, self.flips / n
        return {
            "target": attributes[self.target],
            "weight": self.sign,
            "rows": self.rows,
            "rows_lacking_target": self.eligible,
            "gained_target": self.succeeded,
            "success_rate": self.succeeded / self.eligible if self.eligible else None,
            "target_prob_before": self.prob_before / n,
            "target_prob_after": self.prob_after / n,
            "mean_abs_dp": {a: float(x) for a, x in zip(attributes, dp, strict=True)},
            "flip_rate": {a: float(x) for a, x in zip(attributes, flips, strict=True)},
            "mean_other_drift": float(dp[others].mean()) if others else 0.0,
            "mean_other_flip_rate": float(flips[others].mean()) if others else 0.0,
            "latent_shift": self.shift / n,
        }


def judge_probabilities(judge: LoadedModel, images: np.ndarray) -> np.ndarray:
    """Judge probabilities [n, A] of uint8 images [n, H, W, C], resized and expanded as the judge reads.

    A row's bits do not depend on the images judged with it (so neither do the report's counts on
    ``ReportConfig.batch``): the judge runs as ``invariant_call`` runs it, and ``probabilities`` in
    float64 replaces torch's sigmoid, whose bits depend on a value's place in the tensor."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1  # [n, C, H, W]
    chan, height, width = classifier_input_shape(judge)  # a course or an imported (.pt2) judge
    with torch.no_grad():  # resized and expanded as the editor feeds its classifier
        logits = invariant_call(
            judge, lambda rows: judge.module(fit_to_classifier(rows, chan, height, width)), x
        )
        return probabilities(logits.double()).numpy()  # [n, A]


def judged_rows(view: JobView, judge: LoadedModel, batch: int) -> Iterator[tuple]:
    """(p_before [n, A], p_after [n, A], latent shift [n], strip values [n] or None) of the job's committed
    rows, ``batch`` at a time; the strip values are a strip job's ``alpha`` or ``frame`` (JobView.strip_column).

    The rows of a strip share their input row: its "before" is rendered and judged once per batch (a row's judged
    bits do not depend on its batch, so an alpha-0 frame's drift is exactly 0). An interpolation frame
    towards another class (``label_to``) is rendered with that frame's blended class."""
    latents = ManifestLatents(view.inputs)
    for shard in view.committed_parts():
        reader = view.folder.storage.parquet_file(shard)
        names = reader.schema_arrow.names
        strip = view.strip_column if view.strip_column in names else None
        blends = list(BLEND_COLUMNS) if set(BLEND_COLUMNS) <= set(names) else []
        columns = ["id", "z_edited", *([strip] if strip else []), *blends]
        for record in reader.iter_batches(batch_size=batch, columns=columns):
            first: dict = {}  # input id -> its index among the batch's distinct ids
            source = np.array([first.setdefault(key, len(first)) for key in record.column("id").to_pylist()])
            z, labels = latents.lookup(list(first))  # [u, z_dim], [u] or None
            z_edited = np.asarray(record.column("z_edited").to_pylist(), dtype=np.float32)  # [n, z_dim]
            out_labels = None if labels is None else labels[source]
            if blends:
                out_labels = output_classes(
                    out_labels, *(record.column(c).to_pylist() for c in blends), view.generator.spec.n_classes
                )
            with torch.no_grad():
                before = render_latents(view.generator, z, labels)  # [u, H, W, C] uint8
                after = render_latents(view.generator, z_edited, out_labels)  # [n, H, W, C]
            shift = np.linalg.norm(z_edited.astype(np.float64) - z[source], axis=1)  # [n]
            values = None if strip is None else (strip, np.asarray(record.column(strip).to_pylist()))
            yield judge_probabilities(judge, before)[source], judge_probabilities(judge, after), shift, values


def check_judge(view: JobView, judge: LoadedModel, allow_same_classifier: bool) -> None:
    """Refuse (or, when allowed, warn about) a judge that is the job's own steering classifier."""
    if judge.fingerprint != view.classifier_fingerprint:
        return
    if not allow_same_classifier:
        raise ZsteerError(
            f"{judge.path}: is the classifier job {view.folder.root} steered with; {SELF_GRADING}. "
            "Pass an independent --judge, or --allow-same-classifier to judge with it anyway"
        )
    log.warning("warning: %s (job %s)", SELF_GRADING, view.folder.root)


def _direction_sign(view: JobView) -> float:
    """-1 for a direction job that moved every row by a negative fixed alpha (a removal), else +1."""
    settings = view.direction_settings
    fixed = (
        settings.get("until_prob") is None and settings.get("distance") is None and not settings.get("alphas")
    )
    alpha = settings.get("alpha")
    return -1.0 if fixed and isinstance(alpha, int | float) and alpha < 0 else 1.0


def job_targets(view: JobView, config: ReportConfig, judge: LoadedModel) -> list[tuple[int, float]]:
    """(judge attribute index, sign) of each target to score in ``view``: --target, else the job's own."""
    if config.targets:
        pairs = [parse_target(spec, judge.attributes) for spec in config.targets]
    elif view.targets:
        missing = [name for name, _ in view.targets if name not in judge.attributes]
        if missing:
            raise ZsteerError(
                f"{view.folder.root}: target {missing[0]!r} is not an attribute of the judge {judge.path} "
                f"(it has {', '.join(judge.attributes)}); name the judge's attribute with --target"
            )
        pairs = [(judge.attributes.index(name), weight) for name, weight in view.targets]
    elif view.direction in judge.attributes:  # a direction job: its direction's attribute
        pairs = [(judge.attributes.index(view.direction), _direction_sign(view))]
    else:
        raise ZsteerError(f"{view.folder.root}: the job records no targets; name them with --target")
    out = [(index, 1.0 if weight > 0 else -1.0) for index, weight in pairs if weight != 0]
    if not out:
        raise ZsteerError(f"{view.folder.root}: every target has weight 0; nothing to score")
    return out


def report_job(view: JobView, judge: LoadedModel, config: ReportConfig) -> dict:
    """The judged numbers of one job: one entry per target."""
    check_judge(view, judge, config.allow_same_classifier)
    targets = job_targets(view, config, judge)
    n_attr = len(judge.attributes)
    # One tally per target, and for a strip job per target and strip value (alpha or frame).
    tallies: dict[tuple, TargetTally] = {}
    for before, after, shift, strip in judged_rows(view, judge, config.batch):
        groups = [(None, slice(None))]
        if strip is not None:
            column, values = strip
            groups = [((column, float(v)), values == v) for v in np.unique(values)]
        for key, rows in groups:
            for order, (t, sign) in enumerate(targets):
                tally = tallies.setdefault((order, key), TargetTally(t, sign, n_attr))
                tally.add(before[rows], after[rows], shift[rows])
    if not tallies:
        raise ZsteerError(f"{view.folder.root}: the job has no committed rows yet")
    others = [i for i in range(n_attr) if i not in {t for t, _ in targets}]
    return {
        "job": str(view.folder.root),
        "name": view.folder.root.name,
        "method": view.doc.get("identity", {}).get("method"),
        "settings": {k: v for k, v in view.doc.get("identity", {}).items() if k in ("ascent", "direction")},
        "targets": [
            tally.result(judge.attributes, others)
            | ({"strip": {"column": key[1][0], "value": key[1][1]}} if key[1] else {})
            for key, tally in sorted(tallies.items(), key=lambda kv: (kv[0][0], kv[0][1] or ("", 0.0)))
        ],
    }


def demo_judge_for(jobs: tuple[Path, ...]) -> Path | None:
    """The embedded demo judge if every job ran on the embedded demo generator and classifier, else None.

    Every path of ``jobs`` must be a job folder (a one-line ZsteerError otherwise): a mistyped path is
    named as such, not taken for a job on other models."""
    docs = [read_job_doc(path)[1] for path in jobs]
    try:
        demo = demo_model_paths()
    except ZsteerError:
        return None
    judge = demo.get("judge")
    if judge is None or not judge.is_file():
        return None
    wanted = {role: file_fingerprint(demo[role]) for role in ("generator", "classifier")}
    for doc in docs:
        identity = doc.get("identity") if isinstance(doc.get("identity"), dict) else {}
        for role, fingerprint in wanted.items():
            recorded = (
                identity.get(role, {}).get("fingerprint") if isinstance(identity.get(role), dict) else None
            )
            if recorded != fingerprint:
                return None
    return judge


def load_judge(path: Path) -> LoadedModel:
    """The judge classifier at ``path``; a generator given in its place is named as one (its sidecar would
    otherwise be refused field by field, as a classifier's)."""
    try:
        return load_classifier(path)
    except ZsteerError as exc:
        classifier_error = exc
    try:
        load_generator(path)
    except ZsteerError:
        raise classifier_error from None  # no generator either: what is wrong with it as a classifier
    raise ZsteerError(
        f"--judge {path}: a generator, not a classifier; give a classifier the edits did not steer with"
    )


def build_report(config: ReportConfig, judge: LoadedModel) -> dict:
    """Judge every job of ``config``; the report's data (what report.json holds)."""
    jobs = [report_job(open_job(path), judge, config) for path in config.jobs]
    return {
        "judge": {"path": str(judge.path), "fingerprint": judge.fingerprint},
        "attributes": list(judge.attributes),
        "jobs": jobs,
    }


def report_rows(report: dict) -> list[dict]:
    """One flat row per (job, target): report.csv and the tables of report.md."""
    rows = []
    for job in report["jobs"]:
        for t in job["targets"]:
            strip = t.get("strip")
            row = {
                "job": job["name"],
                "method": job["method"],
                "target": t["target"],
                "strip": f"{strip['column']} {strip['value']:g}" if strip else "",
                # How plots and tables name the row: job, target, and the strip value if any.
                "label": f"{job['name']}: {t['target']}"
                + (f" ({strip['column']} {strip['value']:g})" if strip else ""),
                "rows": t["rows"],
                "rows_lacking_target": t["rows_lacking_target"],
                "success_rate": t["success_rate"],
                "target_prob_before": t["target_prob_before"],
                "target_prob_after": t["target_prob_after"],
                "mean_other_drift": t["mean_other_drift"],
                "mean_other_flip_rate": t["mean_other_flip_rate"],
                "latent_shift": t["latent_shift"],
            }
            row.update({f"dp_{a}": v for a, v in t["mean_abs_dp"].items()})
            row.update({f"flip_{a}": v for a, v in t["flip_rate"].items()})
            rows.append(row)
    return rows


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown(report: dict, images: dict[str, str]) -> str:
    """report.md: the summary table, the dependency matrix, extra sections, and the plots embedded."""
    rows = report_rows(report)
    attributes = report["attributes"]
    lines = [
        "# zsteer report",
        "",
        f"Judge: `{report['judge']['path']}` (fingerprint {report['judge']['fingerprint']}). Success: rows that "
        "lacked the target and gained it, by the judge. Drift: mean |dp| of the other attributes.",
        "",
        "| job | method | target | strip | rows | lacking | success | p before | p after | other drift | other flips | shift |",
        "|---" * 12 + "|",
    ]
    keys = (
        "job", "method", "target", "strip", "rows", "rows_lacking_target", "success_rate", "target_prob_before",
        "target_prob_after", "mean_other_drift", "mean_other_flip_rate", "latent_shift",
    )  # fmt: skip
    lines += ["| " + " | ".join(_fmt(row[k]) for k in keys) + " |" for row in rows]
    for title, prefix in (("Dependency matrix: mean |dp|", "dp_"), ("Flip rate", "flip_")):
        lines += ["", f"## {title}", "", "| job: target | " + " | ".join(attributes) + " |"]
        lines.append("|---" * (len(attributes) + 1) + "|")
        lines += [
            f"| {row['label']} | " + " | ".join(_fmt(row[prefix + a]) for a in attributes) + " |"
            for row in rows
        ]
    for section in report.get("sections", []):
        lines += ["", f"## {section['title']}", "", section["markdown"]]
    for title, name in images.items():
        lines += ["", f"## {title}", "", f"![{title}]({name})"]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: Path) -> dict[str, Path]:
    """Write report.json, report.csv, the plots and report.md into ``out``; the paths written."""
    from .report_plots import dependency_heatmap, pareto_plot  # matplotlib: only when writing

    out.mkdir(parents=True, exist_ok=True)
    rows = report_rows(report)
    paths = {name: out / name for name in (REPORT_JSON, REPORT_CSV, HEATMAP_PNG, PARETO_PNG, REPORT_MD)}
    write_json_atomic(paths[REPORT_JSON], report)
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomic(paths[REPORT_CSV], table.getvalue().encode())
    dependency_heatmap(rows, report["attributes"], paths[HEATMAP_PNG])
    pareto_plot(rows, paths[PARETO_PNG])
    images = {"Dependency heatmap": HEATMAP_PNG, "Success vs drift (Pareto)": PARETO_PNG}
    write_bytes_atomic(paths[REPORT_MD], markdown(report, images).encode())
    return paths
