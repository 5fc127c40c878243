"""Shared helpers of the jobs and CLI tests (no tests here): tiny models, manifests, reading a job back.

Tiny models (z_dim 8, hidden 4, 5 attributes, unit-gain weights from modelkit) keep a job over a few
thousand rows to seconds, and their edits move z, so comparisons are not noise against noise.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from modelkit import write_models

from zsteer.jobs.ascent_method import AscentMethod
from zsteer.jobs.config import EditSpec, JobConfig, OutputConfig
from zsteer.pipeline.config import AscentConfig, EngineConfig
from zsteer.pipeline.loading import ModelSource
from zsteer.pipeline.models import ClassifierSpec, GeneratorSpec

Z_DIM, N_ATTR = 8, 5
TINY_GENERATOR = GeneratorSpec(z_dim=Z_DIM, hidden_dim=4)
TINY_CLASSIFIER = ClassifierSpec(n_classes=N_ATTR, hidden_dim=4)
ATTRS = tuple(f"attr{i}" for i in range(N_ATTR))


def tiny_models(folder: Path, gspec: GeneratorSpec = TINY_GENERATOR) -> tuple[Path, Path]:
    """(generator, classifier) paths of tiny unit-gain models saved under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    return write_models(folder, gspec, TINY_CLASSIFIER)


@contextlib.contextmanager
def torch_threads(n: int):
    """torch on ``n`` threads for the block, then as before."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def one_thread():
    """torch on one thread: on a shared 2-core machine two threads were 10x slower (oversubscription)."""
    return torch_threads(1)


def latents(n: int, seed: int = 0, z_dim: int = Z_DIM) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, z_dim)).astype(np.float32)


def write_manifest(path: Path, columns: dict, row_group_size: int | None = None, schema=None) -> Path:
    """A Parquet manifest from python/numpy columns; a 2-D ``z`` becomes a fixed-size list."""
    arrays = {}
    for name, values in columns.items():
        if isinstance(values, np.ndarray) and values.ndim == 2:
            arrays[name] = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
        elif schema is not None:
            arrays[name] = pa.array(values, schema.field(name).type)
        else:
            arrays[name] = pa.array(values)
    table = pa.table(arrays, schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size or max(table.num_rows, 1))
    return path


def planted_manifests(folder: Path, sizes: dict[str, int], bad: dict, row_group_size: int) -> Path:
    """Manifests ``folder/NAME.parquet`` (ids numbered on across the files in order, a ``tag`` column
    "NAMEi") with bad rows planted: ``bad`` maps (NAME, row) to "NaN", "length", "null id",
    "duplicate" (id 5 again) or "null z". Returns ``folder``."""
    schema = pa.schema([("id", pa.int64()), ("z", pa.list_(pa.float32())), ("tag", pa.string())])
    start = 0
    for name, n in sizes.items():
        z = [list(map(float, row)) for row in latents(n, seed=start)]
        ids: list = list(range(start, start + n))
        for (file, row), fault in bad.items():
            if file != name:
                continue
            if fault == "NaN":
                z[row][3] = math.nan
            elif fault == "length":
                z[row] = z[row][:-1]
            elif fault == "null id":
                ids[row] = None
            elif fault == "duplicate":
                ids[row] = 5
            else:
                z[row] = None
        cols = {"id": ids, "z": z, "tag": [f"{name}{i}" for i in range(n)]}
        write_manifest(folder / f"{name}.parquet", cols, row_group_size=row_group_size, schema=schema)
        start += n
    return folder


def job_config(manifests, out: Path, models: tuple[Path, Path], **kw) -> JobConfig:
    """A JobConfig for tests: 3 steps, lr 0.5, images off, inline encoding, no signal handlers."""
    ascent = {"steps": 3, "lr": 0.5} | kw.pop("ascent", {})
    output = {"images": "none", "rows_per_shard": 64, "workers": 0} | kw.pop("output", {})
    return JobConfig(
        manifests=tuple(str(m) for m in (manifests if isinstance(manifests, list | tuple) else [manifests])),
        output=OutputConfig(out=out, **output),
        models=ModelSource(generator=models[0], classifier=models[1]),
        edit=EditSpec(targets=tuple(kw.pop("targets", ("attr1",))), preserve=kw.pop("preserve", None)),
        method=kw.pop("method", None) or AscentMethod(AscentConfig(**ascent)),
        engine=EngineConfig(batch_size=kw.pop("batch_size", 16)),
        handle_signals=False,
        **kw,
    )


def read_parts(out: Path) -> pa.Table:
    files = sorted((out / "parts").glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else None


def read_rejects(out: Path) -> pa.Table | None:
    files = sorted((out / "rejects").glob("rejects-*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else None


def reasons_by_row(out: Path) -> dict[int, str]:
    rejects = read_rejects(out)
    if rejects is None:
        return {}
    return dict(zip(rejects.column("row").to_pylist(), rejects.column("reason").to_pylist(), strict=True))


def crash_at_commit(monkeypatch, n: int, config) -> None:
    """Run the job with its ``n``-th commit marker failing as a crash would, then restore commits."""
    import pytest

    from zsteer.jobs import folder as folder_module
    from zsteer.jobs.runner import run_job

    real_commit = folder_module.JobFolder.commit
    calls = {"n": 0}

    def crashing_commit(self, commit):
        calls["n"] += 1
        if calls["n"] == n:
            raise RuntimeError("simulated crash")
        real_commit(self, commit)

    monkeypatch.setattr(folder_module.JobFolder, "commit", crashing_commit)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_job(config)
    monkeypatch.setattr(folder_module.JobFolder, "commit", real_commit)
