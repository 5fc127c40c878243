"""`zsteer sheet`: a before/after contact sheet of a finished (or partial) edit job.

The job folder holds the edited rows; the "before" images are rendered again from the manifest's z with
the job's generator (its fingerprint is checked), so the sheet needs nothing the job did not record.
The pieces (``first_rows``, ``starting_latents``, ``render_latents``, ``decode_png``, ``contact_sheet``)
are what `zsteer demo` draws its sheet with too.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from PIL import Image, ImageDraw

from zsteer.core.errors import ZsteerError, first_line
from zsteer.pipeline.checkpoints import LoadedModel
from zsteer.pipeline.directions import blend_classes
from zsteer.pipeline.engine import to_uint8_images
from zsteer.pipeline.generic_net import invariant_call
from zsteer.pipeline.network import latent_input

from .jobview import ManifestLatents, open_job
from .storage import AnyPath, storage_of


@dataclass(frozen=True)
class SheetConfig:
    """What `zsteer sheet` draws."""

    # The job folder written by `zsteer edit`: a path or a URI (jobs/storage.py).
    job: Path | str
    # Output image (PNG, or another format PIL writes, by the file's extension).
    out: Path
    # Rows (latents) on the sheet, taken in output order.
    rows: int = 16
    # Pixel repeat of each 64x64 image.
    scale: int = 2


def read_shard(shard: AnyPath) -> pa.Table:
    """One output shard; one the job wrote but that was truncated or damaged since is a one-line error."""
    try:
        with storage_of(shard).parquet_file(shard) as pf:
            return pf.read()
    except (pa.ArrowException, OSError) as exc:
        raise ZsteerError(
            f"{shard}: unreadable ({first_line(exc)}); `zsteer verify {shard.parent.parent}` lists the damaged files, "
            "and running the job's `zsteer edit` command again redoes them"
        ) from None


def first_rows(shards: list[AnyPath], n: int) -> dict[str, list]:
    """Columns of the first ``n`` edited rows of ``shards`` (``JobFolder.committed_parts``), stopping early."""
    out: dict[str, list] = {}
    taken = 0
    for shard in shards:
        table = read_shard(shard).slice(0, n - taken)
        for name in table.column_names:
            out.setdefault(name, []).extend(table.column(name).to_pylist())
        taken += table.num_rows
        if taken >= n:
            break
    return out


def starting_latents(inputs: list[str], ids: list) -> tuple[np.ndarray, np.ndarray | None]:
    """z [n, z_dim] (and labels [n]) of ``ids`` from the job's manifests."""
    return ManifestLatents(inputs).lookup(ids)


def first_strips(shards: list[AnyPath], n: int) -> dict[str, list]:
    """Columns of the output rows of the first ``n`` input ids of a strip job (all rows of each id), from
    ``shards`` (``JobFolder.committed_parts``)."""
    out: dict[str, list] = {}
    seen: list = []
    for shard in shards:
        table = read_shard(shard)
        ids = table.column("id").to_pylist()
        stop = len(ids)
        for i, value in enumerate(ids):
            if not seen or seen[-1] != value:
                if len(seen) == n:
                    stop = i
                    break
                seen.append(value)
        for name in table.column_names:
            out.setdefault(name, []).extend(table.column(name).slice(0, stop).to_pylist())
        if stop < len(ids):
            break
    return out


def _probability(logit: float) -> float:
    return float(1 / (1 + np.exp(-logit)))


def _caption(rows: list[int], columns: dict[str, list], target: int | None, name: str) -> str:
    """One short line above a sheet row: the id, then the target's probability before -> after each image."""
    text = f"id {columns['id'][rows[0]]}"
    if target is None or "logits_after" not in columns:
        return text
    before = _probability(columns["logits_before"][rows[0]][target]) if "logits_before" in columns else None
    if before is not None and math.isnan(before):  # a direction job run with --no-scores-before
        before = None
    after = " ".join(f"{_probability(columns['logits_after'][r][target]):.2f}" for r in rows)
    return f"{text} {name} " + (f"{before:.2f}->{after}" if before is not None else after)


def image_extensions() -> tuple[str, ...]:
    """The file name extensions PIL can write an image as (".png", ".jpg", ...), sorted.

    PIL's stub plugins (BUFR, GRIB, HDF5, WMF) register a save function that only works with a handler
    installed from elsewhere: they are left out.
    """
    Image.init()
    return tuple(
        sorted(
            ext
            for ext, fmt in Image.registered_extensions().items()
            if fmt in Image.SAVE
            and not Image.SAVE[fmt].__module__.endswith(("StubImagePlugin", "WmfImagePlugin"))
        )
    )


def check_image_path(path: Path, flag: str = "--out") -> None:
    """Refuse a path whose extension names no image format PIL writes, before any work (PIL would refuse
    it only when saving, after the whole sheet was rendered)."""
    accepted = image_extensions()
    suffix = Path(path).suffix.lower()
    if suffix not in accepted:
        got = f"{suffix!r}" if suffix else "no extension"
        raise ZsteerError(
            f"{flag} {path}: expected an image file name, got {got}; the extensions PIL writes are "
            f"{', '.join(accepted)} (.png is the usual one)"
        )


