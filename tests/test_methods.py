"""The edit-method seam: a toy method in one module-sized class, registered from the test, run as a job.

The "identity" method returns every z unchanged (docs/ARCHITECTURE.md, "Adding an edit method", is
what it follows). It proves that the job knows methods only through the EditMethod interface: its
identity, its override columns, its output columns and its editor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pytest
import torch
from jobkit import crash_at_commit, job_config, latents, read_parts, read_rejects, write_manifest

from zsteer.core.errors import ZsteerError
from zsteer.core.status import STEPS_DONE
from zsteer.jobs.method import register_method, result_columns, result_fields, unregister_method
from zsteer.jobs.runner import run_job
from zsteer.pipeline.editor import EditBatch, EditResult, as_tensor, to_uint8_images
from zsteer.pipeline.network import EditNet


class IdentityEditor:
    """An Editor that leaves z where it is and reports the classifier's logits there."""

    def __init__(self, net: EditNet):
        self.net = net.eval()

    @torch.no_grad()
    def render(self, z, labels=None):
        images = self.net.generate(
            self.net.latent_input(as_tensor(z, torch.device("cpu"), torch.float32), None)
        )
        return to_uint8_images(images), self.net.classify(images).float()

    def edit_batch(self, batch: EditBatch, render: bool = True) -> EditResult:
        z = as_tensor(batch.z, torch.device("cpu"), torch.float32)
        images, logits = self.render(z)
        n = z.shape[0]
        return EditResult(
            z_edited=z.clone(), logits_before=logits, logits_after=logits, latent_shift=torch.zeros(n),
            steps_taken=torch.zeros(n, dtype=torch.int32), status=torch.full((n,), STEPS_DONE, dtype=torch.int32),
            images=images if render else None,
        )  # fmt: skip


@dataclass(frozen=True)
class IdentityMethod:
    name: ClassVar[str] = "identity"
    row_columns: ClassVar[tuple[str, ...]] = ()  # reads no override column: `steps` is only carried
    scale: float = 1.0  # a setting, to show that identity() is what a resume compares

    def identity(self) -> dict:
        return {"identity": {"scale": self.scale}}

    @property
    def default_steps(self) -> int:
        return 0

    @property
    def default_stop_prob(self) -> float:
        return float("nan")

    def output_fields(self, z_dim: int, n_attributes: int) -> list[pa.Field]:
        return result_fields(z_dim, n_attributes)

    def output_columns(self, result: EditResult, rows: slice) -> list[pa.Array]:
        return result_columns(result, rows)

    def make_editor(self, generator, classifier, engine, backend):
        return IdentityEditor(EditNet(generator, classifier))


@pytest.fixture
def identity_method():
    register_method(IdentityMethod)
    yield IdentityMethod
    unregister_method(IdentityMethod.name)


def test_an_identity_method_runs_as_a_job_and_resumes_exactly_once(
    tmp_path, job_models, identity_method, monkeypatch
):
    n = 90
    z = latents(n, seed=3)
    z[5] = np.nan  # validation is the job's, whatever the method: rejected
    path = write_manifest(
        tmp_path / "m.parquet", {"id": np.arange(n), "z": z, "steps": np.full(n, -1)}, row_group_size=30
    )
    out = tmp_path / "job"
    config = job_config(path, out, job_models, method=IdentityMethod())
    crash_at_commit(monkeypatch, 2, config)
    assert len(list((out / "commits").glob("commit-*.json"))) < 3
    assert run_job(config).status == "complete"

    parts, rejects = read_parts(out), read_rejects(out)
    ids = parts.column("id").to_pylist()
    assert sorted(ids) == [i for i in range(n) if i != 5] and rejects.column("row").to_pylist() == [5]
    edited = np.array(parts.column("z_edited").to_pylist(), np.float32)
    np.testing.assert_array_equal(edited, z[ids])  # unchanged, bit for bit
    assert set(parts.column("stop_reason").to_pylist()) == {"steps"}
    assert parts.column("steps").to_pylist() == [-1] * (n - 1), "not an override of this method: carried"
    doc = json.loads((out / "job.json").read_text())
    assert doc["identity"]["method"] == "identity" and doc["identity"]["identity"] == {"scale": 1.0}
    with pytest.raises(ZsteerError, match=r"identity\.scale: 1\.0 -> 2\.0"):
        run_job(job_config(path, out, job_models, method=IdentityMethod(scale=2.0)))


def test_a_method_that_is_not_registered_is_refused(tmp_path, job_models):
    path = write_manifest(tmp_path / "m.parquet", {"id": np.arange(3), "z": latents(3)})
    with pytest.raises(ZsteerError, match="--method identity: unknown edit method; known: ascent"):
        run_job(job_config(path, tmp_path / "job", job_models, method=IdentityMethod()))
