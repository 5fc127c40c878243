"""Finding another row's z by its id, for any unit, with bounded memory: the job's latent lookup.

`--method interpolate` lets a row name its end point by ``id_to`` instead of giving ``z_to``; the row
named may be in any file and any unit. Before any unit runs, two passes over the inputs build the
lookup (as duplicates.py builds its index, and for the same reason: a unit then decides alone, on any
machine, as often as it runs):

1. the ``id_to`` column of every file: the sorted, unique keys referred to (8 bytes each);
2. the ``id`` and ``z`` columns: the z of each referred key's first row in job order (the row the job
   edits; later copies of an id are rejected as duplicates) is written into a memory-mapped array.

The lookup is saved in the job folder (``lookup/``: keys.npy, z.npy, found.npy) and read back on a
resume (job.json's identity pins the inputs). Units read it memory-mapped: a unit's look-ups touch only
the pages of the rows it names, so memory stays bounded however large the job. Keys are duplicates.id_keys
(ids, or 64-bit hashes of string ids).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from zsteer.core.errors import ZsteerError

from .duplicates import READ_ROWS, id_keys
from .folder import LOOKUP
from .manifest import ID, ManifestPlan, Z
from .rows import MAX_ABS_Z, largest_magnitudes
from .storage import storage_of


@dataclass(frozen=True)
class LatentLookup:
    """The z of every row some row names by id, memory-mapped from the job folder."""

    folder: Path  # OUT/lookup

    @cached_property
    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(np.load(self.folder / f"{name}.npy", mmap_mode="r") for name in ("keys", "z", "found"))

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(z [n, D] float32, found [n] bool) for keys [n] int64 (z is zeros where not found)."""
        known, z, found = self._arrays
        if not len(known):
            return np.zeros((len(keys), z.shape[1]), np.float32), np.zeros(len(keys), bool)
        at = np.searchsorted(known, keys).clip(max=len(known) - 1)
        hit = (known[at] == keys) & found[at]
        out = np.zeros((len(keys), z.shape[1]), np.float32)
        out[hit] = z[at[hit]]
        return out, hit


def _batches(plan: ManifestPlan, columns: list[str]):
    """(file index, record batch) of ``columns`` of every file, in job order, READ_ROWS at a time."""
    for file in plan.files:
        schema = file.schema.names
        if any(c not in schema for c in columns):
            continue  # a file without the column names nothing / holds nothing here
        try:
            with storage_of(file.path).parquet_file(file.path, pre_buffer=False) as pf:
                yield from (
                    (file.index, b) for b in pf.iter_batches(READ_ROWS, columns=columns, use_threads=False)
                )
        except OSError as exc:
            raise ZsteerError(f"{file.path}: cannot read it for the id_to lookup ({exc})") from None


def float_rows(column: pa.Array, z_dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A list column as (values [n, z_dim] float32, usable [n], null [n], largest [n]): a row is usable
    when it holds exactly z_dim finite values, none beyond MAX_ABS_Z in magnitude (the check a row's own z
    gets, jobs/rows.py); ``largest`` is each read row's largest finite |value| (0 where not read); other
    rows are zeros. Vectorised (the values are read in one piece)."""
    n = len(column)
    null = ~column.is_valid().to_numpy(zero_copy_only=False)
    values = np.zeros((n, z_dim), np.float32)
    largest = np.zeros(n, np.float32)
    lengths = pc.list_value_length(column).fill_null(-1).to_numpy(zero_copy_only=False)
    usable = lengths == z_dim
    rows = np.flatnonzero(usable)
    if len(rows):
        kept = column if len(rows) == n else column.filter(pa.array(usable))
        flat = kept.flatten()  # respects slice offsets and skips null lists
        with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf: not finite
            block = (
                flat.fill_null(np.nan).to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, z_dim)
            )
        largest[rows] = largest_magnitudes(block)
        fit = np.isfinite(block).all(axis=1) & (largest[rows] <= MAX_ABS_Z)
        values[rows[fit]] = block[fit]
        usable[rows[~fit]] = False
    return values, usable, null, largest


def build_latent_lookup(plan: ManifestPlan, column: str, z_dim: int, root: Path) -> LatentLookup:
    """The lookup of the rows that ``column`` (id_to) names, saved under ``root``/lookup (reused if there);
    ``root`` is a path of a file system (InterpolateMethod.check_job refuses an object store URI)."""
    folder = root / LOOKUP
    if all((folder / f"{name}.npy").exists() for name in ("keys", "z", "found")):
        return LatentLookup(folder)
    chunks = []
    for _, batch in _batches(plan, [column]):
        named = batch.column(0)
        named = named.filter(named.is_valid())
        if len(named):
            chunks.append(np.unique(id_keys(named.cast(plan.id_type))))
    keys = np.unique(np.concatenate(chunks)) if chunks else np.empty(0, np.int64)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ".tmp-z.npy"
    z = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(keys), z_dim))
    found = np.zeros(len(keys), bool)
    seen = np.zeros(len(keys), bool)  # the first row of a key in job order decides, usable or not
    if len(keys):
        for _, batch in _batches(plan, [ID, Z]):
            ids = batch.column(0).cast(plan.id_type)
            valid = np.flatnonzero(ids.is_valid().to_numpy(zero_copy_only=False))
            if not len(valid):
                continue
            row_keys = id_keys(ids.take(pa.array(valid)))
            at = np.searchsorted(keys, row_keys).clip(max=len(keys) - 1)
            hit = (keys[at] == row_keys) & ~seen[at]
            if not hit.any():
                continue
            _, first = np.unique(at[hit], return_index=True)  # the first of a key within the batch
            rows, slots = valid[hit][first], at[hit][first]
            values, usable, _, _ = float_rows(batch.column(1).take(pa.array(rows)), z_dim)
            z[slots[usable]] = values[usable]
            found[slots] = usable
            seen[slots] = True
    z.flush()
    del z
    for name, array in (("keys", keys), ("found", found)):
        part = folder / f".tmp-{name}.npy"
        np.save(part, array)
        os.replace(part, folder / f"{name}.npy")
    os.replace(tmp, folder / "z.npy")  # last: its presence with the others marks a finished lookup
    return LatentLookup(folder)