def job_sheet(config: SheetConfig) -> Path:
    """Write the contact sheet of ``config.job``; returns its path.

    One sheet row per input row: its "before" image, then its edited image, or for a strip job (rows
    with an ``alpha`` or ``frame`` column) every image of the strip in that column's order.
    """
    check_image_path(config.out)
    view = open_job(config.job, hint="not a job folder zsteer can draw")
    parts = view.committed_parts()  # the markers' files: never one of an attempt that did not commit
    key = view.strip_column
    columns = first_strips(parts, config.rows) if key else first_rows(parts, config.rows)
    if not columns.get("id"):
        raise ZsteerError(f"{config.job}: the job has no edited rows yet")
    strips: dict = {}
    for i, value in enumerate(columns["id"]):
        strips.setdefault(value, []).append(i)
    if key:
        for rows in strips.values():
            rows.sort(key=lambda r: columns[key][r])
    ids = list(strips)
    width = max(len(rows) for rows in strips.values())
    z, labels = starting_latents(list(view.inputs), ids)
    out_labels = None if labels is None else labels[[ids.index(v) for v in columns["id"]]]
    out_labels = output_classes(
        out_labels, columns.get("label_to"), columns.get("t"), view.generator.spec.n_classes
    )
    with torch.no_grad():
        before = render_latents(view.generator, z, labels)
        if "image" in columns:  # what the job wrote is what the user gets: show that
            after = np.stack([decode_png(png) for png in columns["image"]])
        else:
            z_edited = np.asarray(columns["z_edited"], dtype=np.float32)  # [M, z_dim]
            after = render_latents(view.generator, z_edited, out_labels)
    blank = np.full_like(after[0], 255)
    cells = [[after[rows[j]] if j < len(rows) else blank for rows in strips.values()] for j in range(width)]
    if key:
        first = strips[ids[0]]
        headers = ["before"] + [f"{key} {columns[key][r]:g}" for r in first] + [""] * (width - len(first))
    else:
        headers = ["before", "after"]
    targets = [n for n, w in view.targets if w > 0] or [n for n, _ in view.targets]
    targets = targets or ([view.direction] if view.direction else [])
    names = list(view.attributes)
    target = names.index(targets[0]) if targets and targets[0] in names else None
    captions = [_caption(rows, columns, target, targets[0] if targets else "") for rows in strips.values()]
    sheet = contact_sheet([before, *(np.stack(c) for c in cells)], headers, captions, scale=config.scale)
    config.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(config.out)
    return config.out


def render_latents(generator: LoadedModel, z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """uint8 images [n, H, W, C] for z [n, z_dim]; ``labels``: classes [n] (integers), or class vectors
    [n, C] (floats: frames that blend two classes, ``output_classes``)."""
    z_t = torch.from_numpy(z)
    if labels is not None and labels.ndim == 2:
        z_in = torch.cat([z_t, torch.from_numpy(labels).to(z_t.dtype)], dim=1)
    else:
        z_in = latent_input(
            z_t, None if labels is None else torch.from_numpy(labels), generator.spec.n_classes
        )
    # Row by row for an imported generator: an image's bits must not depend on the batch it was drawn in.
    return to_uint8_images(invariant_call(generator, generator.module, z_in)).numpy()


def output_classes(
    labels: np.ndarray | None,  # [n] each output row's input label, or None (unconditional)
    label_to: list | np.ndarray | None,  # [n] an interpolation's end class (None = none), or None
    t: list | np.ndarray | None,  # [n] the frame's fraction of the path
    n_classes: int,
) -> np.ndarray | None:
    """The class input of each output row: its label [n], or where an interpolation frame blends towards
    another class (``label_to``), class vectors [n, C] with that frame's blend, as the editor rendered it
    (pipeline/directions.blend_classes; rows that blend nothing get their own one-hot vector exactly)."""
    if labels is None or label_to is None or t is None:
        return labels
    to = np.array([-1 if v is None else v for v in label_to], np.int64)
    blend = (to >= 0) & (to != labels)
    if not blend.any():
        return labels
    at = np.where(blend, np.asarray(t, np.float32), np.float32(0))  # t = 0: the row's own class
    classes = blend_classes(
        torch.from_numpy(labels),
        torch.from_numpy(np.where(blend, to, labels)),
        torch.from_numpy(at),
        n_classes,
    )
    return classes.numpy()


def decode_png(data: bytes) -> np.ndarray:  # -> [H, W, C] uint8
    image = Image.open(io.BytesIO(data))
    array = np.asarray(image)
    return array[..., None] if array.ndim == 2 else array


def contact_sheet(
    columns: list[np.ndarray],  # each [N, H, W, C] uint8: e.g. before, after, or the frames of strips
    headers: list[str],  # one title per column
    captions: list[str] | None = None,  # one short line per row, drawn above its images
    scale: int = 2,  # pixel repeat: 64x64 images are small on a screen
) -> Image.Image:
    """A grid with one row per latent and one column per stage, like the notebook's image grid.

    Captions take one thin text line above each row rather than a column beside it, so the images fill
    the sheet's width; a caption longer than the row is cut.
    """
    n, h, w, c = columns[0].shape
    if any(col.shape != columns[0].shape for col in columns):
        raise ValueError("all columns must hold images of one shape")
    cell_h, cell_w, pad, line = h * scale, w * scale, 2, 11  # line: the default bitmap font's height
    head = line + pad
    band = (line if captions else 0) + cell_h + pad
    width = len(columns) * (cell_w + pad) + pad
    sheet = Image.new("RGB", (width, head + n * band + pad), "white")
    draw = ImageDraw.Draw(sheet)
    chars = max(1, (cell_w + pad) // 6)  # the default font is 6 px per character
    for j, title in enumerate(headers):
        draw.text((pad + j * (cell_w + pad), 1), title[:chars], fill="black")
    for i in range(n):
        y = head + i * band
        if captions:
            draw.text((pad, y), captions[i][: max(1, (width - 2 * pad) // 6)], fill="dimgray")
            y += line
        for j, col in enumerate(columns):
            tile = col[i] if c == 3 else np.repeat(col[i][..., :1], 3, axis=2)
            tile = tile.repeat(scale, axis=0).repeat(scale, axis=1)
            sheet.paste(Image.fromarray(tile), (pad + j * (cell_w + pad), y))
    return sheet
