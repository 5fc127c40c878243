"""`zsteer sheet`: a before/after contact sheet of a finished (or partial) edit job.

The job folder holds the edited rows; the "before" images are rendered again from the manifest's z with
the job's generator (its fingerprint is checked), so the sheet needs nothing the job did not record.
The pieces (``first_rows``, ``starting_latents``, ``render_latents``, ``decode_png``, ``contact_sheet``)
are what `zsteer demo` draws its sheet with too.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image, ImageDraw

from zsteer.core.errors import ZsteerError
from zsteer.pipeline.checkpoints import LoadedModel, load_generator
from zsteer.pipeline.engine import to_uint8_images
from zsteer.pipeline.network import latent_input

from .folder import JOB_JSON, PARTS, JobFolder


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
        if not Path(path).is_file():
            raise ZsteerError(
                f"{path}: the job's manifest is not there (moved or deleted); the sheet renders the "
                "'before' images from it: put it back at that path"
            )
        try:
            reader = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as exc:
            raise ZsteerError(f"{path}: the job's manifest is no longer readable Parquet ({exc})") from None
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


def _job_field(job: dict, key: str, kind: type, where: Path):
    """``job["a"]["b"]`` for key "a.b", checked to be a ``kind``; a missing or odd value is one line."""
    value = job
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if not isinstance(value, kind):
        raise ZsteerError(
            f"{where}: no valid {key!r} (expected a {kind.__name__}); the file was edited or written by "
            "another zsteer version"
        )
    return value


def job_sheet(config: SheetConfig) -> Path:
    """Write the contact sheet of ``config.job``; returns its path."""
    folder = JobFolder(config.job)
    if not folder.job_json.is_file():
        raise ZsteerError(f"{config.job}: not a zsteer job folder (no {JOB_JSON})")
    job = folder.read_job(hint="not a job folder zsteer can draw")
    where = folder.job_json
    gen_path = _job_field(job, "runtime.generator_path", str, where)
    gen_spec = _job_field(job, "identity.generator.spec", dict, where)
    fingerprint = _job_field(job, "identity.generator.fingerprint", str, where)
    inputs = _job_field(job, "identity.inputs", dict, where)
    for path, recorded in inputs.items():  # a manifest rewritten in place would give wrong 'before' images
        size = recorded.get("bytes") if isinstance(recorded, dict) else None
        if size is not None and Path(path).is_file() and Path(path).stat().st_size != size:
            raise ZsteerError(f"{path}: the job's manifest changed since the job ran ({size} bytes then)")
    job_targets = _job_field(job, "identity.targets", list, where)
    if not all(isinstance(t, list) and len(t) == 2 and isinstance(t[1], int | float) for t in job_targets):
        raise ZsteerError(f"{where}: 'identity.targets' must hold [name, weight] pairs")
    names = _job_field(job, "identity.classifier", dict, where).get("attributes")
    names = names if isinstance(names, list) else []
    columns = first_rows(config.job / PARTS, config.rows)
    if not columns.get("id"):
        raise ZsteerError(f"{config.job}: the job has no edited rows yet")
    generator = load_generator(gen_path, **gen_spec)
    if generator.fingerprint != fingerprint:
        raise ZsteerError(f"{gen_path}: changed since the job ran (fingerprint differs)")
    z, labels = starting_latents(list(inputs), columns["id"])
    z_edited = np.asarray(columns["z_edited"], dtype=np.float32)
    with torch.no_grad():
        before, after = (render_latents(generator, v, labels) for v in (z, z_edited))
    if "image" in columns:  # what the job wrote is what the user gets: show that
        after = np.stack([decode_png(png) for png in columns["image"]])
    targets = [n for n, w in job_targets if w > 0] or [n for n, _ in job_targets]
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


def decode_png(data: bytes) -> np.ndarray:  # -> [H, W, C] uint8
    image = Image.open(io.BytesIO(data))
    array = np.asarray(image)
    return array[..., None] if array.ndim == 2 else array


def contact_sheet(
    columns: list[np.ndarray],  # each [N, H, W, C] uint8: e.g. before, after
    headers: list[str],  # one title per column
    captions: list[str] | None = None,  # one line per row, drawn left of it
    scale: int = 2,  # pixel repeat: 64x64 images are small on a screen
    caption_width: int = 220,
) -> Image.Image:
    """A grid with one row per latent and one column per stage, like the notebook's image grid."""
    n, h, w, c = columns[0].shape
    if any(col.shape != columns[0].shape for col in columns):
        raise ValueError("all columns must hold images of one shape")
    cell_h, cell_w, pad, head = h * scale, w * scale, 4, 18
    left = caption_width if captions else 0
    sheet = Image.new(
        "RGB", (left + len(columns) * (cell_w + pad) + pad, head + n * (cell_h + pad) + pad), "white"
    )
    draw = ImageDraw.Draw(sheet)
    for j, title in enumerate(headers):
        draw.text((left + pad + j * (cell_w + pad), 3), title, fill="black")
    for i in range(n):
        y = head + pad + i * (cell_h + pad)
        if captions:
            draw.text((4, y + cell_h // 2 - 6), captions[i][:36], fill="black")
        for j, col in enumerate(columns):
            tile = col[i] if c == 3 else np.repeat(col[i][..., :1], 3, axis=2)
            tile = tile.repeat(scale, axis=0).repeat(scale, axis=1)
            sheet.paste(Image.fromarray(tile), (left + pad + j * (cell_w + pad), y))
    return sheet
