"""Duplicate ids across the whole job, found once before any unit runs, so every unit decides alone.

The rule: the first row of an id in job order (files in the job's order, rows in file order) is the
one the job edits; every later row with that id is rejected ("duplicate id ..."), whether or not the
first one is otherwise usable. That rule depends only on the inputs, so:

- a unit needs no state from the units before it: ``DuplicateIndex.later_rows`` tells, for any rows,
  which are later copies of an id, from this index alone. Units can run in any order, in threads or
  on other machines, and a unit run twice (a retry, a resume) decides the same rows the same way;
- with the commit markers (one per unit, folder.py) every row ends up exactly once in parts/ or
  rejects/: a unit's decision is a function of the inputs, and its marker says it was written.

The index is built by one pass over the id column of every file (not the z column: a fraction of the
bytes) and saved in the job folder (``duplicates.npz``), so a resume reads it back instead of scanning the
inputs or re-reading any shard. job.json's identity pins the inputs (size, mtime, footer hash), so a saved
index is valid for as long as the job is.

Memory stays bounded whatever the manifest size: the (key, position) pairs are spilled to disk in
partitions by key hash, and each partition is sorted on its own (an external hash partition: numpy has
no out-of-core sort, and the pairs are 16 bytes a row). The index itself holds only the ids that occur
more than once. String ids are keyed by a 64-bit BLAKE2b hash (``id_keys``): two different strings
collide with probability about n^2 / 2^65 (3e-8 for a million rows), in which case the later row would
be rejected as a duplicate.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from zsteer.core.errors import ZsteerError

from .manifest import ID, ManifestPlan, is_os_fault, is_unchanged
from .storage import AnyPath, storage_of

# Rows per spill partition: 16 bytes each, so about 64 MiB of pairs sorted at a time.
PARTITION_ROWS = 1 << 22
ROW_BITS = 40  # a position is file_index << ROW_BITS | row: up to 1e12 rows per file, 8M files
READ_ROWS = 1 << 16  # ids read at a time while scanning


def id_keys(ids: pa.Array) -> np.ndarray:
    """[n] int64 keys of non-null ids: the ids themselves, or 64-bit hashes of string ids."""
    if pa.types.is_integer(ids.type):
        return ids.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    # The bytes as stored (for valid UTF-8, what str.encode gives): an invalid id hashes instead of raising
    # here; the row is rejected for it (rows.invalid_text).
    raw = ids.cast(pa.large_binary() if pa.types.is_large_string(ids.type) else pa.binary())
    return np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(b, digest_size=8).digest(), "little", signed=True)
            for b in raw.to_pylist()
        ),
        dtype=np.int64,
        count=len(ids),
    )


def position(file_index: int, rows: np.ndarray) -> np.ndarray:
    """[n] int64 positions in job order of rows (indices in their file) of file ``file_index``."""
    return (np.int64(file_index) << ROW_BITS) | np.asarray(rows, np.int64)


@dataclass(frozen=True)
class DuplicateIndex:
    """The keys that occur more than once in the job, each with the position of its first row."""

    keys: np.ndarray  # [d] int64, sorted
    first: np.ndarray  # [d] int64 position of each key's first row

    def __len__(self) -> int:
        return len(self.keys)

    def later_rows(self, keys: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """[n] bool: True where a row (key, position) is a later copy of an id seen earlier in the job."""
        if not len(self.keys) or not len(keys):
            return np.zeros(len(keys), bool)
        at = np.searchsorted(self.keys, keys).clip(max=len(self.keys) - 1)
        return (self.keys[at] == keys) & (self.first[at] != positions)

    def first_of(self, key: int) -> tuple[int, int]:
        """(file index, row) of the first row of a duplicated key."""
        pos = int(self.first[np.searchsorted(self.keys, key)])
        return pos >> ROW_BITS, pos & ((1 << ROW_BITS) - 1)

    def save(self, path: AnyPath) -> None:
        """Write the index whole (under a temporary name renamed into place, or in one write to an object
        store); an error names the file."""
        buffer = io.BytesIO()  # the index holds only repeated ids: small
        np.savez(buffer, keys=self.keys, first=self.first)
        storage_of(path).write_bytes(path, buffer.getvalue())

    @staticmethod
    def load(path: AnyPath) -> DuplicateIndex:
        with np.load(io.BytesIO(storage_of(path).read_bytes(path)), allow_pickle=False) as doc:
            return DuplicateIndex(doc["keys"], doc["first"])


def _id_batches(plan: ManifestPlan):
    """(keys [n], positions [n]) of every non-null id of the job, file by file, in bounded batches.

    A row group whose ids cannot be decoded (a corrupt page, a failed page checksum) is left at that
    point: the reader rejects those rows as unreadable (reader.py), so their ids count for nothing. An
    error of the system (errno set) stops the job with one line naming the file.
    """
    for file in plan.files:
        try:
            pf = storage_of(file.path).parquet_file(
                file.path, pre_buffer=False, page_checksum_verification=True
            )
        except OSError as exc:
            raise _unreadable(file.path, exc) from None
        with pf:
            row = 0
            for group, rows in enumerate(file.row_groups):
                batches = pf.iter_batches(
                    batch_size=READ_ROWS, row_groups=[group], columns=[ID], use_threads=False
                )
                done = 0
                while True:
                    try:
                        batch = next(batches, None)
                    except Exception as exc:  # pyarrow raises OSError for decoding faults too
                        if is_os_fault(exc):
                            raise _unreadable(file.path, exc) from None
                        break
                    if batch is None:
                        break
                    ids = batch.column(0).cast(plan.id_type)
                    valid = np.flatnonzero(~ids.is_null().to_numpy(zero_copy_only=False))
                    if len(valid):
                        kept = ids.take(pa.array(valid)) if len(valid) < len(ids) else ids
                        yield id_keys(kept), position(file.index, row + done + valid)
                    done += batch.num_rows
                row += rows
        try:
            unchanged = is_unchanged(file)
        except OSError as exc:
            raise _unreadable(file.path, exc) from None
        if not unchanged:  # the ids read may be another file's: the index would be wrong for good
            raise ZsteerError(
                f"{file.path}: changed while its ids were read (size, modification time or footer differ); "
                "put the original back and run the same command again"
            )


def _unreadable(path: AnyPath, exc: OSError) -> ZsteerError:
    return ZsteerError(
        f"{path}: cannot read its ids ({exc.strerror or exc}); nothing was edited yet: make the file "
        "readable and run the same command again"
    )


def _duplicates_of(keys: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(keys seen more than once, the first position of each) of one partition."""
    order = np.lexsort((positions, keys))  # by key, then by position
    keys, positions = keys[order], positions[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])  # first row of each key
    counts = np.diff(np.r_[starts, len(keys)])
    repeated = starts[counts > 1]
    return keys[repeated], positions[repeated]


