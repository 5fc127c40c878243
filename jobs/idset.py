"""The ids a job has accepted so far, to reject duplicates across row groups and files.

Memory: 8 bytes per accepted row in sorted int64 arrays (1M rows: 8 MB, plus a transient copy while
two runs merge; 100M rows: 800 MB), against about 60-90 bytes per id for a Python set. This is the one
structure of a job that grows with its size; everything else is bounded by batch and shard sizes.

Integer ids are kept exactly. String ids are kept as 64-bit BLAKE2b hashes: two different strings
collide with probability about n^2 / 2^65 (3e-8 for a million rows, 3e-6 for ten million), in which
case the later row would be rejected as a duplicate.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

MERGE_MIN = 1 << 16  # the pending run merges into the main run once it is this big ...
MERGE_FRACTION = 8  # ... or 1/8 of the main run: amortised O(log n) work per id


def id_keys(ids: pa.Array) -> np.ndarray:
    """[n] int64 keys of non-null ids: the ids themselves, or hashes of string ids."""
    if pa.types.is_integer(ids.type):
        return ids.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    return np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "little", signed=True)
            for s in ids.to_pylist()
        ),
        dtype=np.int64,
        count=len(ids),
    )


def _sorted_union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a and b (disjoint) as one sorted array; sorted in place, so the peak is one copy, not two."""
    merged = np.concatenate([a, b])
    merged.sort()
    return merged


class IdSet:
    """A set of int64 keys in two sorted runs (a big main run and a small pending one)."""

    def __init__(self):
        self._main = np.empty(0, np.int64)  # sorted
        self._pending = np.empty(0, np.int64)  # sorted, small

    def __len__(self) -> int:
        return len(self._main) + len(self._pending)

    def _contains(self, keys: np.ndarray) -> np.ndarray:  # [n] bool
        found = np.zeros(len(keys), bool)
        for run in (self._main, self._pending):
            if len(run):
                pos = np.searchsorted(run, keys).clip(max=len(run) - 1)
                found |= run[pos] == keys
        return found

    def add_new(self, keys: np.ndarray) -> np.ndarray:
        """Add ``keys`` [n] in order; returns [n] bool, True where a key was not seen before.

        A key repeated within ``keys`` is new only at its first position.
        """
        keys = np.asarray(keys, np.int64)
        new = np.zeros(len(keys), bool)
        if not len(keys):
            return new
        _, first = np.unique(keys, return_index=True)
        new[first] = True
        new &= ~self._contains(keys)
        self._pending = _sorted_union(self._pending, keys[new])
        if len(self._pending) >= max(MERGE_MIN, len(self._main) // MERGE_FRACTION):
            self._main = _sorted_union(self._main, self._pending)
            self._pending = np.empty(0, np.int64)
        return new
