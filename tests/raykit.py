"""Helpers of the Ray executor tests (no tests here): an editor factory that kills its worker process.

Ray workers cannot import the tests' modules, so the tests register this module to be pickled by value
(``ray.cloudpickle.register_pickle_by_value``) and ship ``DieAtBatch`` to the actors inside the job's
editor factory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from zsteer.pipeline.config import AscentConfig, EngineConfig


@dataclass(frozen=True)
class DieAtBatch:
    """An editor factory (job_config's settings) whose editor ends its process with ``os._exit`` (or
    raises, with ``crash=False``: the job fails as on any error) as its ``batch``-th batch starts, once
    in the whole job: the first worker to get there creates ``flag`` (O_EXCL), so the restarted worker
    and the others edit normally."""

    flag: str
    batch: int
    exit: bool = True
    ascent: AscentConfig = AscentConfig(steps=3, lr=0.5)
    engine: EngineConfig = EngineConfig(batch_size=16)

    def __call__(self, generator, classifier):
        from zsteer.pipeline.engine import make_engine

        return _Dying(make_engine(generator, classifier, self.ascent, self.engine), self)


class _Dying:
    def __init__(self, engine, factory: DieAtBatch):
        self.engine, self.flag, self.batch, self.exit, self.calls = (
            engine,
            factory.flag,
            factory.batch,
            factory.exit,
            0,
        )

    def edit_batch(self, batch, render=True):
        self.calls += 1
        if self.calls == self.batch:
            try:
                os.close(os.open(self.flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass  # a worker died here already
            else:
                if self.exit:
                    os._exit(1)  # the worker process dies mid-unit, as on a lost node
                raise RuntimeError("simulated crash")
        return self.engine.edit_batch(batch, render)

    def render(self, z, labels=None):
        return self.engine.render(z, labels)
