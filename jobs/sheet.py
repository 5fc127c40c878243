"""`zsteer sheet`: a before/after contact sheet of a finished (or partial) edit job.

The job folder holds the edited rows; the "before" images are rendered again from the manifest's z with
the job's generator (its fingerprint is checked), so the sheet needs nothing the job did not record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from zsteer.pipeline.checkpoints import LoadedModel, load_generator
from zsteer.pipeline.engine import to_uint8_images
from zsteer.pipeline.errors import ZsteerError
from zsteer.pipeline.network import latent_input
from zsteer.pipeline.sheet import contact_sheet, decode_png

from .folder import JOB_JSON, PARTS


@dataclass(frozen=True)
class SheetConfig:
    """What `zsteer sheet` draws."""

    # The job folder written by `zsteer edit`.
    job: Path
    # Output PNG.
    out: Path
    # Rows (latents) on the sheet, taken in output order.
    rows: int = 16
    # Pixel repeat of each 64x64 image.
    scale: int = 2


def first_rows(parts: Path, n: int) -> dict[str, list]:
    """Columns of the first ``n`` edited rows, reading shards in name order and stopping early."""
    out: dict[str, list] = {}
    taken = 0
    for shard in sorted(parts.glob("part-*.parquet")):
        table = pq.read_table(shard).slice(0, n - taken)
        for name in table.column_names:
            out.setdefault(name, []).extend(table.column(name).to_pylist())
        taken += table.num_rows
        if taken >= n:
            break
    return out


def starting_latents(inputs: list[str], ids: list) -> tuple[np.ndarray, np.ndarray | None]:
    """z [n, z_dim] (and labels [n]) of ``ids`` from the job's manifests, row group by row group."""
    wanted = {key: i for i, key in enumerate(ids)}
    z: list = [None] * len(ids)
    labels: list = [None] * len(ids)
    for path in inputs:
        reader = pq.ParquetFile(path)
        columns = [c for c in ("id", "z", "label") if c in reader.schema_arrow.names]
        for group in range(reader.num_row_groups):
            table = reader.read_row_group(group, columns=columns).to_pydict()
            for row, key in enumerate(table["id"]):
                if key in wanted:
                    z[wanted[key]] = table["z"][row]
                    labels[wanted[key]] = table.get("label", [None] * (row + 1))[row]
            if all(v is not None for v in z):
                has_labels = labels[0] is not None
                return np.asarray(z, dtype=np.float32), np.asarray(labels) if has_labels else None
    missing = next(key for key, i in wanted.items() if z[i] is None)
    raise ZsteerError(f"id {missing!r} of the job's output is in none of its manifests {inputs}")


def _caption(row: int, columns: dict[str, list], target: int | None, name: str) -> str:
    if target is None:
        return f"id {columns['id'][row]}"
    before = 1 / (1 + np.exp(-columns["logits_before"][row][target]))
    after = 1 / (1 + np.exp(-columns["logits_after"][row][target]))
    return f"id {columns['id'][row]}: {name} {before:.2f}->{after:.2f}"


def job_sheet(config: SheetConfig) -> Path:
    """Write the contact sheet of ``config.job``; returns its path."""
    job_json = config.job / JOB_JSON
    if not job_json.is_file():
        raise ZsteerError(f"{config.job}: not a zsteer job folder (no {JOB_JSON})")
    job = json.loads(job_json.read_text(encoding="utf-8"))
    identity, runtime = job["identity"], job["runtime"]
    columns = first_rows(config.job / PARTS, config.rows)
    if not columns.get("id"):
        raise ZsteerError(f"{config.job}: the job has no edited rows yet")
    gen_doc = identity["generator"]
    generator = load_generator(runtime["generator_path"], **gen_doc["spec"])
    if generator.fingerprint != gen_doc["fingerprint"]:
        raise ZsteerError(f"{runtime['generator_path']}: changed since the job ran (fingerprint differs)")
    z, labels = starting_latents(list(identity["inputs"]), columns["id"])
    z_edited = np.asarray(columns["z_edited"], dtype=np.float32)
    with torch.no_grad():
        before, after = (render_latents(generator, v, labels) for v in (z, z_edited))
    if "image" in columns:  # what the job wrote is what the user gets: show that
        after = np.stack([decode_png(png) for png in columns["image"]])
    names = identity["classifier"].get("attributes") or []
    targets = [n for n, w in identity["targets"] if w > 0] or [n for n, _ in identity["targets"]]
    target = names.index(targets[0]) if targets and targets[0] in names else None
    captions = [
        _caption(i, columns, target, targets[0] if targets else "") for i in range(len(columns["id"]))
    ]
    sheet = contact_sheet([before, after], ["before", "after"], captions, scale=config.scale)
    config.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(config.out)
    return config.out


def render_latents(generator: LoadedModel, z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """uint8 images [n, H, W, C] for z [n, z_dim]."""
    lab = None if labels is None else torch.from_numpy(labels)
    z_in = latent_input(torch.from_numpy(z), lab, generator.spec.n_classes)
    return to_uint8_images(generator.module(z_in)).numpy()
