"""Fault injection on a job's inputs while it runs: a manifest overwritten in place mid-job, Parquet pages
whose checksums fail, and hostile values in the rows."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
from jobkit import job_config, latents, read_parts, read_rejects, write_manifest

from zsteer.core.errors import ZsteerError
from zsteer.jobs import local
from zsteer.jobs.runner import run_job

pytestmark = pytest.mark.usefixtures("single_thread")
N = 300


def _config(manifest, out, models, **kw):
    return job_config(manifest, out, models, unit_rows=50, output={"rows_per_shard": 50}, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, job_models):
    """An uninterrupted job over the original manifest: (manifest, saved copy, job folder)."""
    folder = tmp_path_factory.mktemp("ref")
    manifest = write_manifest(folder / "m.parquet", {"id": np.arange(N), "z": latents(N)}, 100)
    saved = folder / "m.saved"
    shutil.copy2(manifest, saved)
    out = folder / "job"
    assert run_job(_config(manifest, out, job_models)).status == "complete"
    return manifest, saved, out


@pytest.mark.parametrize("layout", ["same", "other"])
def test_a_manifest_overwritten_in_place_mid_job_stops_it_and_nothing_of_it_is_committed(
    tmp_path, job_models, reference, monkeypatch, layout
):
    """`cp other.parquet m.parquet` while the job runs: the readers already have the file open and would
    read the new bytes under the old footer (other z under the original ids, or whole row groups as
    "unreadable" rejects). The job stops with one line; with the original back it resumes to the same
    rows as an uninterrupted run."""
    original, saved, ref = reference
    manifest = tmp_path / "m.parquet"
    shutil.copy2(saved, manifest)
    other = write_manifest(
        tmp_path / "other.parquet", {"id": np.arange(N), "z": latents(N, 9)}, 100 if layout == "same" else 64
    )
    real, started, lock = local.process_unit, [], threading.Lock()

    def overwrite_at_the_third_unit(plan, unit, editor, **kw):
        with lock:
            started.append(unit.key)
            if len(started) == 3:  # both readers have the file open by now
                with open(manifest, "r+b") as fh:  # in place, as cp does: same inode
                    fh.write(other.read_bytes())
                    fh.truncate()
        return real(plan, unit, editor, **kw)

    monkeypatch.setattr(local, "process_unit", overwrite_at_the_third_unit)
    out = tmp_path / "job"
    config = _config(manifest, out, job_models)
    with pytest.raises(ZsteerError, match=r"m\.parquet: changed since the job started") as info:
        run_job(config)
    assert "\n" not in str(info.value)
    assert read_rejects(out) is None, "rows read from the changed file were rejected and committed"
    monkeypatch.undo()
    shutil.copy2(saved, manifest)
    assert run_job(config).status == "complete"
    assert read_parts(out).equals(read_parts(ref))
