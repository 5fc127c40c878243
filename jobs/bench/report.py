"""A benchmark report as JSON (the record), CSV (one row per cell, every setting in it), Markdown (a
wiki table) and a terminal table; baselines and side-by-side comparison of two reports.

A cell of one report matches a cell of another when every matrix setting (``BenchCell``) is equal.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from zsteer.core.errors import ZsteerError, quoted_json

from ..folder import write_bytes_atomic
from .config import BenchCell
from .run import FORMAT

_DEFAULT_CELL = BenchCell().settings()
KEY = tuple(_DEFAULT_CELL)
LATENCY = ("min", "median", "p90", "p95", "p99")
# Result fields copied into a flat row as they are.
RESULT_FIELDS = (
    "latents_per_second", "images_per_second", "stable", "windows", "iterations", "first_call_seconds",
    "setup_seconds", "peak_rss_mb", "peak_cuda_mb", "flops_per_latent", "achieved_gflops",
    "peak_fp32_gflops", "roofline_fraction", "job_rows", "error",
)  # fmt: skip


def cell_setting(cell: dict, name: str):
    """One setting of a report's cell; one that a report of an older zsteer lacks is the default it ran
    with then (precision: fp32)."""
    return cell.get(name, _DEFAULT_CELL[name])


def cell_key(cell: dict) -> tuple:
    """A cell's settings in KEY order (``cell_setting`` each)."""
    return tuple(cell_setting(cell, name) for name in KEY)


# A cell's settings and the JSON types each takes; a report may lack only those added after FORMAT's
# first release (OPTIONAL_SETTINGS: cell_setting gives the default they ran with).
_SETTING_TYPES = {
    name: (int, type(None)) if name == "threads" else (int,) if isinstance(value, int) else (str,)
    for name, value in _DEFAULT_CELL.items()
}
OPTIONAL_SETTINGS = ("precision",)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _cell_problem(entry) -> tuple[str, str] | None:
    """What is wrong with one entry of a report's ``cells``: (the field, what it should be), or None."""
    if not isinstance(entry, dict):
        return "", f"expected an object with 'cell' and 'result', got {quoted_json(entry, 40)}"
    for part in ("cell", "result"):
        if part not in entry:
            return part, "missing"
        if not isinstance(entry[part], dict):
            return part, f"expected an object, got {quoted_json(entry[part], 40)}"
    cell, result = entry["cell"], entry["result"]
    for name, types in _SETTING_TYPES.items():
        if name not in cell:
            if name in OPTIONAL_SETTINGS:
                continue
            return f"cell.{name}", "missing"
        value = cell[name]
        if isinstance(value, bool) or not isinstance(value, types):
            expected = " or ".join({int: "an integer", str: "a string"}.get(t, "null") for t in types)
            return f"cell.{name}", f"expected {expected}, got {quoted_json(value, 40)}"
    if "latents_per_second" in result:
        rate = result["latents_per_second"]
        if not (_is_number(rate) and rate >= 0):
            return "result.latents_per_second", f"expected a finite number >= 0, got {quoted_json(rate, 40)}"
    latency = result.get("batch_latency_ms", {})
    if not isinstance(latency, dict) or not all(v is None or _is_number(v) for v in latency.values()):
        return "result.batch_latency_ms", f"expected an object of numbers, got {quoted_json(latency, 40)}"
    if "error" in result and not isinstance(result["error"], str):
        return "result.error", f"expected a string, got {quoted_json(result['error'], 40)}"
    return None


