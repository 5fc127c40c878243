"""Before/after contact sheets, like the notebook's image grid, for a person to look at."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw


def decode_png(data: bytes) -> np.ndarray:  # -> [H, W, C] uint8
    image = Image.open(io.BytesIO(data))
    array = np.asarray(image)
    return array[..., None] if array.ndim == 2 else array


def encode_png(image: np.ndarray) -> bytes:  # [H, W, C] uint8 -> PNG bytes
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
        buffer, format="PNG", compress_level=1
    )
    return buffer.getvalue()


def contact_sheet(
    columns: list[np.ndarray],  # each [N, H, W, C] uint8: e.g. before, after
    headers: list[str],  # one title per column
    captions: list[str] | None = None,  # one line per row, drawn left of it
    scale: int = 2,  # pixel repeat: 64x64 images are small on a screen
    caption_width: int = 220,
) -> Image.Image:
    """A grid with one row per latent and one column per stage."""
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
