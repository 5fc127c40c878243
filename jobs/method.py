"""The edit-method seam: what a job needs to know of a way of editing, and the registry of methods by name.

A method is a frozen dataclass holding its own settings. It tells the job:

- ``identity()``: the settings its results depend on (job.json; a resume with others is refused);
- ``row_columns``: the per-row override columns of the manifest it reads (manifest.ROW_COLUMNS);
- ``default_steps`` / ``default_stop_prob``: what rows without an override get;
- ``output_fields`` / ``output_columns``: the columns it writes after the carried ones;
- ``make_editor(...)``: the ``Editor`` (pipeline/editor.py) that edits the rows.

Optional members (``row_inputs``, ``needs_targets``, and an EditResult with ``source`` for several
output rows per input row) let a method read its own per-row columns, run without targets, or expand
rows (jobs/direction_method.py, jobs/interpolate_method.py); the helpers below give their defaults.

Adding a method is one module with such a class plus one ``register_method`` call (or one entry in
``BUILTIN``): docs/ARCHITECTURE.md, "Adding an edit method".
"""

from __future__ import annotations

import importlib
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa

from zsteer.core.errors import ZsteerError
from zsteer.core.status import stop_reasons
from zsteer.pipeline.checkpoints import LoadedModel
from zsteer.pipeline.config import EngineConfig
from zsteer.pipeline.editor import Editor, EditResult

from .backends import BackendConfig


@runtime_checkable
class EditMethod(Protocol):
    """A way of editing, as a job runs it."""

    name: ClassVar[str]  # the registry key, `--method NAME`, job.json's "method"
    row_columns: ClassVar[tuple[str, ...]]  # override columns read from the manifest

    def identity(self) -> dict:
        """The settings the results depend on, as JSON-able data."""
        ...

    @property
    def default_steps(self) -> int: ...

    @property
    def default_stop_prob(self) -> float: ...  # NaN = never

    def output_fields(self, z_dim: int, n_attributes: int) -> list[pa.Field]:
        """The output columns after the carried ones (the job appends `image` when images are on)."""
        ...

    def output_columns(self, result: EditResult, rows: slice) -> list[pa.Array]:
        """``rows`` of ``result`` as arrays in the order of ``output_fields``."""
        ...

    def make_editor(
        self, generator: LoadedModel, classifier: LoadedModel, engine: EngineConfig, backend: BackendConfig
    ) -> Editor:
        """The editor of this method over these models."""
        ...


# name -> "module:attribute" of the methods zsteer ships (imported when first looked up).
BUILTIN: dict[str, str] = {
    "ascent": "zsteer.jobs.ascent_method:AscentMethod",
    "direction": "zsteer.jobs.direction_method:DirectionMethod",
    "interpolate": "zsteer.jobs.interpolate_method:InterpolateMethod",
}
_REGISTERED: dict[str, type] = {}


def register_method(cls: type) -> type:
    """Make ``cls`` (an EditMethod class) available by ``cls.name``; usable as a class decorator."""
    _REGISTERED[cls.name] = cls
    return cls


def unregister_method(name: str) -> None:
    """Remove a method registered with ``register_method`` (tests)."""
    _REGISTERED.pop(name, None)


def method_names() -> list[str]:
    return sorted(set(BUILTIN) | set(_REGISTERED))


def method_class(name: str) -> type:
    """The method class registered as ``name``; a one-line error for an unknown name."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name in BUILTIN:
        module, attr = BUILTIN[name].split(":")
        return getattr(importlib.import_module(module), attr)
    raise ZsteerError(f"--method {name}: unknown edit method; known: {', '.join(method_names())}")


def check_registered(method: EditMethod) -> None:
    """Refuse a job whose method is not the one registered under its name (job.json names methods)."""
    if not isinstance(method, method_class(method.name)):
        raise ZsteerError(f"method {method.name!r}: {type(method).__name__} is not the registered class")


# ---- the columns every method built on EditResult writes -------------------------------------------


def result_fields(z_dim: int, n_attributes: int) -> list[pa.Field]:
    """z_edited, logits_before, logits_after, latent_shift, steps_taken, stop_reason."""
    return [
        pa.field("z_edited", pa.list_(pa.float32(), z_dim)),
        pa.field("logits_before", pa.list_(pa.float32(), n_attributes)),
        pa.field("logits_after", pa.list_(pa.float32(), n_attributes)),
        pa.field("latent_shift", pa.float32()),
        pa.field("steps_taken", pa.int32()),
        pa.field("stop_reason", pa.string()),
    ]


def _fixed_list(values: np.ndarray) -> pa.FixedSizeListArray:  # [n, k] -> fixed_size_list<float32>[k]
    values = np.ascontiguousarray(values, np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def result_columns(result: EditResult, rows: slice) -> list[pa.Array]:
    """The arrays of ``result_fields`` for ``rows`` of an EditResult."""
    return [
        _fixed_list(result.z_edited[rows].numpy()),
        _fixed_list(result.logits_before[rows].numpy()),
        _fixed_list(result.logits_after[rows].numpy()),
        pa.array(result.latent_shift[rows].numpy().astype(np.float32)),
        pa.array(result.steps_taken[rows].numpy().astype(np.int32)),
        pa.array(stop_reasons(result.status[rows].numpy()), pa.string()),
    ]


# ---- optional members, with their defaults ------------------------------------------------------------


def row_inputs(
    method: EditMethod, batch: pa.RecordBatch, shape
) -> tuple[dict[str, np.ndarray], dict[int, str]]:
    """The method's own per-row inputs from a manifest batch (``method.row_inputs(batch, shape)``, if it
    has one; ``shape``: manifest.ModelShape): name -> [n, ...] array, and {row in the batch: reason} for
    rows it rejects. Default: none."""
    hook = getattr(method, "row_inputs", None)
    return ({}, {}) if hook is None else hook(batch, shape)


def check_method(method: EditMethod, plan, shape, root) -> None:
    """Refuse (ZsteerError) a job the method cannot run, before anything is written: ``method.check_job(plan,
    shape, root)``, if it has one (the interpolation's id_to type and job folder). Default: nothing."""
    hook = getattr(method, "check_job", None)
    if hook is not None:
        hook(plan, shape, root)


def prepare_method(method: EditMethod, plan, shape, root) -> EditMethod:
    """The method with what it builds once per job before any unit runs (``method.prepare(plan, shape,
    root)``: the interpolation's id_to lookup in the job folder ``root``); default: itself."""
    hook = getattr(method, "prepare", None)
    return method if hook is None else hook(plan, shape, root)


def needs_targets(method: EditMethod) -> bool:
    """Whether rows need targets (``--target`` or a ``targets`` column); a method may say not."""
    return bool(getattr(method, "needs_targets", True))


def replaced_columns(method: EditMethod, z_dim: int, n_attributes: int) -> tuple[str, ...]:
    """Override columns the method reads and writes again (the value it applied): not carried as given."""
    written = {f.name for f in method.output_fields(z_dim, n_attributes)}
    return tuple(c for c in method.row_columns if c in written)
