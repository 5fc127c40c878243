"""`zsteer sample`: a manifest of random latents z ~ N(0, I), reproducible from its seed.

Rows are drawn in fixed blocks of BLOCK rows, block b from its own stream seeded with (seed, b), so
the values depend only on the seed and the row, never on the row-group size, and a block can be made
without drawing the ones before it. Memory is bounded by one row group.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from zsteer.core.errors import ZsteerError

from .folder import TMP_PREFIX

BLOCK = 65536  # rows per random stream: part of the format (changing it changes every manifest)


@dataclass(frozen=True)
class SampleConfig:
    """What `zsteer sample` writes."""

    # Rows to write.
    n: int
    # Seed of the random streams: the same seed gives the same manifest.
    seed: int
    # Output Parquet file (written under a temporary name and renamed into place).
    out: Path
    # Length of z; 64 is the course generator's.
    z_dim: int = 64
    # Classes for a `label` column uniform in [0, labels) (conditional generators); None = no column.
    labels: int | None = None
    # Rows per row group: what a reader fetches at once (a job cuts row groups into its own units).
    row_group_size: int = 8192

    def __post_init__(self):
        for name, low in (("n", 1), ("z_dim", 1), ("row_group_size", 1)):
            if getattr(self, name) < low:
                raise ZsteerError(f"--{name.replace('_', '-')}: must be >= {low}, got {getattr(self, name)}")
        if self.labels is not None and self.labels < 1:
            raise ZsteerError(f"--labels: must be >= 1, got {self.labels}")


def _block(config: SampleConfig, b: int) -> tuple[np.ndarray, np.ndarray | None]:
    """z [rows, z_dim] float32 and labels [rows] int64 (or None) of block ``b``."""
    rows = min(BLOCK, config.n - b * BLOCK)
    z_rng = np.random.default_rng([config.seed, b, 0])
    z = z_rng.standard_normal((rows, config.z_dim), dtype=np.float32)
    labels = None
    if config.labels is not None:
        labels = np.random.default_rng([config.seed, b, 1]).integers(0, config.labels, rows, dtype=np.int64)
    return z, labels


def _rows(config: SampleConfig, start: int, stop: int, cache: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """Rows [start, stop) assembled from their blocks; ``cache`` keeps the last block for the next call."""
    zs, ls = [], []
    for b in range(start // BLOCK, (stop - 1) // BLOCK + 1):
        if b not in cache:
            cache.clear()
            cache[b] = _block(config, b)
        z, labels = cache[b]
        lo, hi = max(start - b * BLOCK, 0), min(stop - b * BLOCK, len(z))
        zs.append(z[lo:hi])
        if labels is not None:
            ls.append(labels[lo:hi])
    return np.concatenate(zs), (np.concatenate(ls) if ls else None)


def manifest_schema(z_dim: int, labels: bool) -> pa.Schema:
    fields = [pa.field("id", pa.int64()), pa.field("z", pa.list_(pa.float32(), z_dim))]
    if labels:
        fields.append(pa.field("label", pa.int64()))
    return pa.schema(fields)


def write_sample(config: SampleConfig) -> Path:
    """Write the manifest; returns its path. Ids are 0..n-1."""
    schema = manifest_schema(config.z_dim, config.labels is not None)
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(TMP_PREFIX + out.name)
    cache: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
    with pq.ParquetWriter(tmp, schema) as writer:
        for start in range(0, config.n, config.row_group_size):
            stop = min(start + config.row_group_size, config.n)
            z, labels = _rows(config, start, stop, cache)
            columns = [
                pa.array(np.arange(start, stop, dtype=np.int64)),
                pa.FixedSizeListArray.from_arrays(pa.array(z.reshape(-1)), config.z_dim),
            ]
            if labels is not None:
                columns.append(pa.array(labels))
            writer.write_table(pa.Table.from_arrays(columns, schema=schema), row_group_size=stop - start)
    tmp.replace(out)
    return out
