"""Interpolation as a job's edit method: one output row per frame on the path from z to another latent.

`zsteer edit --method interpolate --frames K --path lerp|slerp`. Each row gives its end point:

- ``z_to``: a latent (list of z_dim floats);
- ``id_to``: the id of another row of the job, in any file (its z is found by the job's latent lookup,
  jobs/latent_lookup.py, built once before any unit runs);
- ``label_to``: for a conditional generator, the class to blend towards. As in the course's C1W4A
  notebook, the one-hot vectors are blended, (1 - t) * one_hot(label) + t * one_hot(label_to), and fed
  with z; the exported ONNX generator takes integer labels, so blended rows need ``--backend torch``.

A row with none of them is rejected. Frames are at t = 0, 1/(K-1), ..., 1; frame 0 is z and frame K-1
the end point, bit for bit. Output: the input's columns, then ``frame`` and ``t``, then the standard
columns (``z_edited`` is the frame's latent, ``logits_before`` the start's, ``logits_after`` the
frame's, ``latent_shift`` its distance from z). The output key is (id, frame).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import torch

from zsteer.core.errors import ZsteerError
from zsteer.core.status import STEPS_DONE
from zsteer.pipeline.ascent_loop import MIN_ROWS, AscentLoop, pad_rows
from zsteer.pipeline.checkpoints import LoadedModel
from zsteer.pipeline.config import AscentConfig, EngineConfig
from zsteer.pipeline.directions import PATHS, blend_classes, interpolate_at
from zsteer.pipeline.editor import EditBatch, Editor, EditResult, as_tensor, to_uint8_images
from zsteer.pipeline.generic_net import build_net
from zsteer.pipeline.network import EditNet

from .backends import BackendConfig, backend_factory
from .direction_method import MAX_STRIP
from .duplicates import id_keys
from .latent_lookup import LatentLookup, build_latent_lookup, float_rows
from .manifest import ManifestPlan, ModelShape
from .method import result_columns, result_fields
from .rows import MAX_ABS_Z, too_large

Z_TO, ID_TO, LABEL_TO = "z_to", "id_to", "label_to"
FRAME, T = "frame", "t"


@dataclass(frozen=True)
class InterpolateMethod:
    """Frames from each row's z to its end point; identity: frames and path."""

    name: ClassVar[str] = "interpolate"
    # The end point of each row (read; carried to the output as they are).
    row_columns: ClassVar[tuple[str, ...]] = (Z_TO, ID_TO, LABEL_TO)
    # Rows need no targets: the path is the edit.
    needs_targets: ClassVar[bool] = False
    # Frames per row, both ends included (>= 2).
    frames: int = 8
    # "lerp" (straight line) or "slerp" (great circle, norms moved linearly: pipeline/directions.py).
    path: str = "lerp"
    # The job's id_to lookup (set by ``prepare`` before the units run; not identity).
    lookup: LatentLookup | None = None
    # Whether the manifest has a label_to column (set by ``prepare``; not identity): the editor is then
    # refused at once where the generator cannot take a blended class, not at the first unit.
    blends_classes: bool = False

    def __post_init__(self):
        if not 2 <= self.frames <= MAX_STRIP:
            raise ValueError(f"frames must be in [2, {MAX_STRIP}] (MAX_STRIP), got {self.frames}")
        if self.path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {self.path!r}")

    def identity(self) -> dict:
        return {"interpolate": {"frames": self.frames, "path": self.path}}

    @property
    def default_steps(self) -> int:
        return 0

    @property
    def default_stop_prob(self) -> float:
        return float("nan")

    def check_job(self, plan: ManifestPlan, shape: ModelShape, root) -> None:
        """Refuse, before the job folder is written, a manifest with no end point column (every row would
        be rejected), an end point column of a type that cannot hold end points (naming the file), or an
        id_to column on an --out that cannot hold the lookup (``root``: a path or an object store URI)."""
        if not any(name in plan.carried.names for name in self.row_columns):
            raise ZsteerError(
                f"--method interpolate: the manifest has none of the columns {', '.join(self.row_columns)}; "
                "each row needs an end point to interpolate to"
            )
        for name in self.row_columns:
            for file in plan.files:
                if name in file.schema.names:
                    problem = _column_problem(name, file.schema.field(name).type, plan.id_type, shape)
                    if problem:
                        raise ZsteerError(f"{file.path}: column {name!r} {problem}")
        if ID_TO in plan.carried.names and not isinstance(root, Path):  # a URI: jobs/storage.py
            raise ZsteerError(
                f"--out {root}: interpolation with id_to memory-maps its lookup in the job folder, which needs "
                "a path of a file system (a shared one for --executor ray), not an object store URI"
            )

    def prepare(self, plan: ManifestPlan, shape: ModelShape, root: Path) -> InterpolateMethod:
        """This method with the job's id_to lookup, when the manifest has an id_to column."""
        self.check_job(plan, shape, root)
        blends = _given(plan, LABEL_TO)
        if ID_TO not in plan.carried.names:
            return replace(self, blends_classes=blends)
        lookup = build_latent_lookup(plan, ID_TO, shape.z_dim, root)
        return replace(self, lookup=lookup, blends_classes=blends)

    # ---- rows ---------------------------------------------------------------------------------------

    def row_inputs(
        self, batch: pa.RecordBatch, shape: ModelShape
    ) -> tuple[dict[str, np.ndarray], dict[int, str]]:
        """Per row: the end latent [n, D] (NaN where none), the end class [n] (-1 = the row's own)."""
        n, d = batch.num_rows, shape.z_dim
        names = batch.schema.names
        z_to = np.full((n, d), np.nan, np.float32)
        has_end = np.zeros(n, bool)
        reasons: dict[int, str] = {}
        if Z_TO in names:
            column = batch.column(Z_TO)
            value_type = getattr(column.type, "value_type", None)
            if value_type is None or not pa.types.is_floating(value_type):
                return {}, dict.fromkeys(
                    range(n), f"column 'z_to' must be lists of floats, found {column.type}"
                )
            values, usable, null, largest = float_rows(column, d)
            for i in np.flatnonzero(~usable & ~null):
                far = largest[i] > MAX_ABS_Z
                reasons[int(i)] = too_large(Z_TO, largest[i]) if far else f"z_to must hold {d} finite values"
            z_to[usable], has_end = values[usable], usable
        if ID_TO in names:
            column = batch.column(ID_TO)
            named = np.flatnonzero(column.is_valid().to_numpy(zero_copy_only=False) & ~has_end)
            if len(named):
                if self.lookup is None:
                    raise ZsteerError("id_to: the job's lookup was not built (InterpolateMethod.prepare)")
                values = column.take(pa.array(named))
                wanted = pa.int64() if pa.types.is_integer(values.type) else pa.string()
                found_z, found = self.lookup.find(id_keys(values.cast(wanted)))
                shown = values.to_pylist()
                for j, i in enumerate(named):
                    if found[j]:
                        z_to[i], has_end[i] = found_z[j], True
                    else:
                        reasons.setdefault(int(i), f"id_to {shown[j]!r} names no row with a usable z")
        label_to = np.full(n, -1, np.int64)
        if LABEL_TO in names:
            column = batch.column(LABEL_TO)
            if not pa.types.is_integer(column.type):
                return {}, dict.fromkeys(range(n), f"column 'label_to' must be integers, found {column.type}")
            valid = column.is_valid().to_numpy(zero_copy_only=False)
            values = column.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
            if not shape.n_labels and valid.any():
                return {}, {
                    int(i): "label_to: the generator is not conditional" for i in np.flatnonzero(valid)
                }
            for i in np.flatnonzero(valid & ((values < 0) | (values >= max(shape.n_labels, 1)))):
                reasons[int(i)] = f"label_to {values[i]} out of range [0, {shape.n_labels})"
            label_to = np.where(valid, values, -1)
        for i in np.flatnonzero(~has_end & (label_to < 0)):
            reasons.setdefault(int(i), "nothing to interpolate to: give z_to, id_to or label_to")
        return {Z_TO: z_to, LABEL_TO: label_to}, reasons

    # ---- output -------------------------------------------------------------------------------------

    def output_fields(self, z_dim: int, n_attributes: int) -> list[pa.Field]:
        return [pa.field(FRAME, pa.int32()), pa.field(T, pa.float32())] + result_fields(z_dim, n_attributes)

    def output_columns(self, result: EditResult, rows: slice) -> list[pa.Array]:
        return [
            pa.array(result.frame[rows].numpy().astype(np.int32)),
            pa.array(result.t[rows].numpy().astype(np.float32)),
        ] + result_columns(result, rows)

    def make_editor(
        self, generator: LoadedModel, classifier: LoadedModel, engine: EngineConfig, backend: BackendConfig
    ) -> Editor:
        renderer = backend_factory(backend.name)(
            generator, classifier, AscentConfig(steps=0), engine, backend
        )
        if self.blends_classes and getattr(generator.spec, "class_input", None) == "embedding":
            raise ZsteerError(
                f"label_to: {generator.path} takes its class as an embedding index, so classes cannot be "
                "blended; blending needs a generator whose class enters as a one-hot vector"
            )
        blender = (
            build_net(generator, classifier, fast=True)
            if generator.spec.n_classes and backend.name == "torch"
            else None
        )
        return InterpolateEditor(self, renderer, blender, engine.batch_size)


