"""`--executor ray`: the same job on Ray actors writes the local executor's rows bit for bit, exactly once.

One small local Ray instance for the module (``ray.init(num_cpus=2)``, shut down at the end). Every
test has a timeout (pytest-timeout), and the executor itself never blocks on Ray for more than a second
at a time, so a cluster that cannot place the actors fails the test instead of hanging CI.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
import raykit
import torch
from jobkit import crash_at_commit, job_config, planted_manifests, read_parts, read_rejects

from zsteer.core.errors import ZsteerError
from zsteer.jobs.runner import run_job
from zsteer.pipeline.config import AscentConfig, EngineConfig

ray = pytest.importorskip("ray", reason="the 'ray' extra is not installed")

pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.timeout(240)]

ZSTEER = str(Path(sys.executable).with_name("zsteer"))
N_A, N_B = 300, 200  # in row groups of 50 rows, units of 25 rows: 20 units
BAD = {
    ("a", 17): "NaN",
    ("a", 133): "length",
    ("a", 255): "null id",
    ("b", 10): "duplicate",
    ("b", 150): "null z",
}


@pytest.fixture(scope="module")
def cluster():
    """A local Ray instance of 2 CPUs, as CI has; the tests' helper module travels by value."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(raykit)
    try:
        yield
    finally:
        ray.cloudpickle.unregister_pickle_by_value(raykit)
        ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two manifests with planted bad rows (one of each kind the validator rejects)."""
    return planted_manifests(
        tmp_path_factory.mktemp("ray") / "data", {"a": N_A, "b": N_B}, BAD, row_group_size=50
    )


def _config(data, out, models, **kw):
    return job_config(data, out, models, unit_rows=25, read_rows=20, **kw)


def _ray(data, out, models, workers: int = 2, **kw):
    options = (("num_workers", workers),)
    return _config(data, out, models, executor="ray", executor_options=options, **kw)


@pytest.fixture(scope="module")
def local_job(data, job_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "job"
    run_job(_config(data, out, job_models))
    return out


def _sorted(table: pa.Table, *keys: str) -> pa.Table:
    return table.sort_by([(k, "ascending") for k in keys])


def _assert_same_output(out: Path, reference: Path) -> None:
    """The same rows bit for bit (as a set by id), the same rejects, every row exactly once."""
    parts, expected = read_parts(out), read_parts(reference)
    ids = parts.column("id").to_pylist()
    assert len(ids) == len(set(ids)), "an edited row was written twice"
    assert _sorted(parts, "id").equals(_sorted(expected, "id"))
    rejects, expected_rejects = read_rejects(out), read_rejects(reference)
    assert _sorted(rejects, "source", "row").equals(_sorted(expected_rejects, "source", "row"))
    assert parts.num_rows + rejects.num_rows == N_A + N_B
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["rows_done"] == N_A + N_B and summary["rejected"] == len(BAD)


def test_ray_job_writes_the_local_rows_and_rejects_bit_for_bit(
    cluster, data, job_models, local_job, tmp_path, monkeypatch
):
    from zsteer.jobs import runner
    from zsteer.jobs.progress import Progress

    updates = []

    class Recorded(Progress):
        def update(self, rows):
            updates.append(rows)
            super().update(rows)

    monkeypatch.setattr(runner, "Progress", Recorded)
    out = tmp_path / "job"
    result = run_job(_ray(data, out, job_models))
    assert result.status == "complete"
    _assert_same_output(out, local_job)
    assert sum(updates) == N_A + N_B  # the bar ends at the total (how it moves: the test below)
    reasons = sorted(read_rejects(out).column("reason").to_pylist())
    assert reasons == sorted(read_rejects(local_job).column("reason").to_pylist())
    run = result.summary["runs"][-1]
    assert sorted(run["workers"]) == ["worker-0", "worker-1"]  # per-worker counts and rates
    assert sum(w["rows"] for w in run["workers"].values()) == N_A + N_B
    assert all(w["latents_per_second"] > 0 for w in run["workers"].values())
    assert run["stage_seconds"]["compute"] > 0 and run["stage_seconds"]["write"] > 0
    job = json.loads((out / "job.json").read_text())
    assert job["runtime"]["executor"] == "ray" and job["runtime"]["executor_options"] == {"num_workers": 2}
    # Run again: every unit is committed, nothing is done (and no actor is started).
    again = run_job(_ray(data, out, job_models))
    assert again.status == "complete" and again.summary["units_done"] == 20
    _assert_same_output(out, local_job)


def test_the_bar_counts_each_row_once_across_reports_retries_and_commits():
    """Workers report each unit's rows so far between batches; a retried unit reports from 0 again."""
    from zsteer.jobs.progress import Progress
    from zsteer.jobs.ray_executor import UnitProgress

    progress = Progress(total=100, done=0, every_seconds=3600, stream=io.StringIO())
    bar = UnitProgress(progress)
    bar.start("0:0:0"), bar.start("0:0:1")
    bar.reported({"0:0:0": 16, "0:0:1": 16})
    assert progress.done == 32
    bar.reported({"0:0:0": 8})  # its worker died; the retried attempt is at its first batch
    assert progress.done == 24
    bar.end("0:0:0", 25)  # committed
    bar.reported({"0:0:0": 25, "0:0:1": 25})  # a late report of a committed unit is ignored
    assert progress.done == 25 + 25
    bar.end("0:0:1", 0)  # dropped by a stop
    assert progress.done == 25


