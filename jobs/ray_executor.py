"""The Ray executor: a job's units run by a pool of Ray actors, each holding the job's editor.

    driver      plan, duplicate index, job.json (runner.py) | hands units to actors | summary.json
    actor i     editor built once (models shipped once) | run_and_commit per unit (as jobs/local.py's threads)

Ray Core actors, not Ray Data. zsteer's unit is the thing that commits: one unit = one task whose
result is its commit marker. Ray Data's ``map_batches`` cuts the input into blocks of its own choosing,
drops failed blocks when ``max_errored_blocks > 0`` and has no notion of a commit, so its blocks would
have to be mapped back onto units anyway. With actors, a unit is one actor task: an actor that dies is
restarted by Ray (``max_restarts``) and the tasks it held are retried (``max_task_retries``), and a
retried unit writes the same files under the same names, its marker last (jobs/commit.py), so it counts
once. Ray Data also streams through a read task that needs its own CPU (on 2 CPUs with two actors it
waited forever: issue 15); here each actor reads its own units, so there is no task to starve.

Each actor runs the local executor's arrangement in one process: ``UNITS_PER_WORKER`` units at once on
Ray's actor threads, sharing one editor whose batches run on one compute thread (``SerializedEditor``),
so one unit computes while the other reads, encodes and writes. The driver keeps at most that many units
in flight per actor, so its memory does not grow with the manifest: what comes back is one commit marker
and a few numbers per unit.

The job folder and the manifests must be at paths every node can reach (a shared file system): each
actor checks that it sees job.json before it takes work, and says so in one line otherwise.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from zsteer.core.errors import ZsteerError, fault_reason, first_line

from .commit import UnitDone, run_and_commit
from .device import parse_device, require_device
from .executor import JobWork
from .folder import Commit, JobFolder, MarkerError
from .local import SerializedEditor
from .reader import ThreadReaders
from .rows import Unit
from .storage import AnyPath
from .unit import UnitPlan

# Units an actor runs at once: 2, as the local executor's threads (one computes while the other reads,
# encodes and writes); more only adds memory.
UNITS_PER_WORKER = 2
POLL_SECONDS = 1.0  # the driver wakes at least this often to see a stop signal (never blocks on a get)
EXTRA_HINT = "pip install 'zsteer[ray]'"
# Seconds to wait for a TCP answer from --ray-address before saying in one line that nothing is there
# (Ray's own retries take a minute or more).
CONNECT_SECONDS = 5.0
RAY_CLIENT_PORT = 10001  # Ray Client's port when a ray:// address names none (Ray's default)


def import_ray():
    """The ray module, or a one-line error naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise ZsteerError(
            f"--executor ray: ray is not installed; install the 'ray' extra: {EXTRA_HINT}"
        ) from None
    return ray


@dataclass(frozen=True)
class WorkerSpec:
    """What an actor needs besides the plan and the editor factory (small, sent with each actor)."""

    out: AnyPath  # the job folder, as every node sees it (a path, or a StorePath that carries its store)
    rows_per_shard: int  # most rows per output file
    png_workers: int  # PNG encoder processes inside the actor (0: encode in the unit's thread)
    torch_threads: int  # torch CPU threads of the actor's process (its CPU share)
    name: str  # "worker-3": how summary.json names it
    device: str = "cpu"  # the job's --device: checked on the worker's node, where the editor runs


@dataclass
class WorkerDone:
    """What an actor sends back for a committed unit: run_and_commit's report, and who made it."""

    done: UnitDone
    worker: str  # WorkerSpec.name
    node: str  # host name of the node it ran on


class _TaskEditor:
    """The actor's shared editor as one unit task sees it, with a ``cancelled()`` that works on any thread.

    Ray answers ``is_canceled()`` on the task's own thread only (elsewhere it is always False), but the
    ascent asks between its steps on the compute thread. So the task thread waits for each batch in
    slices of POLL_SECONDS, reading Ray's flag into an Event that both threads read.
    """

    def __init__(self, editor: SerializedEditor, context):
        self.editor, self.context = editor, context
        self.thread = threading.current_thread()
        self.flag = threading.Event()

    def cancelled(self) -> bool:
        if threading.current_thread() is self.thread and self.context.is_canceled():
            self.flag.set()
        return self.flag.is_set()

    def edit_batch(self, batch, render: bool = True):
        future = self.editor.submit(batch, render)
        while True:
            try:
                return future.result(timeout=POLL_SECONDS)
            except FutureTimeout:
                self.cancelled()

    def render(self, z, labels=None):
        return self.editor.render(z, labels)