def find_duplicates(plan: ManifestPlan, scratch: Path | None) -> DuplicateIndex:
    """Scan the id column of every input once; spill to ``scratch`` (a local folder; None: the system's
    temporary folder, for a job folder on an object store) when the job is large."""
    n_parts = max(1, -(-plan.num_rows // PARTITION_ROWS))
    if n_parts == 1:
        pairs = list(_id_batches(plan))
        if not pairs:
            return DuplicateIndex(np.empty(0, np.int64), np.empty(0, np.int64))
        keys, first = _duplicates_of(
            np.concatenate([k for k, _ in pairs]), np.concatenate([p for _, p in pairs])
        )
        return DuplicateIndex(keys, first)
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, prefix=".ids-") as tmp:
        paths = [Path(tmp) / f"part-{i}.bin" for i in range(n_parts)]
        files = [open(p, "wb") for p in paths]  # noqa: SIM115 (closed below, all together)
        try:
            for keys, positions in _id_batches(plan):
                # Mix the key's bits so that sequential ids spread over the partitions evenly.
                bucket = ((keys.view(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)) % n_parts
                for i in np.unique(bucket):
                    sel = bucket == i
                    files[int(i)].write(np.stack([keys[sel], positions[sel]], axis=1).tobytes())
        finally:
            for fh in files:
                fh.close()
        found = [
            _duplicates_of(pairs[:, 0].copy(), pairs[:, 1].copy())
            for pairs in (np.fromfile(p, np.int64).reshape(-1, 2) for p in paths)
        ]
    keys = np.concatenate([k for k, _ in found])
    first = np.concatenate([f for _, f in found])
    order = np.argsort(keys, kind="stable")
    return DuplicateIndex(keys[order], first[order])