def test_a_worker_killed_mid_unit_is_restarted_and_its_unit_retried(
    cluster, data, job_models, local_job, tmp_path
):
    flag = tmp_path / "died"
    out = tmp_path / "job"
    # Units of 25 rows in batches of 16: the 3rd batch of a worker is in the middle of its 2nd unit.
    result = run_job(_ray(data, out, job_models), editor_factory=raykit.ActAtBatch(str(flag), batch=3))
    assert flag.exists(), "no worker died: the test did not test anything"
    assert result.status == "complete"
    _assert_same_output(out, local_job)


def test_a_stop_reaches_a_unit_between_the_steps_of_its_batch(
    cluster, data, job_models, tmp_path, monkeypatch
):
    """SIGINT / SIGTERM on the driver: each unit in flight stops between two steps (Ray tells only the
    task's own thread; the worker relays it to the compute thread), nothing half done is committed."""
    import threading

    from zsteer.jobs import runner
    from zsteer.jobs.signals import StopFlag

    editing = tmp_path / "editing"

    class StopWhenEditing(StopFlag):  # the signal, sent once a worker is inside its first batch
        def __enter__(self):
            def send():
                while not editing.exists():
                    time.sleep(0.05)
                time.sleep(0.5)
                self.stop(signal.SIGTERM)

            threading.Thread(target=send, daemon=True).start()
            return super().__enter__()

    monkeypatch.setattr(runner, "StopFlag", StopWhenEditing)
    out = tmp_path / "job"
    # A unit is one batch of 1,000,000 steps (hours): only a stop between steps ends this run.
    ascent = AscentConfig(steps=1_000_000, lr=0.001)
    config = _ray(data, out, job_models, batch_size=32, ascent={"steps": ascent.steps, "lr": ascent.lr})
    factory = raykit.ActAtBatch(
        str(editing), batch=1, action="mark", ascent=ascent, engine=EngineConfig(batch_size=32)
    )
    result = run_job(config, editor_factory=factory)
    assert editing.exists()
    assert result.status == "interrupted" and result.signum == signal.SIGTERM
    assert result.summary["units_done"] == 0 and not list((out / "commits").iterdir())


def test_a_local_job_is_finished_by_ray_and_a_ray_job_by_local(
    cluster, data, job_models, local_job, tmp_path, monkeypatch
):
    out = tmp_path / "job"
    crash_at_commit(monkeypatch, 4, _config(data, out, job_models))  # local: 3 units committed
    run_job(_ray(data, out, job_models))
    _assert_same_output(out, local_job)
    out2 = tmp_path / "job2"
    crashing = raykit.ActAtBatch(str(tmp_path / "failed"), batch=9, action="raise")  # 5 units committed
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_job(_ray(data, out2, job_models, workers=1), editor_factory=crashing)
    assert 0 < len(list((out2 / "commits").iterdir())) < 20
    assert json.loads((out2 / "job.json").read_text())["runtime"]["executor"] == "ray"
    run_job(_config(data, out2, job_models))
    _assert_same_output(out2, local_job)