class UnitWorker:
    """The body of one Ray actor (made remote by ``RayExecutor``, so importing this needs no ray)."""

    def __init__(self, plan: UnitPlan, make_editor, spec: WorkerSpec, progress=None):
        import torch

        from .encode import Encoder

        torch.set_num_threads(spec.torch_threads)  # the actor owns its process: its CPU share, no more
        self.plan, self.spec, self.progress = plan, spec, progress  # progress: a ProgressSink actor
        self.folder = JobFolder(spec.out)
        if not self.folder.exists(self.folder.job_json):
            raise ZsteerError(
                f"--out {spec.out}: not visible on node {socket.gethostname()}; with --executor ray the job "
                "folder (and the manifests) must be on storage every node mounts at the same path"
            )
        # Before the editor is built and before any unit: a failure here is one line (ZsteerError, see
        # _get) and leaves no job behind (JobFolder.forget_new_job), so the same command runs once the
        # node is fixed.
        require_device(
            spec.device,
            f"on node {socket.gethostname()}, where Ray placed {spec.name} (its torch build or driver "
            "sees no GPU)",
        )
        self.editor = SerializedEditor(make_editor())
        self.encoder = Encoder(spec.png_workers if plan.images else 0)
        self.readers = ThreadReaders(plan.manifest, plan.read_rows)  # each actor thread keeps its open file

    def ready(self) -> str:
        return socket.gethostname()

    def run_unit(self, unit: Unit) -> WorkerDone | None:
        """run_and_commit; None when the driver cancelled the unit (nothing committed)."""
        import ray

        editor = _TaskEditor(self.editor, ray.get_runtime_context())
        rows = 0

        def on_rows(n: int) -> None:  # rows of this attempt so far, to the driver's bar (not awaited)
            nonlocal rows
            rows += n
            if self.progress is not None:
                self.progress.report.remote(unit.key, rows)

        done = run_and_commit(
            self.plan, unit, editor, self.folder, self.spec.rows_per_shard, reader=self.readers.get(),
            encode=self.encoder.submit, cancelled=editor.cancelled, on_rows=on_rows,
        )  # fmt: skip
        return None if done is None else WorkerDone(done, self.spec.name, socket.gethostname())


class ProgressSink:
    """Rows done so far by each unit in flight, as its worker reports them between batches: a small
    actor on no CPU, which the driver empties every POLL_SECONDS for its progress bar."""

    def __init__(self):
        self.rows: dict[str, int] = {}

    def report(self, key: str, rows: int) -> None:
        self.rows[key] = rows

    def take(self) -> dict[str, int]:
        rows, self.rows = self.rows, {}
        return rows


class UnitProgress:
    """The driver's bar: committed rows plus the rows that units in flight reported. A retried unit
    reports from 0 again and a commit replaces what its unit reported, so no row is counted twice."""

    def __init__(self, progress):
        self.progress = progress  # jobs.progress.Progress
        self.shown: dict[str, int] = {}  # unit key -> rows of it on the bar

    def start(self, key: str) -> None:
        self.shown[key] = 0

    def reported(self, rows: dict[str, int]) -> None:
        for key, n in rows.items():
            if key in self.shown:  # a report that comes after its unit ended is stale
                self.progress.update(n - self.shown[key])
                self.shown[key] = n

    def end(self, key: str, rows: int) -> None:
        """The unit committed ``rows`` rows (0: dropped, to be done again by a later run)."""
        self.progress.update(rows - self.shown.pop(key, 0))


class WorkerStats:
    """Per-worker figures of one run, for summary.json's per-worker rates.

    A worker's rate is its edited rows over the seconds from the start of the run to its last commit:
    its units overlap (UNITS_PER_WORKER at once), so the sum of their seconds would undercount it.
    """

    def __init__(self):
        self.workers: dict[str, dict] = {}
        self._t0 = time.perf_counter()

    def add(self, result: WorkerDone) -> None:
        w = self.workers.setdefault(
            result.worker, {"node": result.node, "units": 0, "rows": 0, "edited": 0, "seconds": 0.0}
        )
        w["node"] = result.node  # a restarted actor may come back on another node
        w["units"] += 1
        w["rows"] += result.done.commit.rows
        w["edited"] += result.done.commit.edited
        w["seconds"] = time.perf_counter() - self._t0

    def as_dict(self) -> dict[str, dict]:
        """Each worker's counts, seconds to its last commit, and latents_per_second."""
        return {
            name: {**w, "seconds": round(w["seconds"], 3),
                   "latents_per_second": round(w["edited"] / w["seconds"], 2) if w["seconds"] > 0 else 0.0}
            for name, w in sorted(self.workers.items())
        }  # fmt: skip