def read_report(path: str | Path) -> dict:
    """A report written by ``write_json``; a one-line error for anything else, naming the cell index and
    the field of a malformed cell (baselines and comparisons read every cell's settings and rate)."""
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ZsteerError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ZsteerError(f"{path}: not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("cells"), list):
        raise ZsteerError(f"{path}: not a `zsteer bench --json` report (expected format {FORMAT!r})")
    for index, entry in enumerate(doc["cells"]):
        problem = _cell_problem(entry)
        if problem is not None:
            field, what = problem
            raise ZsteerError(f"{path}: cells[{index}]{'.' + field if field else ''}: {what}")
    return doc


def write_json(report: dict, path: str | Path) -> Path:
    path = Path(path)
    write_bytes_atomic(path, (json.dumps(report, indent=2, sort_keys=False) + "\n").encode())
    return path


def flat_rows(report: dict) -> list[dict]:
    """One flat dict per cell: its settings, results, stages, and the run's environment and settings."""
    env, settings = report["environment"], report["settings"]
    common = {
        **{f"version_{k}": v for k, v in env["versions"].items()},
        "cpu": env["cpu"], "cpu_count": env["cpu_count"], "platform": env["platform"],
        "seed": settings["seed"], "targets": " ".join(settings["targets"]),
        **{f"control_{k}": v for k, v in settings["control"].items()},
        "generator_fingerprint": settings["generator"]["fingerprint"],
        "classifier_fingerprint": settings["classifier"]["fingerprint"],
        "impl": settings["impl"], "workers": settings["workers"],
    }  # fmt: skip
    stages = sorted({s for c in report["cells"] for s in c["result"].get("stage_ms_per_batch", {})})
    rows = []
    for entry in report["cells"]:
        cell, result = entry["cell"], entry["result"]
        row = {name: cell.get(name) for name in KEY}
        row["device_name"] = env["devices"].get(cell["device"])
        row["threads_used"] = result.get("threads")
        row |= {name: result.get(name) for name in RESULT_FIELDS}
        latency = result.get("batch_latency_ms", {})
        row |= {f"latency_{q}_ms": latency.get(q) for q in LATENCY}
        row |= {f"stage_{s}_ms": result.get("stage_ms_per_batch", {}).get(s) for s in stages}
        rows.append(row | common)
    return rows


def to_csv(report: dict) -> str:
    rows = flat_rows(report)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else list(KEY), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_csv(report: dict, path: str | Path) -> Path:
    path = Path(path)
    write_bytes_atomic(path, to_csv(report).encode())
    return path


def _num(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


_COLUMNS = (
    "mode", "backend", "method", "batch", "steps", "images", "device", "threads", "precision", "latents/s", "images/s",
    "p50 ms", "p90 ms", "p99 ms", "GFLOP/s", "of fp32 peak", "first call s", "peak RSS MiB", "stable",
)  # fmt: skip


def _table_rows(report: dict) -> list[list[str]]:
    rows = []
    for entry in report["cells"]:
        c, r = entry["cell"], entry["result"]
        head = [c["mode"], c["backend"], c["method"], str(c["batch_size"]), str(c["steps"]), c["images"],
                c["device"], _num(r.get("threads", c["threads"])), cell_setting(c, "precision")]  # fmt: skip
        if "error" in r:
            rows.append(head + [f"error: {r['error']}"] + [""] * (len(_COLUMNS) - len(head) - 1))
            continue
        lat = r["batch_latency_ms"]
        stable = "yes" if r["stable"] else "UNSTABLE"
        rows.append(head + [
            _num(r["latents_per_second"]), _num(r["images_per_second"]), _num(lat["median"], 2),
            _num(lat["p90"], 2), _num(lat["p99"], 2), _num(r["achieved_gflops"]), _pct(r["roofline_fraction"]),
            _num(r["first_call_seconds"], 2), _num(r["peak_rss_mb"], 0), stable,
        ])  # fmt: skip
    return rows


def _stage_lines(report: dict) -> list[str]:
    lines = []
    for entry in report["cells"]:
        stages = entry["result"].get("stage_ms_per_batch")
        if stages:
            c = entry["cell"]
            shown = ", ".join(f"{k} {v:.2f}" for k, v in stages.items())
            precision = cell_setting(c, "precision")
            precision = "" if precision == _DEFAULT_CELL["precision"] else f" {precision}"
            lines.append(f"  {c['mode']} {c['backend']} b{c['batch_size']} {c['images']}{precision}: {shown}")
    return lines


def _align(rows: list[list[str]], right_from: int) -> list[str]:
    """Rows of cells as padded text lines; columns from ``right_from`` on (numbers) right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            v.rjust(w) if i >= right_from else v.ljust(w)
            for i, (v, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in rows
    ]


def table(report: dict) -> str:
    """The terminal table: one line per cell, then the stages (ms per batch) and the matmul peaks."""
    lines = _align([list(_COLUMNS), *_table_rows(report)], right_from=_COLUMNS.index("latents/s"))
    stages = _stage_lines(report)
    if stages:
        lines += ["", "time per stage, ms per batch (exclusive):", *stages]
    for where, peaks in report.get("matmul_peak", {}).items():
        shown = ", ".join(f"{dt} {p['gflops']:.0f} GFLOP/s" for dt, p in peaks.items())
        lines.append(f"matmul peak on {where}: {shown}")
    return "\n".join(lines)


def markdown(report: dict) -> str:
    """A GitHub/wiki Markdown table of the cells, with the machine and versions under it."""
    rows = _table_rows(report)
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "|".join(" --- " for _ in _COLUMNS) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    env = report["environment"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    lines += ["", f"{env['cpu']}, {env['cpu_count']} CPUs; {versions}; {report['created_at']}"]
    return "\n".join(lines) + "\n"


def _rates(report: dict) -> dict[tuple, float]:
    return {
        cell_key(e["cell"]): e["result"]["latents_per_second"]
        for e in report["cells"]
        if "latents_per_second" in e["result"]
    }


def regressions(baseline: dict, current: dict, threshold: float) -> list[dict]:
    """Cells of ``current`` slower than their ``baseline`` cell by more than ``threshold`` (0.1 = 10%)."""
    before = _rates(baseline)
    found = []
    for key, rate in _rates(current).items():
        if key in before and before[key] > 0 and rate < (1 - threshold) * before[key]:
            found.append({"cell": dict(zip(KEY, key, strict=True)), "baseline": before[key], "current": rate,
                          "ratio": rate / before[key]})  # fmt: skip
    return found


def shared_cells(baseline: dict, cells: list[dict]) -> list[dict]:
    """The cells (settings dicts, as ``BenchCell.settings()`` gives them) that have a rate in ``baseline``
    to be compared with: a baseline gate with none of them would pass having compared nothing."""
    before = _rates(baseline)
    return [cell for cell in cells if cell_key(cell) in before]


def compare(a: dict, b: dict, names: tuple[str, str] = ("A", "B")) -> str:
    """Side by side: each cell's latents/s and median latency in ``a`` and ``b``, and b / a."""
    ra, rb = _rates(a), _rates(b)
    lat = {
        name: {
            cell_key(e["cell"]): e["result"].get("batch_latency_ms", {}).get("median") for e in doc["cells"]
        }
        for name, doc in zip(names, (a, b), strict=True)
    }
    header = [*KEY, f"{names[0]} latents/s", f"{names[1]} latents/s", f"{names[1]}/{names[0]}",
              f"{names[0]} p50 ms", f"{names[1]} p50 ms"]  # fmt: skip
    rows = [header]
    for key in list(dict.fromkeys([*ra, *rb])):
        x, y = ra.get(key), rb.get(key)
        ratio = f"{y / x:.3f}x" if x and y else "-"
        rows.append([_num(v) for v in key] + [_num(x), _num(y), ratio, _num(lat[names[0]].get(key), 2),
                                               _num(lat[names[1]].get(key), 2)])  # fmt: skip
    return "\n".join(_align(rows, right_from=len(KEY)))
