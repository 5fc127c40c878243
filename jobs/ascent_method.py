"""Classifier-gradient ascent as a job's edit method (the default): z <- z + lr * grad_z score."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import pyarrow as pa

from zsteer.pipeline.checkpoints import LoadedModel
from zsteer.pipeline.config import AscentConfig, EngineConfig
from zsteer.pipeline.editor import Editor, EditResult

from .backends import BackendConfig, backend_factory
from .manifest import ROW_COLUMNS
from .method import result_columns, result_fields


@dataclass(frozen=True)
class AscentMethod:
    """Ascent on the classifier's logits, with the penalty that holds the other attributes."""

    name: ClassVar[str] = "ascent"
    # targets, steps and stop_at_prob can each be set per row.
    row_columns: ClassVar[tuple[str, ...]] = ROW_COLUMNS
    # Steps, step size, penalty, stopping rules. Identity.
    ascent: AscentConfig = field(default_factory=AscentConfig)

    def identity(self) -> dict:
        return {"ascent": asdict(self.ascent)}

    @property
    def default_steps(self) -> int:
        return self.ascent.steps

    @property
    def default_stop_prob(self) -> float:
        return math.nan if self.ascent.stop_at_prob is None else self.ascent.stop_at_prob

    def output_fields(self, z_dim: int, n_attributes: int) -> list[pa.Field]:
        return result_fields(z_dim, n_attributes)

    def output_columns(self, result: EditResult, rows: slice) -> list[pa.Array]:
        return result_columns(result, rows)

    def make_editor(
        self, generator: LoadedModel, classifier: LoadedModel, engine: EngineConfig, backend: BackendConfig
    ) -> Editor:
        return backend_factory(backend.name)(generator, classifier, self.ascent, engine, backend)
