"""PNG encoding of rendered batches, in worker processes so it keeps up with a fast device.

Pillow holds the GIL for most of the work on a 64x64 image (measured: a second thread adds nothing),
so parallel encoding needs processes. Workers get a whole batch [N, H, W, C] per task, which keeps the
pickling overhead to one array each way. This module must not import torch: workers start with
``spawn`` (forking a process that runs torch's thread pools is unsafe) and import only numpy and Pillow.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor

import numpy as np
from PIL import Image

from .memory import peak_rss_mb

# zlib level: 64x64 faces encode at about the same speed at 1 and 6 and 6 is a little smaller.
COMPRESS_LEVEL = 6
MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def encode_pngs(images: np.ndarray) -> tuple[list[bytes], float, float]:
    """(PNG bytes per image, seconds spent, peak MiB of the encoding process) for uint8 [N, H, W, C]."""
    start = time.perf_counter()
    mode = MODES[images.shape[3]]
    out = []
    for image in images:
        buf = io.BytesIO()
        Image.fromarray(image[..., 0] if mode == "L" else image, mode).save(
            buf, format="PNG", compress_level=COMPRESS_LEVEL
        )
        out.append(buf.getvalue())
    return out, time.perf_counter() - start, peak_rss_mb()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


def _init_worker(parent: int) -> None:
    # Ctrl-C reaches the whole process group; the parent decides how to stop and needs its workers
    # alive to finish the batch in hand.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # A parent killed outright (SIGKILL, OOM) cannot shut the pool down, and the task queue's pipe
    # stays open in the siblings, so each worker leaves by itself once it is orphaned.
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


class DeferredPNGs:
    """Encoding deferred to whoever asks for the result (the thread that builds the unit's table)."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def result(self) -> tuple[list[bytes], float, float]:
        return encode_pngs(self.images)


def _noop() -> None:
    pass


@contextlib.contextmanager
def _signals_ignored():
    """SIGINT/SIGTERM ignored while workers start: they inherit SIG_IGN, so a Ctrl-C during their
    start-up (before their initializer runs) cannot kill them and break the pool."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class Encoder:
    """Encodes batches in ``workers`` processes, or inline (workers=0); results come back in order."""

    def __init__(self, workers: int):
        self.pool = None
        if workers > 0:
            self.pool = ProcessPoolExecutor(
                workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(os.getpid(),),
            )
            with _signals_ignored():  # start every worker now (the pool would start them on demand)
                for _ in range(workers):
                    self.pool.submit(_noop)

    def submit(self, images: np.ndarray) -> Future | DeferredPNGs:
        """Something whose ``result()`` is ``encode_pngs(images)``."""
        if self.pool is not None:
            return self.pool.submit(encode_pngs, images)
        return DeferredPNGs(images)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