@dataclass(frozen=True)
class RayExecutor:
    """Ray actors on a cluster (or on a local one started for the job)."""

    # "auto" (the cluster `ray start` set up on this machine), "ray://host:port" (Ray Client) or a GCS
    # address; None starts a local Ray instance for this job and stops it at the end. If this process
    # is already connected (ray.init was called), that connection is used and left open.
    address: str | None = None
    # Actors; None: as many as the cluster's CPUs (or GPUs) hold at the sizes below.
    num_workers: int | None = None
    # GPUs per actor (fractions share a GPU); 0: CPU actors.
    gpus_per_worker: float = 0.0
    # CPUs per actor: its torch threads and PNG encoder processes live within them.
    cpus_per_worker: float = 1.0
    # Restarts of an actor whose process dies (its units are retried on the restarted actor); beyond
    # that the run stops with one line, and the same command resumes.
    max_restarts: int = 3
    # Seconds to wait for the actors to be placed and load the models: a cluster without the requested
    # resources fails with one line instead of waiting forever.
    start_timeout: float = 600.0

    def __post_init__(self):
        if self.num_workers is not None and self.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {self.num_workers}")
        if self.gpus_per_worker < 0:
            raise ValueError(f"gpus_per_worker must be >= 0, got {self.gpus_per_worker}")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {self.max_restarts}")

    def check(self, config) -> None:
        """Refuse, in one line and before anything is written, what a Ray run cannot honour."""
        import_ray()
        device = parse_device(config.engine.device)
        if device.type == "cuda" and self.gpus_per_worker <= 0:
            raise ZsteerError(
                f"--device {config.engine.device} with --executor ray: give each worker a GPU "
                "(--gpus-per-worker 1); CPU workers see no GPU"
            )
        if device.type == "cuda" and device.index not in (None, 0):
            raise ZsteerError(
                f"--device {config.engine.device} with --executor ray: Ray gives each worker its GPUs "
                "(as cuda:0); use --device cuda"
            )
        if device.type != "cuda" and self.gpus_per_worker > 0:
            raise ZsteerError(
                f"--gpus-per-worker {self.gpus_per_worker:g} with --device {config.engine.device}: "
                "the GPUs would sit idle; add --device cuda, or leave --gpus-per-worker at 0"
            )
        if self.address is not None:
            check_reachable(self.address)
        if self.gpus_per_worker > 0:
            # GPU workers are sized here, before anything is written, where the cluster is known (a cluster
            # without GPUs is the likely mistake); a --ray-address one is sized once connected, in run.
            known = _known_resources(self.address)
            if known is not None:
                resources, where = known
                self._size(resources, 1, config.engine.device, where)

    def run(self, work: JobWork) -> None:
        ray = import_ray()
        started = not ray.is_initialized()
        if started:
            _init(ray, self.address)
        actors: list = []
        try:
            resources = ray.cluster_resources()
            n_workers = self._size(resources, len(work.units), work.device)
            # The plan and the editor factory, shipped once to the object store; every actor (and every
            # restart of one) reads the same copy. Held here for the whole run: a restarted actor needs
            # its constructor's arguments still in the store (ray issue 53727).
            try:
                shipped = ray.put(work.plan), ray.put(work.make_editor)
            except Exception as exc:  # cloudpickle: an editor factory holding a lock, a file, a socket
                raise ZsteerError(
                    f"--executor ray: the job's editor cannot be sent to workers ({exc})"
                ) from None
            sink = ray.remote(ProgressSink).options(num_cpus=0).remote()
            actors = self._start(ray, work, n_workers, *shipped, sink)
            actors.append(sink)  # ended with the workers
            self._feed(ray, work, actors[:-1], sink)
        finally:
            for actor in actors:
                ray.kill(actor, no_restart=True)
            if started:
                ray.shutdown()

    def _size(self, cluster: dict, n_units: int, device: str, where: str = "the Ray cluster") -> int:
        """Actors to start: what was asked if ``cluster`` (Ray's resource dict: "CPU", "GPU" counts; ``where``
        names it) holds it, else one line; never more than units. ``device`` is --device, for the message."""
        cpus, gpus = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
        fit = math.floor(cpus / self.cpus_per_worker + 1e-9)
        if self.gpus_per_worker > 0:
            fit = min(fit, math.floor(gpus / self.gpus_per_worker + 1e-9))
        wanted = self.num_workers or max(fit, 1)
        if self.gpus_per_worker > 0 and gpus <= 0:  # room for 0 GPU actors: say why in the user's terms
            raise ZsteerError(
                f"--device {device} --gpus-per-worker {self.gpus_per_worker:g} on a cluster with no GPU: "
                f"{where} has {cpus:g} CPUs and 0 GPUs, so CUDA is not available to its workers; run on a "
                "Ray cluster with GPU nodes, or use --device cpu without --gpus-per-worker"
            )
        if wanted > fit:
            asked = f"--num-workers {wanted} with " if self.num_workers else ""  # not one the user gave
            raise ZsteerError(
                f"{asked}--cpus-per-worker {self.cpus_per_worker:g} and --gpus-per-worker "
                f"{self.gpus_per_worker:g}: {where} has {cpus:g} CPUs and {gpus:g} GPUs, room for "
                f"{fit} worker(s); ask for fewer or smaller workers"
            )
        return max(1, min(wanted, n_units))

    def _start(self, ray, work: JobWork, n_workers: int, plan, make_editor, sink) -> list:
        """Start the actors; fail in one line if they are not all up within ``start_timeout``."""
        remote = ray.remote(UnitWorker).options(
            num_cpus=self.cpus_per_worker,
            num_gpus=self.gpus_per_worker,
            max_restarts=self.max_restarts,
            max_task_retries=self.max_restarts,  # a unit whose actor died runs again (never on app errors)
            max_concurrency=UNITS_PER_WORKER,
        )
        threads = max(1, int(self.cpus_per_worker))
        # Encoder processes beyond the actor's CPUs would take other actors' cores: within its share only.
        png_workers = min(work.png_workers, threads - 1)
        actors = [
            remote.remote(plan, make_editor, WorkerSpec(work.folder.root, work.rows_per_shard, png_workers, threads, f"worker-{i}", work.device), sink)
            for i in range(n_workers)
        ]  # fmt: skip
        ready = [actor.ready.remote() for actor in actors]
        deadline = time.monotonic() + self.start_timeout
        while ready:
            done, ready = ray.wait(ready, num_returns=len(ready), timeout=POLL_SECONDS)
            for ref in done:
                _get(ray, ref)  # an actor that failed to start raises its error here
            if ready and (work.stopped() or time.monotonic() > deadline):
                if work.stopped():
                    return actors
                raise ZsteerError(
                    f"--executor ray: {len(ready)} of {n_workers} worker(s) not started after "
                    f"{self.start_timeout:g} s; the cluster lacks the CPUs/GPUs asked for, or its nodes are down"
                )
        return actors

    def _feed(self, ray, work: JobWork, actors: list, sink) -> None:
        """Hand units to actors, at most UNITS_PER_WORKER each in flight; report commits as they come."""
        todo = iter(work.units)
        running: dict = {}  # ObjectRef -> (actor index, Unit)
        load = dict.fromkeys(range(len(actors)), 0)
        workers, bar = WorkerStats(), UnitProgress(work.progress)
        stopping, polled = False, time.monotonic()
        try:
            while True:
                if not stopping and work.stopped():
                    stopping = True
                    for ref in running:  # each stops at its next batch, commits nothing, returns None
                        ray.cancel(ref)
                while not stopping:
                    free = [i for i in load if load[i] < UNITS_PER_WORKER]
                    unit = next(todo, None) if free else None
                    if unit is None:
                        break
                    i = min(free, key=load.get)
                    running[actors[i].run_unit.remote(unit)] = i, unit
                    bar.start(unit.key)
                    load[i] += 1
                if not running:
                    break
                done, _ = ray.wait(list(running), num_returns=1, timeout=POLL_SECONDS)
                if time.monotonic() - polled >= POLL_SECONDS:
                    bar.reported(_take(ray, sink))
                    polled = time.monotonic()
                for ref in done:
                    i, unit = running.pop(ref)
                    load[i] -= 1
                    result = _get(ray, ref, cancelled_ok=stopping)
                    if result is None:  # cancelled: committed only if it was past its last batch
                        commit = _committed(work.folder, unit)
                        bar.end(unit.key, commit.rows if commit is not None else 0)
                        if commit is not None:
                            work.on_commit(commit)
                        continue
                    workers.add(result)
                    bar.end(unit.key, result.done.commit.rows)
                    work.record(result.done)
        except BaseException:
            for ref in running:
                ray.cancel(ref)
            raise
        finally:
            work.stats.workers = workers.as_dict()


