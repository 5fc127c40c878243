"""The plots of `zsteer report` (matplotlib, the `report` extra): the dependency heatmap and the Pareto plot.

Both take the flat rows of ``report.report_rows`` and write a PNG. matplotlib is imported here only, with
the non-interactive Agg backend chosen per figure (no global ``matplotlib.use``), so nothing is changed
at import time and no display is needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zsteer.core.errors import ZsteerError


def _pyplot():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ZsteerError(
            "zsteer report draws its plots with matplotlib, which is not installed: "
            "pip install 'zsteer[report]' (or pip install matplotlib)"
        ) from None
    return Figure, FigureCanvasAgg


def _save(fig, canvas_class, path: Path) -> None:
    canvas_class(fig)
    tmp = path.with_name(".tmp-" + path.name)
    fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    tmp.replace(path)


def dependency_heatmap(rows: list[dict], attributes: list[str], path: Path) -> Path:
    """Mean |dp| per (job: target) row and judged attribute column, values written in the cells."""
    figure, canvas = _pyplot()
    matrix = np.array([[row[f"dp_{a}"] for a in attributes] for row in rows])  # [rows, A]
    labels = [row["label"] for row in rows]
    fig = figure(figsize=(1.0 + 0.75 * len(attributes), 1.2 + 0.42 * len(rows)))
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=max(float(matrix.max()), 1e-6), aspect="auto")
    ax.set_xticks(range(len(attributes)), attributes, rotation=40, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    top = matrix.max() if matrix.size else 0
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(
            j,
            i,
            f"{value:.2f}",
            ha="center",
            va="center",
            fontsize=7,
            color="white" if value < 0.6 * top else "black",
        )
    ax.set_title("Attribute dependency: mean |dp| by the judge")
    fig.colorbar(image, ax=ax, fraction=0.04)
    _save(fig, canvas, path)
    return path


def pareto_plot(rows: list[dict], path: Path, label_limit: int = 12) -> Path:
    """Success rate against mean other-attribute drift, one point per (job, target), coloured by method;
    the non-dominated points (higher success, lower drift) joined as the frontier. With more than
    ``label_limit`` points only the frontier is labelled, so the labels stay readable."""
    figure, canvas = _pyplot()
    fig = figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    targets = {row["target"] for row in rows}
    # One target for all: the label need not repeat it.
    name = (
        (lambda row: row["label"].replace(f": {row['target']}", ""))
        if len(targets) == 1
        else (lambda row: row["label"])
    )
    points = [(row["mean_other_drift"], row["success_rate"], name(row), row["method"]) for row in rows]
    points = [p for p in points if p[1] is not None]
    frontier = sorted(
        (p for p in points if not any(q[0] <= p[0] and q[1] >= p[1] and q[:2] != p[:2] for q in points)),
        key=lambda p: p[0],
    )
    for method in sorted({str(p[3]) for p in points}):
        mine = [p for p in points if str(p[3]) == method]
        ax.scatter([p[0] for p in mine], [p[1] for p in mine], s=26, label=method)
    for x, y, label, _ in points if len(points) <= label_limit else frontier:
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    if len(frontier) > 1:
        ax.plot([p[0] for p in frontier], [p[1] for p in frontier], color="gray", lw=1, ls="--", zorder=0)
    ax.set_xlabel("mean other-attribute drift (judge |dp|)")
    ax.set_ylabel("success rate (judge)")
    ax.set_ylim(-0.02, 1.04)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    title = f"{next(iter(targets))}: success vs drift" if len(targets) == 1 else "Success vs drift"
    ax.set_title(title + (", frontier labelled" if len(points) > label_limit else ""))
    _save(fig, canvas, path)
    return path
