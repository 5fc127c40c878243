"""Making a finished unit durable: its shards, its rejects, then its marker (the protocol is in folder.py).

Plain functions of the unit's output and the folder, so any executor's worker can commit the units it
finished, in any order, with no counter shared with other workers: every name comes from the unit.
``run_and_commit`` is what every executor's worker does with a unit (jobs/local.py's threads, the Ray
actors of jobs/ray_executor.py): ``process_unit`` then ``commit_unit``, timed per stage.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import pyarrow as pa

from zsteer.pipeline.editor import Editor

from .folder import PARTS, REJECTS, Commit, CommittedElsewhere, JobFolder, shard_name
from .rows import Unit
from .unit import UnitCancelled, UnitOutput, UnitPlan, process_unit

# The stages a committed unit reports for summary.json (summary.STAGES): process_unit's, then the write.
UNIT_STAGES = ("read", "compute", "encode")


@dataclass
class UnitDone:
    """A committed unit as its worker reports it: the marker and what the unit cost (small, picklable)."""

    commit: Commit
    seconds: dict[str, float] = field(default_factory=dict)  # read, compute, encode, write
    encoder_peak_mb: float = 0.0  # largest PNG encoder process while the unit ran (0: none ran)


def _shards(table: pa.Table, rows_per_shard: int) -> list[pa.Table]:
    """The table in slices of at most rows_per_shard rows (none for an empty table)."""
    return [table.slice(s, rows_per_shard) for s in range(0, table.num_rows, rows_per_shard)]


def commit_unit(folder: JobFolder, output: UnitOutput, rows_per_shard: int) -> Commit:
    """Write the unit's parts and rejects (under temporary names renamed into place, or on an object
    store once each under names of this attempt's own), then its marker, which records each file's size
    and sha256 (checked on resume and by `zsteer verify`). Returns the marker that counts: on an object
    store, where another attempt of the unit (a retry, a zombie worker) created it first, that one's, and
    this attempt's files are removed (for space only: no marker names them, so nothing reads them)."""
    if output.n_rows != output.unit.n_rows:  # every row of the unit, exactly once
        raise RuntimeError(
            f"unit {output.unit.key}: {output.n_rows - output.rejects.num_rows} edited + "
            f"{output.rejects.num_rows} rejected, "
            f"{output.unit.n_rows} in the manifest"
        )
    key = output.unit.key
    token = folder.attempt_token()
    files: dict[str, dict] = {}
    names: dict[str, list[str]] = {PARTS: [], REJECTS: []}
    for kind, table in ((PARTS, output.edited), (REJECTS, output.rejects)):
        for k, shard in enumerate(_shards(table, rows_per_shard)):
            name = shard_name(kind, key, k, token)
            files[name] = asdict(folder.storage.write_parquet(shard, folder.root / kind / name))
            names[kind].append(name)
    commit = Commit(
        unit=output.unit.key,
        parts=names[PARTS],
        rejects=names[REJECTS],
        rows=output.n_rows,
        edited=output.n_rows - output.rejects.num_rows,  # input rows: several output rows may share one
        rejected=output.rejects.num_rows,
        stop_reasons=dict(sorted(output.stop_reasons.items())),
        files=files,
        output_rows=None if output.inputs is None else output.edited.num_rows,
    )
    try:
        folder.commit(commit)
    except CommittedElsewhere:
        for path, _ in commit.paths(folder):
            folder.storage.remove(path)
        return folder.read_marker(folder.marker(key))
    return commit


def run_and_commit(
    plan: UnitPlan,
    unit: Unit,
    editor: Editor,
    folder: JobFolder,
    rows_per_shard: int,
    **unit_args,
) -> UnitDone | None:
    """One unit, start to durable: ``process_unit`` (``unit_args`` are its keyword arguments: reader,
    encode, cancelled, on_rows) then ``commit_unit``; None when ``cancelled()`` turned true first (nothing
    committed, the unit is done again by a later run)."""
    try:
        output = process_unit(plan, unit, editor, **unit_args)
    except UnitCancelled:
        return None
    start = time.perf_counter()
    commit = commit_unit(folder, output, rows_per_shard)
    seconds = {stage: output.seconds[stage] for stage in UNIT_STAGES}
    seconds["write"] = time.perf_counter() - start
    return UnitDone(commit, seconds, output.encoder_peak_mb)