def _given(plan: ManifestPlan, name: str) -> bool:
    """Whether the manifest has column ``name`` with values (a column of type null holds none)."""
    return name in plan.carried.names and not pa.types.is_null(plan.carried.field(name).type)


def _column_problem(name: str, kind: pa.DataType, id_type: pa.DataType, shape: ModelShape) -> str | None:
    """What is wrong with an end point column of type ``kind`` (None: nothing; a column of type null
    holds no end points, so no rows use it): every row would be rejected for it."""
    if pa.types.is_null(kind):
        return None
    if name == LABEL_TO and not pa.types.is_integer(kind):
        return f"must be integers (classes), found {kind}"
    if name == Z_TO:
        listed = pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
        if not listed or not pa.types.is_floating(kind.value_type):
            return f"must be lists of {shape.z_dim} floats, found {kind}"
        if pa.types.is_fixed_size_list(kind) and kind.list_size != shape.z_dim:
            return f"holds {kind.list_size} values per row; the generator takes z_dim={shape.z_dim}"
    if name == ID_TO:
        text = pa.types.is_string(kind) or pa.types.is_large_string(kind)
        same = (pa.types.is_integer(kind) and pa.types.is_integer(id_type)) or (
            text and pa.types.is_string(id_type)
        )
        if not same:
            return f"is {kind} but the ids are {id_type}: it must name ids"
    return None


