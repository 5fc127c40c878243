"""--device is checked by the executor, where the editor runs: the local executor on this machine, the
Ray executor on its cluster's resources and on each worker's node; the driver loads models on the CPU."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from jobkit import job_config, planted_manifests

from zsteer.core.errors import ZsteerError
from zsteer.pipeline.config import EngineConfig

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusals where no GPU exists")
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return planted_manifests(tmp_path_factory.mktemp("device") / "data", {"a": 40}, {}, row_group_size=20)


def _cuda(config, **options):
    """``config`` with --device cuda (and, given options, the Ray executor with them)."""
    if options:
        config = replace(config, executor="ray", executor_options=tuple(options.items()))
    return replace(config, engine=EngineConfig(device="cuda", batch_size=16))


@no_cuda
def test_the_local_executor_refuses_cuda_on_a_cpu_machine_in_one_line(tmp_path, job_models, data):
    from click.testing import CliRunner

    from zsteer.cli.main import main

    args = ["edit", "-m", data, "--generator", job_models[0], "--classifier", job_models[1], "-t", "attr1",
            "--steps", 2, "--images", "none", "--device", "cuda", "--out", tmp_path / "job"]  # fmt: skip
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines == ["zsteer: error: --device cuda: CUDA is not available in this torch build or machine"]
    assert not (tmp_path / "job").exists()


def test_the_ray_executor_checks_the_cluster_it_will_run_on(tmp_path, job_models, data, monkeypatch):
    """RayExecutor.check asks the cluster's resources (here a fake dict), not the driver's CUDA."""
    pytest.importorskip("ray", reason="the 'ray' extra is not installed")
    from zsteer.jobs import ray_executor
    from zsteer.jobs.executor import make_executor

    config = _cuda(job_config(data, tmp_path / "job", job_models), gpus_per_worker=1)
    asked = []

    def resources(address):
        asked.append(address)
        return {"CPU": 16.0}, "the fake cluster"

    monkeypatch.setattr(ray_executor, "_known_resources", resources)
    with pytest.raises(ZsteerError) as refused:
        make_executor(config)
    assert str(refused.value) == (
        "--device cuda --gpus-per-worker 1 on a cluster with no GPU: the fake cluster has 16 CPUs and 0 GPUs, "
        "so CUDA is not available to its workers; run on a Ray cluster with GPU nodes, or use --device cpu "
        "without --gpus-per-worker"
    )
    assert asked == [None]
    monkeypatch.setattr(ray_executor, "_known_resources", lambda address: ({"CPU": 16.0, "GPU": 2.0}, "x"))
    assert isinstance(make_executor(config), ray_executor.RayExecutor)  # whatever this machine has
    executor = ray_executor.RayExecutor(gpus_per_worker=0.5)
    with pytest.raises(ZsteerError, match=r"^--device cuda --gpus-per-worker 0\.5 on a cluster with no GPU"):
        executor._size({"CPU": 2.0, "GPU": 0.0}, 4, "cuda")  # as run() asks
    assert executor._size({"CPU": 2.0, "GPU": 1.0}, 4, "cuda") == 2


def test_a_cpu_only_driver_prepares_a_job_for_gpu_workers(tmp_path, job_models, data, monkeypatch):
    """A head node without CUDA: identity, fingerprints and the manifest plan load the models on the CPU."""
    pytest.importorskip("ray", reason="the 'ray' extra is not installed")
    from zsteer.jobs import ray_executor
    from zsteer.jobs.runner import prepare_job

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a CPU head node, GPU or not
    monkeypatch.setattr(ray_executor, "_known_resources", lambda address: ({"CPU": 4.0, "GPU": 1.0}, "x"))
    prep = prepare_job(_cuda(job_config(data, tmp_path / "job", job_models), gpus_per_worker=1))
    assert isinstance(prep.executor, ray_executor.RayExecutor)
    assert prep.runtime["engine"]["device"] == "cuda"
    for model in (prep.generator, prep.classifier):
        assert {p.device.type for p in model.module.parameters()} == {"cpu"}
    assert not (tmp_path / "job").exists()


@no_cuda
def test_a_worker_without_cuda_says_so_in_one_line_before_it_builds_an_editor(tmp_path):
    from zsteer.jobs.folder import JobFolder
    from zsteer.jobs.ray_executor import UnitWorker, WorkerSpec

    folder = JobFolder(tmp_path / "job")
    folder.make()
    folder.write_job({"identity": {}, "runtime": {}})

    def never():
        raise AssertionError("the editor is built after the device check")

    with pytest.raises(ZsteerError) as refused:
        UnitWorker(None, never, WorkerSpec(tmp_path / "job", 64, 0, 1, "worker-0", "cuda"))
    message = str(refused.value)
    assert message.startswith("--device cuda: CUDA is not available on node ") and "worker-0" in message
    assert "\n" not in message