def test_what_a_ray_run_cannot_honour_is_refused_before_anything_is_written(
    cluster, data, job_models, tmp_path
):
    out = tmp_path / "job"
    with pytest.raises(ZsteerError, match=r"--num-workers 3 .* room for 2 worker"):
        run_job(_ray(data, out, job_models, workers=3))
    for device, gpus, match in (
        ("cuda", 0, "give each worker a GPU"),
        ("cuda:1", 1, "use --device cuda"),
        ("cpu", 1, "the GPUs would sit idle"),
    ):
        options = (("gpus_per_worker", gpus),)
        config = _config(data, out, job_models, executor="ray", executor_options=options)
        config = type(config)(**{**config.__dict__, "engine": EngineConfig(device=device, batch_size=16)})
        with pytest.raises(ZsteerError, match=match):
            from zsteer.jobs.executor import make_executor

            make_executor(config)
    with pytest.raises(ZsteerError, match="--executor ray: unexpected|--executor ray: .*bogus"):
        run_job(_config(data, out, job_models, executor="ray", executor_options=(("bogus", 1),)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where no GPU exists")
def test_gpu_workers_where_no_gpu_exists_are_refused_in_one_line(tmp_path, job_models, data):
    """--gpus-per-worker 1 with no GPU: the CLI says so in one line before anything is written (and Ray
    is not started); a cluster without GPUs is sized to no worker, in one line, instead of waiting."""
    from click.testing import CliRunner

    from zsteer.cli.main import main
    from zsteer.jobs.ray_executor import RayExecutor

    args = ["edit", "-m", data, "--generator", job_models[0], "--classifier", job_models[1], "-t", "attr1",
            "--steps", 2, "--images", "none", "--device", "cuda", "--executor", "ray",
            "--gpus-per-worker", 1, "--out", tmp_path / "job"]  # fmt: skip
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--device cuda" in lines[0] and "not available" in lines[0], lines
    assert not (tmp_path / "job").exists()
    with pytest.raises(
        ZsteerError,
        match=r"^--device cuda --gpus-per-worker 1 on a cluster with no GPU: the Ray cluster has 2 CPUs and 0 GPUs",
    ) as refused:
        RayExecutor(gpus_per_worker=1)._size({"CPU": 2.0}, n_units=4, device="cuda")
    assert "\n" not in str(refused.value) and "--num-workers" not in str(refused.value)


def test_a_worker_that_cannot_see_the_job_folder_stops_the_run_in_one_line(cluster, tmp_path):
    """A node without the shared storage: the worker's start-up error comes back as its own one line."""
    from zsteer.jobs.ray_executor import UnitWorker, WorkerSpec, _get

    worker = ray.remote(UnitWorker).options(num_cpus=1, max_restarts=1)
    actor = worker.remote(None, None, WorkerSpec(str(tmp_path / "elsewhere"), 64, 0, 1, "worker-0"))
    with pytest.raises(
        ZsteerError, match=r"^--out .*elsewhere: not visible on node .*storage every node mounts"
    ):
        _get(ray, actor.ready.remote())
    ray.kill(actor)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where no GPU exists")
def test_a_worker_whose_node_sees_no_cuda_stops_the_run_in_one_line_and_the_job_resumes(
    cluster, data, job_models, local_job, tmp_path
):
    """The worker-side device check comes back as its own line; a worker that fails as it starts leaves no
    unit and no job.json (the start is taken back: JobFolder.forget_new_job), and the same job then
    runs to completion."""
    from zsteer.jobs.folder import JobFolder
    from zsteer.jobs.ray_executor import UnitWorker, WorkerSpec, _get

    folder = JobFolder(tmp_path / "seen")
    folder.make()
    folder.write_job({"identity": {}, "runtime": {}})
    actor = (
        ray.remote(UnitWorker)
        .options(num_cpus=1, max_restarts=1)
        .remote(None, None, WorkerSpec(str(folder.root), 64, 0, 1, "worker-0", "cuda"))
    )
    with pytest.raises(ZsteerError, match=r"^--device cuda: CUDA is not available on node .*worker-0[^\n]*$"):
        _get(ray, actor.ready.remote())
    ray.kill(actor)
    out = tmp_path / "job"
    with pytest.raises(ZsteerError, match=r"^no GPU on this node$"):
        run_job(_ray(data, out, job_models), editor_factory=raykit.FailAtStart("no GPU on this node"))
    assert not (out / "job.json").exists() and not list((out / "commits").iterdir())
    run_job(_ray(data, out, job_models))
    _assert_same_output(out, local_job)


def test_no_cluster_at_the_ray_address_is_one_line():
    from zsteer.jobs.ray_executor import _init

    class NoCluster:
        def init(self, **kw):
            raise ConnectionError("Could not find any running Ray instance.\nPlease specify ...")

    with pytest.raises(
        ZsteerError, match=r"^--ray-address auto: Could not find any running Ray instance\. \(start"
    ):
        _init(NoCluster(), "auto")


@pytest.mark.timeout(60)  # Ray's own retries at such an address last a minute or more
@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_an_unreachable_ray_address_fails_fast_in_one_line(tmp_path, job_models, data, scheme):
    """Nothing listens at --ray-address (a closed local port): one line naming the address and what was
    expected there, before anything is written, instead of hanging in Ray's retries."""
    from click.testing import CliRunner

    from zsteer.cli.main import main

    with socket.socket() as closed:  # a port nothing listens on once closed
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    address = f"{scheme}127.0.0.1:{port}"
    args = ["edit", "-m", data, "--generator", job_models[0], "--classifier", job_models[1], "-t", "attr1",
            "--steps", 2, "--images", "none", "--executor", "ray", "--ray-address", address,
            "--out", tmp_path / "job"]  # fmt: skip
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        f"zsteer: error: --ray-address {address}: nothing accepts connections at 127.0.0.1:{port} ("
    ), lines
    assert ("a Ray Client server" if scheme else "a Ray cluster's GCS") in lines[0], lines
    assert not (tmp_path / "job").exists()


def test_a_listening_ray_address_and_auto_are_left_to_ray():
    from zsteer.jobs.ray_executor import check_reachable

    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        check_reachable(f"127.0.0.1:{port}")
        check_reachable(f"ray://127.0.0.1:{port}")
    check_reachable("auto")  # ray.init finds (or not) the cluster itself, quickly


def test_executor_ray_without_ray_installed_is_one_line_naming_the_extra(
    tmp_path, job_models, data, monkeypatch
):
    from click.testing import CliRunner

    from zsteer.cli.main import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    args = ["edit", "-m", data, "--generator", job_models[0], "--classifier", job_models[1], "-t", "attr1",
            "--steps", 2, "--images", "none", "--executor", "ray", "--out", tmp_path / "job"]  # fmt: skip
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "ray is not installed" in lines[0] and "zsteer[ray]" in lines[0], lines
    assert not (tmp_path / "job").exists()
    result = CliRunner().invoke(
        main, [str(a) for a in args[:-4] + ["--num-workers", 2, "--out", tmp_path / "j"]]
    )
    assert result.exit_code == 2 and "--num-workers: only with --executor ray" in result.stderr


def _ray_command(data: Path, models, out: Path) -> list[str]:
    return [
        ZSTEER, "edit", "-m", str(data), "--generator", str(models[0]), "--classifier", str(models[1]),
        "-t", "attr1", "--steps", "3", "--lr", "0.5", "--batch-size", "16", "--images", "none",
        "--workers", "0", "--rows-per-shard", "64", "--unit-rows", "25", "--read-rows", "20",
        "--executor", "ray", "--num-workers", "1", "--out", str(out),
    ]  # fmt: skip


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Ray's raylet, GCS, agents and workers of a local instance)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _reap(pids: list[int]) -> None:
    """Kill what a SIGKILLed driver's Ray instance left (its raylet and GCS die with the driver; two
    agents may linger), so the test leaves no process behind on a CI machine."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_the_driver_sigkilled_mid_job_resumes_to_exactly_once(data, job_models, local_job, tmp_path):
    """The driver (with the local Ray instance it started) is SIGKILLed after its first commits; the same
    command resumes and the output is the local job's."""
    out = tmp_path / "job"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(_ray_command(data, job_models, out), env=env, stderr=subprocess.PIPE, text=True)
    try:
        ray_processes: list[int] = []
        deadline = time.monotonic() + 150
        while len(list((out / "commits").glob("commit-*.json"))) < 3 if (out / "commits").exists() else True:
            assert proc.poll() is None, f"the run ended before its 3rd commit: {proc.communicate()[1]}"
            assert time.monotonic() < deadline, "the Ray run made no progress"
            time.sleep(0.05)
        ray_processes = _descendants(proc.pid)  # the local Ray instance the driver started
        proc.kill()
    finally:
        proc.kill()
        proc.communicate(timeout=30)
        _reap(ray_processes)
    committed = len(list((out / "commits").glob("commit-*.json")))
    assert committed < 20, "the run finished before it could be killed"
    done = subprocess.run(
        _ray_command(data, job_models, out), env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stderr
    _assert_same_output(out, local_job)


def test_a_ray_job_on_a_store_without_rename_writes_the_local_rows_exactly_once(
    cluster, data, job_models, local_job, tmp_path
):
    """-m and --out as URIs of a file system whose rename fails (tests/storekit.py): the workers write
    through the object-store protocol; one is killed mid-unit, and its unit's retry commits under names of
    its own. The rows are the local job's, bit for bit, each exactly once; no object is left unnamed."""
    import storekit

    from zsteer.jobs.verify import verify_folder

    storekit.register()
    ray.cloudpickle.register_pickle_by_value(storekit)
    try:
        out = storekit.uri(tmp_path / "job")
        dies = raykit.ActAtBatch(str(tmp_path / "died"), batch=3)
        result = run_job(_ray(storekit.uri(data), out, job_models), editor_factory=dies)
    finally:
        ray.cloudpickle.unregister_pickle_by_value(storekit)
    assert (tmp_path / "died").exists(), "a worker died mid-unit"
    assert result.status == "complete" and result.summary["rows_done"] == N_A + N_B
    parts = read_parts(tmp_path / "job")  # every object of parts/: none but the committed ones
    assert len(set(parts.column("id").to_pylist())) == parts.num_rows
    assert _sorted(parts, "id").equals(_sorted(read_parts(local_job), "id"))
    assert read_rejects(tmp_path / "job").num_rows == len(BAD)
    report = verify_folder(out)
    assert report.ok and report.units == 20 and not report.strays