@dataclass
class FrameResult(EditResult):
    """An EditResult with each result row's frame index and fraction t."""

    frame: torch.Tensor | None = None  # [M] int32
    t: torch.Tensor | None = None  # [M] float32


class InterpolateEditor:
    """Renders the frames of every row through the backend's editor (``AscentLoop.render``, or ``scores``
    without images); blended classes through ``blender``."""

    def __init__(
        self, method: InterpolateMethod, renderer: AscentLoop, blender: EditNet | None, batch_size: int
    ):
        self.method = method
        self.renderer = renderer
        self.blender = blender
        self.batch_size = batch_size

    def render(self, z, labels=None):
        return self.renderer.render(z, labels)

    @torch.no_grad()
    def _render_blended(
        self, z: torch.Tensor, soft: torch.Tensor, images: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Images (or None) and logits of z [M, D] with soft class vectors [M, C], batch_size rows at a
        time, each batch padded to at least MIN_ROWS (a row's bits do not depend on its batch)."""
        net = self.blender
        pixels, logits = [], []
        for s in range(0, z.shape[0], self.batch_size):
            zb, cb = z[s : s + self.batch_size], soft[s : s + self.batch_size]
            m = zb.shape[0]
            size = max(m, MIN_ROWS)
            out = net.generate(torch.cat([pad_rows(zb, size), pad_rows(cb, size)], dim=1))
            if images:
                pixels.append(to_uint8_images(out[:m]))
            logits.append(net.classify(out)[:m].float())
        return (torch.cat(pixels) if images else None), torch.cat(logits)

    def edit_batch(self, batch: EditBatch, render: bool = True) -> EditResult:
        cpu = torch.device("cpu")
        z0 = as_tensor(batch.z, cpu, torch.float32)  # [n, D]
        labels = as_tensor(batch.labels, cpu, torch.int64)  # [n] or None
        n, k = z0.shape[0], self.method.frames
        extra = batch.extra or {}
        z_to = as_tensor(extra[Z_TO], cpu, torch.float32)  # [n, D], NaN = no latent end point
        label_to = as_tensor(extra[LABEL_TO], cpu, torch.int64)  # [n], -1 = the row's own class
        z_end = torch.where(torch.isnan(z_to), z0, z_to)
        t = torch.linspace(0, 1, k)  # [K]
        frames = interpolate_at(z0, z_end, t, self.method.path).reshape(n * k, -1)  # [n * K, D]
        source = torch.arange(n).repeat_interleave(k)
        frame_t = t.repeat(n)
        blend = torch.zeros(n, dtype=torch.bool) if labels is None else (label_to >= 0) & (label_to != labels)
        # Frame 0 is z with the row's own class: rendered once, by the renderer, its logits are also the
        # row's "before" (the same bits as scoring z alone: every forward is batch invariant).
        plain = ~blend[source] | (frame_t == 0)  # [n * K]
        rows = plain.nonzero().squeeze(1)
        row_labels = None if labels is None else labels[source][rows]
        if render:
            img, lg = self.renderer.render(frames[rows], row_labels)
        else:
            img, lg = None, self.renderer.scores(frames[rows], row_labels)
        parts = [(rows, img, lg)]
        if not plain.all():
            if self.blender is None:
                raise ZsteerError(
                    "label_to: blending classes needs --backend torch (the exported generator takes integer labels)"
                )
            rows = (~plain).nonzero().squeeze(1)
            soft = blend_classes(
                labels[source][rows], label_to[source][rows], frame_t[rows], self.blender.n_labels
            )
            parts.append((rows, *self._render_blended(frames[rows], soft, render)))
        logits = torch.empty(n * k, parts[0][2].shape[1])  # [n * K, A]
        images = torch.empty((n * k, *parts[0][1].shape[1:]), dtype=torch.uint8) if render else None
        for rows, img, lg in parts:
            logits[rows] = lg.float()
            if images is not None:
                images[rows] = img
        before = logits[torch.arange(n) * k]  # [n, A]: frame 0 of each row
        start_z = z0[source]
        return FrameResult(
            z_edited=frames, logits_before=before[source], logits_after=logits,
            latent_shift=torch.linalg.vector_norm(frames - start_z, dim=1),
            steps_taken=torch.zeros(n * k, dtype=torch.int32),
            status=torch.full((n * k,), STEPS_DONE, dtype=torch.int32), images=images,
            source=source, frame=torch.arange(k, dtype=torch.int32).repeat(n), t=frame_t,
        )  # fmt: skip