def _known_resources(address: str | None) -> tuple[dict, str] | None:
    """The resources of the cluster a run will use, if known before it starts: the one this process is
    connected to, or this machine when the run starts a local instance (--ray-address not given). None
    for a --ray-address cluster, which is asked when the run connects (connecting here would start the
    job's Ray before anything is checked)."""
    import torch

    ray = import_ray()
    if ray.is_initialized():
        return ray.cluster_resources(), "the connected Ray cluster"
    if address is not None:
        return None
    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}, (
        "this machine (where a local Ray instance would run)"
    )


def check_reachable(address: str, timeout: float = CONNECT_SECONDS) -> None:
    """Refuse, in one line, a ``host:port`` or ``ray://host[:port]`` address where nothing accepts a TCP
    connection within ``timeout`` seconds.

    Ray itself does not fail fast there: a GCS address where nothing listens is retried for a minute or
    more (ray.init blocks, printing a warning every few seconds), a Ray Client address for 30 s. One
    connection attempt says the same at once. "auto" and other forms are left to ray.init, which fails
    quickly where no cluster is found.
    """
    client = address.startswith("ray://")
    rest = address.removeprefix("ray://").split("/", 1)[0]
    host, colon, port = rest.rpartition(":")
    if not colon and client:  # ray://host: Ray Client's default port
        host, port = rest, str(RAY_CLIENT_PORT)
    if not host or not port.isdigit():
        return
    expected = (
        f"a Ray Client server (`ray start --head` opens one on port {RAY_CLIENT_PORT} of the head node)"
        if client
        else "a Ray cluster's GCS (the address `ray start --head` prints, port 6379 by default)"
    )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        reason = f"no answer within {timeout:g} s" if isinstance(exc, TimeoutError) else fault_reason(exc)
        raise ZsteerError(
            f"--ray-address {address}: nothing accepts connections at {host}:{port} ({reason}); expected "
            f"{expected}, or leave --ray-address out for a local Ray instance"
        ) from None


