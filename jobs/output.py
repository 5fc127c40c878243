"""The output shard schema (DESIGN.md) and the Arrow table of one edited batch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from zsteer.kernels.ascent_update import STATUS_NAMES

# stop_reason strings by status code: "steps", "target_reached", "max_shift", "non_finite".
_REASONS = np.array([STATUS_NAMES.get(i, f"status_{i}") for i in range(max(STATUS_NAMES) + 1)], dtype=object)


def output_schema(carried: pa.Schema, z_dim: int, n_attributes: int, images: bool) -> pa.Schema:
    """id, carried columns, then the edit's results; `image` (PNG bytes) only when images are on."""
    fields = list(carried) + [
        pa.field("z_edited", pa.list_(pa.float32(), z_dim)),
        pa.field("logits_before", pa.list_(pa.float32(), n_attributes)),
        pa.field("logits_after", pa.list_(pa.float32(), n_attributes)),
        pa.field("latent_shift", pa.float32()),
        pa.field("steps_taken", pa.int32()),
        pa.field("stop_reason", pa.string()),
    ]
    if images:
        fields.append(pa.field("image", pa.binary()))
    return pa.schema(fields)


@dataclass
class BatchResult:
    """One engine batch's results as numpy arrays (what crosses from the compute thread to the writer)."""

    z_edited: np.ndarray  # [n, z_dim] float32
    logits_before: np.ndarray  # [n, A] float32
    logits_after: np.ndarray  # [n, A] float32
    latent_shift: np.ndarray  # [n] float32
    steps_taken: np.ndarray  # [n] int32
    status: np.ndarray  # [n] int32 codes (kernels.ascent_update.STATUS_NAMES)

    def stop_reasons(self) -> np.ndarray:  # [n] object (str)
        return _REASONS[self.status]


def _fixed_list(values: np.ndarray) -> pa.FixedSizeListArray:  # [n, k] -> fixed_size_list<float32>[k]
    values = np.ascontiguousarray(values, np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def batch_table(
    carried: pa.Table, result: BatchResult, pngs: list[bytes] | None, schema: pa.Schema
) -> pa.Table:
    """The output rows of one batch: ``carried`` [n] beside the results [n] (and PNGs [n])."""
    columns = list(carried.columns) + [
        _fixed_list(result.z_edited),
        _fixed_list(result.logits_before),
        _fixed_list(result.logits_after),
        pa.array(result.latent_shift.astype(np.float32)),
        pa.array(result.steps_taken.astype(np.int32)),
        pa.array(result.stop_reasons(), pa.string()),
    ]
    if pngs is not None:
        columns.append(pa.array(pngs, pa.binary()))
    return pa.Table.from_arrays(columns, schema=schema)
