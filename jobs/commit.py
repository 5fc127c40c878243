"""Making a finished unit durable: its shards, its rejects, then its marker (the protocol is in folder.py).

A plain function of the unit's output and the folder, so any executor's worker can commit the units it
finished, in any order, with no counter shared with other workers: every name comes from the unit.
"""

from __future__ import annotations

import pyarrow as pa

from .folder import Commit, JobFolder, unit_stem, write_parquet_atomic
from .unit import UnitOutput


def _shards(table: pa.Table, rows_per_shard: int) -> list[pa.Table]:
    """The table in slices of at most rows_per_shard rows (none for an empty table)."""
    return [table.slice(s, rows_per_shard) for s in range(0, table.num_rows, rows_per_shard)]


def commit_unit(folder: JobFolder, output: UnitOutput, rows_per_shard: int) -> Commit:
    """Write the unit's parts and rejects under temporary names, rename them, then write its marker."""
    if output.n_rows != output.unit.n_rows:  # every row of the unit, exactly once
        raise RuntimeError(
            f"unit {output.unit.key}: {output.edited.num_rows} edited + {output.rejects.num_rows} rejected, "
            f"{output.unit.n_rows} in the manifest"
        )
    stem = unit_stem(output.unit.key)
    parts, rejects = [], []
    for k, shard in enumerate(_shards(output.edited, rows_per_shard)):
        parts.append(f"part-{stem}-{k:03d}.parquet")
        write_parquet_atomic(shard, folder.parts / parts[-1])
    for k, shard in enumerate(_shards(output.rejects, rows_per_shard)):
        rejects.append(f"rejects-{stem}-{k:03d}.parquet")
        write_parquet_atomic(shard, folder.rejects / rejects[-1])
    commit = Commit(
        unit=output.unit.key,
        parts=parts,
        rejects=rejects,
        rows=output.n_rows,
        edited=output.edited.num_rows,
        rejected=output.rejects.num_rows,
        stop_reasons=dict(sorted(output.stop_reasons.items())),
    )
    folder.commit(commit)
    return commit
