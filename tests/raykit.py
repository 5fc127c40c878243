"""Helpers of the Ray executor tests (no tests here): an editor factory that kills its worker process
(or fails a unit, or says when editing has begun) at the n-th batch.

Ray workers cannot import the tests' modules, so the tests register this module to be pickled by value
(``ray.cloudpickle.register_pickle_by_value``) and ship ``ActAtBatch`` to the actors inside the job's
editor factory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from zsteer.pipeline.config import AscentConfig, EngineConfig


@dataclass(frozen=True)
class ActAtBatch:
    """An editor factory (job_config's settings) whose editor acts as its ``batch``-th batch starts, once
    in the whole job: the first worker to get there creates ``flag`` (O_EXCL), so the restarted worker
    and the others edit normally. ``action``: "exit" ends the worker process (``os._exit``, as on a lost
    node), "raise" fails the unit (the job stops as on any error), "mark" only creates ``flag``."""

    flag: str
    batch: int
    action: str = "exit"
    ascent: AscentConfig = AscentConfig(steps=3, lr=0.5)
    engine: EngineConfig = EngineConfig(batch_size=16)

    def __call__(self, generator, classifier):
        from zsteer.pipeline.engine import make_engine

        return _Acting(make_engine(generator, classifier, self.ascent, self.engine), self)


class _Acting:
    def __init__(self, engine, factory: ActAtBatch):
        self.engine, self.factory, self.calls = engine, factory, 0

    def edit_batch(self, batch, render=True):
        self.calls += 1
        if self.calls == self.factory.batch:
            try:
                os.close(os.open(self.factory.flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass  # a worker acted here already
            else:
                if self.factory.action == "exit":
                    os._exit(1)  # the worker process dies mid-unit, as on a lost node
                if self.factory.action == "raise":
                    raise RuntimeError("simulated crash")
        return self.engine.edit_batch(batch, render)

    def render(self, z, labels=None):
        return self.engine.render(z, labels)


@dataclass(frozen=True)
class FailAtStart:
    """An editor factory that refuses as a worker starts, before any unit (as a node without CUDA does)."""

    message: str

    def __call__(self, generator, classifier):
        from zsteer.core.errors import ZsteerError

        raise ZsteerError(self.message)