def _init(ray, address: str | None) -> None:
    """ray.init (None: "local", a new instance, never a cluster found on this machine), keeping this process's SIGTERM handler: ray.init replaces it with sys.exit, which
    would kill the driver mid-commit instead of letting the job stop after its batch (jobs/signals.py)."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    # Ray starts its workers at niceness 15; in a local instance the workers are this job, so they get
    # the driver's priority, not less than any other process on the machine. A cluster's nodes keep
    # their own setting (RAY_worker_niceness when `ray start` runs).
    local = {"_system_config": {"worker_niceness": 0}} if address is None else {}
    if address is not None:
        check_reachable(address)  # also here: a library caller may run() without check()
    try:
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=True, **local)
    except (ConnectionError, ValueError, RuntimeError) as exc:  # no cluster there, a malformed address
        raise ZsteerError(
            f"--ray-address {address}: {first_line(exc)} (start one with `ray start --head`, or leave --ray-address "
            "out for a local Ray instance)"
        ) from None
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _take(ray, sink) -> dict[str, int]:
    """The rows the units in flight reported since the last call; nothing if the sink does not answer
    (the bar then moves at each commit only: progress never stops a job)."""
    try:
        return ray.get(sink.take.remote(), timeout=10 * POLL_SECONDS)
    except Exception:  # noqa: BLE001 (a lost or slow sink: any of Ray's errors)
        return {}


def _committed(folder: JobFolder, unit: Unit) -> Commit | None:
    """The unit's marker if it is on disk: a unit cancelled while it was committing may have made it."""
    try:
        return folder.read_marker(folder.marker(unit.key))  # checked as a resume checks it
    except MarkerError:  # none on disk, or not one zsteer wrote: the unit is done again
        return None


def _get(ray, ref, cancelled_ok: bool = False):
    """ray.get, with a unit's own error raised as itself (a ZsteerError stays one line)."""
    from ray.exceptions import RayActorError, RayTaskError, TaskCancelledError

    try:
        return ray.get(ref)
    except TaskCancelledError:
        if cancelled_ok:
            return None
        raise
    except RayTaskError as exc:
        cause = exc.cause
        if isinstance(cause, ZsteerError):
            raise cause from None
        raise
    except RayActorError as exc:
        if exc.actor_init_failed:  # the worker's __init__ raised: Ray keeps only its traceback's text
            last = str(exc).strip().splitlines()[-1]
            name, _, message = last.partition(": ")
            if name.startswith("zsteer.") and message:  # a ZsteerError (or subclass): its own line
                raise ZsteerError(message) from None
            raise ZsteerError(f"--executor ray: a worker could not start: {last}") from None
        raise ZsteerError(
            f"--executor ray: a worker died and could not be restarted ({first_line(exc)}); "
            "its units are not committed: run the same command again to resume"
        ) from None
