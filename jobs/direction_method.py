"""Direction edits as a job's edit method: z' = z + alpha * d, with d from a directions file.

`zsteer edit --method direction --directions FILE --direction NAME` and one strength rule:

- ``--alpha A``: every row moves by A (a row's ``alpha`` column overrides it);
- ``--alphas -3:3:7``: a strip, one output row per (input row, alpha), in that order, with an
  ``alpha`` column; the output key is (id, alpha): the duplicate index still works on input ids;
- ``--distance D``: InterFaceGAN's signed distance, z moves along d until z . n + b = D for the
  direction's fitted boundary (n, b), whatever the conditioning did to d;
- ``--until-prob P``: per row, the smallest |alpha| at which the classifier's probability of the
  direction's attribute reaches P: P >= 0.5 asks for at least P (alpha >= 0), P < 0.5 for at most
  P (alpha <= 0, the attribute is removed); a row already there keeps alpha 0. Doubling brackets then
  bisection, every round one batched forward of the rows still searching, at most
  ``max_evals`` forwards per row; ``stop_reason`` is target_reached or not_reached.

A row's ``direction`` column picks another direction of the file; ``--condition NAME ...`` makes every
direction orthogonal to those others (pipeline/direction_file.py). The editor renders through the
backend's editor (torch or onnxruntime: ``AscentLoop.render``, and ``scores`` where no image is
wanted: the starting latents, the search, a job without images), so a row's bits do not depend on its batch:
every forward runs at least MIN_ROWS rows, as the ascent's do (pipeline/ascent_loop.py).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import torch

from zsteer.core.errors import ZsteerError
from zsteer.core.status import NOT_REACHED, STEPS_DONE, TARGET_REACHED
from zsteer.pipeline.ascent_loop import AscentLoop
from zsteer.pipeline.checkpoints import LoadedModel
from zsteer.pipeline.config import AscentConfig, EngineConfig
from zsteer.pipeline.direction_file import DirectionSet, directions_fingerprint, load_directions
from zsteer.pipeline.editor import EditBatch, Editor, EditResult, as_tensor
from zsteer.pipeline.probability import probabilities

from .backends import BackendConfig, backend_factory
from .manifest import ModelShape
from .method import result_columns, result_fields
from .rows import MAX_ABS_Z

log = logging.getLogger("zsteer.jobs")

DIRECTION, ALPHA = "direction", "alpha"
# Most output rows one input row may become (a strip's alphas, an interpolation's frames). Every output
# row of a read batch is held in memory at once (latents, logits and, with images, 12 KiB of pixels at
# 64x64), so a strip of 1e8 grows past any machine; 1024 is far past any strip a sheet shows or a film
# needs (40 s at 25 fps) and keeps a 128-row batch's images near 1.5 GiB.
MAX_STRIP = 1024


def check_strength(name: str, value: float) -> None:
    """A strength or distance along a unit direction: finite and at most MAX_ABS_Z in magnitude (a move
    that far takes z past any latent of the prior: jobs/rows.py), else ValueError naming ``name``."""
    if not math.isfinite(value) or abs(value) > MAX_ABS_Z:
        raise ValueError(f"{name} {value}: expected a finite number of magnitude at most {MAX_ABS_Z:g}")


@dataclass(frozen=True)
class DirectionMethod:
    """Move each z along a named direction; identity: every field but the file's path (its fingerprint)."""

    name: ClassVar[str] = "direction"
    # `direction` and `alpha` pick a row's direction and strength (written back as the values applied);
    # a `targets` column is only carried: --until-prob's target is the direction's attribute.
    row_columns: ClassVar[tuple[str, ...]] = (DIRECTION, ALPHA)
    # Rows need no targets: the direction is the edit.
    needs_targets: ClassVar[bool] = False
    # The directions file (`zsteer directions fit`); its fingerprint is identity, its path is not.
    directions: Path = Path("directions")
    # The direction of rows without a `direction` value; None = the file's only direction.
    direction: str | None = None
    # Strength of rows without an `alpha` value (when neither alphas, distance nor until_prob is set).
    alpha: float = 1.0
    # A strip: one output row per alpha for every input row (`--alphas START:STOP:COUNT`).
    alphas: tuple[float, ...] = ()
    # Move to this signed distance from the direction's fitted boundary (boundary directions only).
    distance: float | None = None
    # Find per row the smallest |alpha| where P(direction's attribute) reaches this probability.
    until_prob: float | None = None
    # --until-prob: first bracket, largest |alpha| tried, forwards per row, and the alpha tolerance.
    first_alpha: float = 0.5
    max_alpha: float = 8.0
    max_evals: int = 16
    tolerance: float = 0.01
    # Directions every direction is made orthogonal to (conditional manipulation at edit time).
    conditions: tuple[str, ...] = field(default_factory=tuple)
    # Score the starting latent (`logits_before`): one of a fixed-alpha edit's two forwards per row. Off,
    # `logits_before` is NaN and the edit costs one forward per row, for bulk renders that need only the
    # edited images and their scores (`zsteer report` and `zsteer sheet` score "before" themselves).
    scores_before: bool = True

    def __post_init__(self):
        modes = [bool(self.alphas), self.distance is not None, self.until_prob is not None]
        if sum(modes) > 1:
            raise ValueError("give one of alphas, distance and until_prob")
        if len(self.alphas) > MAX_STRIP:
            raise ValueError(f"alphas: {len(self.alphas)} values, at most {MAX_STRIP} (MAX_STRIP) per row")
        check_strength("alpha", self.alpha)
        for value in self.alphas:
            check_strength("alphas", value)
        if self.distance is not None:
            check_strength("distance", self.distance)
        check_strength("max_alpha", self.max_alpha)
        check_strength("first_alpha", self.first_alpha)
        if self.direction is not None and self.conditions and set(self.conditions) <= {self.direction}:
            # A direction is never made orthogonal to itself (DirectionSet.conditioned skips it), so these
            # conditions would change nothing; with others besides it, it is made orthogonal to those.
            raise ValueError(
                f"condition {self.direction}: the direction moved (direction {self.direction}) cannot be made "
                "orthogonal to itself, and there is no other condition"
            )
        if self.until_prob is not None and not 0 < self.until_prob < 1:
            raise ValueError(f"until_prob must be in (0, 1), got {self.until_prob}")
        if self.until_prob is not None and not self.scores_before:
            raise ValueError("until_prob searches from the starting scores: it needs scores_before")
        if not 0 < self.first_alpha <= self.max_alpha or self.max_evals < 1 or self.tolerance <= 0:
            raise ValueError("need 0 < first_alpha <= max_alpha, max_evals >= 1 and tolerance > 0")

    @cached_property
    def loaded(self) -> DirectionSet:
        """The directions file, read once per method object (also in a worker that unpickled it)."""
        return load_directions(self.directions)

    def default_index(self) -> int | None:
        """Index of the direction of rows without a `direction` value (None: rows must name one)."""
        if self.direction is not None:
            return self.loaded.index(self.direction)
        return 0 if len(self.loaded.names) == 1 else None

    def identity(self) -> dict:
        self._check()
        settings = {
            "directions_fingerprint": directions_fingerprint(self.directions),
            "direction": self.direction, "alpha": self.alpha, "alphas": list(self.alphas),
            "distance": self.distance, "until_prob": self.until_prob, "first_alpha": self.first_alpha,
            "max_alpha": self.max_alpha, "max_evals": self.max_evals, "tolerance": self.tolerance,
            "conditions": list(self.conditions), "scores_before": self.scores_before,
        }  # fmt: skip
        return {"direction": settings}

    def _check(self) -> None:
        """Settings that need the file: names exist, boundaries and attributes are there where needed."""
        ds = self.loaded
        for name in self.conditions:
            ds.index(name)
        k = self.default_index()
        if k is not None:
            self._check_usable(ds.names[k], where=f"--direction {ds.names[k]}")
            if self.direction is None and set(self.conditions) == {ds.names[k]}:
                raise ZsteerError(
                    f"--condition {ds.names[k]}: the direction moved (the file's only direction) cannot be "
                    "made orthogonal to itself"
                )

    def _check_usable(self, name: str, where: str) -> str | None:
        """Why direction ``name`` cannot serve this method's strength rule (None: it can); raises for
        job-wide settings (``where`` starts with --)."""
        ds = self.loaded
        problem = None
        if self.distance is not None and not ds.has_boundary(name):
            problem = f"--distance needs a fitted boundary; direction {name!r} ({ds.method}) has none"
        elif self.until_prob is not None and ds.attributes[ds.index(name)] is None:
            problem = (
                f"--until-prob needs a direction that raises an attribute; {name!r} ({ds.method}) raises none"
            )
        if problem and where.startswith("--"):
            raise ZsteerError(f"{where}: {problem}")
        return problem

    @property
    def default_steps(self) -> int:
        return 1

    @property
    def default_stop_prob(self) -> float:
        return math.nan

    # ---- rows ---------------------------------------------------------------------------------------

    def row_inputs(
        self, batch: pa.RecordBatch, shape: ModelShape
    ) -> tuple[dict[str, np.ndarray], dict[int, str]]:
        """Per row: the direction's index (int64) and alpha (float32, NaN = the job's), with rejects."""
        n, ds = batch.num_rows, self.loaded
        default = self.default_index()
        index = np.full(n, -1 if default is None else default, np.int64)
        alpha = np.full(n, np.nan, np.float32)
        reasons: dict[int, str] = {}
        names = batch.schema.names
        if DIRECTION in names:
            column = batch.column(DIRECTION)
            if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
                reasons.update(
                    dict.fromkeys(range(n), f"column 'direction' must be strings, found {column.type}")
                )
            else:
                for i, value in enumerate(column.to_pylist()):
                    if value is None:
                        continue
                    if value not in ds.names:
                        reasons[i] = f"direction {value!r} is not in {Path(self.directions).name}"
                        continue
                    index[i] = ds.names.index(value)
        if ALPHA in names:
            column = batch.column(ALPHA)
            if not (pa.types.is_floating(column.type) or pa.types.is_integer(column.type)):
                reasons.update(
                    dict.fromkeys(range(n), f"column 'alpha' must be numbers, found {column.type}")
                )
            else:
                values = column.cast(pa.float64()).fill_null(math.nan).to_numpy(zero_copy_only=False)
                null = column.is_null().to_numpy(zero_copy_only=False)
                for i in np.flatnonzero(~null & ~np.isfinite(values)):
                    reasons.setdefault(int(i), f"alpha {values[i]} is not finite")
                for i in np.flatnonzero(~null & np.isfinite(values) & (np.abs(values) > MAX_ABS_Z)):
                    reasons.setdefault(
                        int(i),
                        f"alpha {values[i]:.4g} is beyond {MAX_ABS_Z:g} in magnitude (it moves z past "
                        "any latent of the prior)",
                    )
                alpha = np.where(null, np.nan, values).astype(np.float32)
        for i in np.flatnonzero(index < 0):
            reasons.setdefault(
                int(i), "no direction: the row's 'direction' is null and no --direction was given"
            )
        for i in np.flatnonzero(index >= 0):
            if int(i) not in reasons:
                problem = self._check_usable(ds.names[index[i]], where="row")
                if problem:
                    reasons[int(i)] = problem
        return {DIRECTION: index, ALPHA: alpha}, reasons

    # ---- output -------------------------------------------------------------------------------------

    def output_fields(self, z_dim: int, n_attributes: int) -> list[pa.Field]:
        return [pa.field(DIRECTION, pa.string()), pa.field(ALPHA, pa.float32())] + result_fields(
            z_dim, n_attributes
        )

    def output_columns(self, result: EditResult, rows: slice) -> list[pa.Array]:
        names = np.asarray(self.loaded.names, dtype=object)[result.direction[rows].numpy()]
        return [
            pa.array(names, pa.string()),
            pa.array(result.alpha[rows].numpy().astype(np.float32)),
        ] + result_columns(result, rows)

    def check_job(self, plan, shape: ModelShape, root) -> None:
        """Refuse, before the job folder is written, directions that do not fit the job's models, and a
        file of several directions with neither --direction nor a 'direction' column (every row would be
        rejected; a row's null in such a column is per-row data, a reject)."""
        self._check()
        self._check_models(shape.z_dim, shape.attributes)
        if self.default_index() is None and DIRECTION not in plan.carried.names:
            names = self.loaded.names
            shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            raise ZsteerError(
                f"--directions {self.directions}: {len(names)} directions ({shown}); give --direction NAME "
                "or a 'direction' column in the manifest"
            )

    def _check_models(self, z_dim: int, attributes: tuple[str, ...]) -> None:
        """The file against the models: its length, and what --distance / --until-prob need of them."""
        ds = self.loaded
        if ds.z_dim != z_dim:
            raise ZsteerError(
                f"{self.directions}: directions of length {ds.z_dim}, the generator takes z_dim={z_dim}"
            )
        if self.distance is not None:
            for name in ds.names:
                vector, normal = ds.conditioned(name, self.conditions).float(), ds.boundary(name)[0].float()
                if ds.has_boundary(name) and float((vector * normal).sum()) < 1e-3:
                    raise ZsteerError(
                        f"--distance: direction {name!r} conditioned on {', '.join(self.conditions)} "
                        "is orthogonal to its own boundary; it cannot move to a distance"
                    )
        if self.until_prob is not None:
            for name, attribute in zip(ds.names, ds.attributes, strict=True):
                if attribute is not None and attribute not in attributes:
                    raise ZsteerError(f"direction {name!r} raises {attribute!r}, which the classifier lacks")

    def _warn_other_generator(self, fingerprint: str) -> None:
        """One warning when the file was fitted on another generator: used as asked (related generators
        may share directions), but said, since a direction of another generator is usually noise here."""
        fitted = self.loaded.generator_fingerprint
        if fitted is not None and fitted != fingerprint:
            log.warning(
                "%s: directions fitted on generator %s, editing with generator %s",
                self.directions,
                fitted,
                fingerprint,
            )

    def make_editor(
        self, generator: LoadedModel, classifier: LoadedModel, engine: EngineConfig, backend: BackendConfig
    ) -> Editor:
        self._check()
        self._check_models(generator.spec.z_dim, classifier.attributes)
        self._warn_other_generator(generator.fingerprint)
        renderer = backend_factory(backend.name)(
            generator, classifier, AscentConfig(steps=0), engine, backend
        )
        return DirectionEditor(self, renderer, classifier.attributes)


@dataclass
class DirectionResult(EditResult):
    """An EditResult with the direction (index into the file) and alpha of each result row."""

    direction: torch.Tensor | None = None  # [M] int64
    alpha: torch.Tensor | None = None  # [M] float32


class DirectionEditor:
    """Edits by z + alpha * d, rendering and scoring through a backend's editor (``AscentLoop.render`` and
    ``scores``)."""

    def __init__(self, method: DirectionMethod, renderer: AscentLoop, attributes: tuple[str, ...]):
        self.method = method
        self.renderer = renderer
        self.n_attributes = len(attributes)
        ds = method.loaded
        # [K, D] the directions as applied (conditioned), and each one's boundary normal and offset.
        self.vectors = torch.stack([ds.conditioned(n, method.conditions) for n in ds.names]).float()
        self.normals = torch.stack([ds.boundary(n)[0] for n in ds.names]).float()
        self.offsets = ds.intercepts.float()
        # [K] the classifier output each direction raises (-1: none or unknown to this classifier).
        self.attribute = torch.tensor(
            [attributes.index(a) if a in attributes else -1 for a in ds.attributes], dtype=torch.int64
        )

    def render(self, z, labels=None):
        return self.renderer.render(z, labels)

    def _logits(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Logits [m, A] of z [m, D]: the renderer's scores (no images made)."""
        return self.renderer.scores(z, labels).float()

    def edit_batch(self, batch: EditBatch, render: bool = True) -> EditResult:
        m = self.method
        z0 = as_tensor(batch.z, torch.device("cpu"), torch.float32)  # [n, D]
        labels = as_tensor(batch.labels, torch.device("cpu"), torch.int64)
        n = z0.shape[0]
        extra = batch.extra or {}
        default = m.default_index()
        index = as_tensor(extra.get(DIRECTION), torch.device("cpu"), torch.int64)
        if index is None:
            index = torch.full((n,), -1 if default is None else default, dtype=torch.int64)
        own = as_tensor(extra.get(ALPHA), torch.device("cpu"), torch.float32)
        v = self.vectors[index]  # [n, D]
        unscored = torch.full((n, self.n_attributes), math.nan)  # [n, A]: --no-scores-before
        before = self._logits(z0, labels) if m.scores_before else unscored  # [n, A]
        source = None
        status = torch.full((n,), STEPS_DONE, dtype=torch.int32)
        evals = torch.ones(n, dtype=torch.int32)
        if m.alphas:
            strip = torch.tensor(m.alphas, dtype=torch.float32)  # [S]
            s = strip.numel()
            source = torch.arange(n).repeat_interleave(s)  # [n * S]
            alpha = strip.repeat(n)
        elif m.distance is not None:
            normal = self.normals[index]  # [n, D]
            distance0 = (z0 * normal).sum(1) + self.offsets[index]  # [n] signed distance now
            alpha = (m.distance - distance0) / (v * normal).sum(1).clamp_min(1e-6)
        elif m.until_prob is not None:
            alpha, status, evals = self._search(z0, labels, v, before, index)
        else:
            alpha = torch.full((n,), m.alpha)
        if own is not None and not m.alphas and m.distance is None and m.until_prob is None:
            alpha = torch.where(torch.isnan(own), alpha, own)
        rows = torch.arange(n) if source is None else source
        z_start = z0[rows]
        z_edit = z_start + alpha.unsqueeze(1) * v[rows]  # [M, D]
        row_labels = None if labels is None else labels[rows]
        if render:
            images, after = self.renderer.render(z_edit, row_labels)
        else:
            images, after = None, self._logits(z_edit, row_labels)
        return DirectionResult(
            z_edited=z_edit, logits_before=before[rows], logits_after=after.float(),
            latent_shift=torch.linalg.vector_norm(z_edit - z_start, dim=1), steps_taken=evals[rows],
            status=status[rows], images=images, source=source,
            direction=index[rows], alpha=alpha.float(),
        )  # fmt: skip

    def _search(
        self, z0: torch.Tensor, labels: torch.Tensor | None, v: torch.Tensor, before: torch.Tensor,
        index: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        """--until-prob for every row at once: (alpha [n], status [n], forwards used [n]).

        Per row, the target is the probability of its direction's attribute: at least P (P >= 0.5, along
        +d) or at most P (P < 0.5, along -d); a row already there gets alpha 0. Brackets double from first_alpha up to max_alpha; then
        bisection until the bracket is narrower than tolerance. A round is one forward of the rows
        still searching; no row uses more than max_evals forwards.
        """
        m = self.method
        p_target = float(m.until_prob)
        n = z0.shape[0]
        attr = self.attribute[index]  # [n]
        p0 = probabilities(before.gather(1, attr.clamp_min(0).unsqueeze(1)).squeeze(1))  # [n]
        sign = torch.full((n,), 1.0 if p_target >= 0.5 else -1.0)  # gain the attribute, or lose it

        def reached(p: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            return sign[rows] * (p - p_target) >= 0

        lo = torch.zeros(n)  # |alpha| known not to reach (0 = the start)
        hi = torch.full((n,), math.nan)  # |alpha| known to reach
        evals = torch.zeros(n, dtype=torch.int32)
        done0 = reached(p0, torch.arange(n))
        hi[done0] = 0.0
        probe = torch.full((n,), float(m.first_alpha))
        searching = ~done0
        while searching.any():
            rows = searching.nonzero().squeeze(1)
            bracketing = torch.isnan(hi[rows])
            a = torch.where(bracketing, probe[rows], (lo[rows] + hi[rows]) / 2)  # [r] |alpha| tried
            logits = self._logits(z0[rows] + (sign[rows] * a).unsqueeze(1) * v[rows], _take(labels, rows))
            p = probabilities(logits.gather(1, attr[rows].unsqueeze(1)).squeeze(1))
            evals[rows] += 1
            ok = reached(p, rows)
            hi[rows] = torch.where(ok, a, hi[rows])
            lo[rows] = torch.where(ok, lo[rows], a)
            probe[rows] = torch.where(bracketing & ~ok, (a * 2).clamp_max(m.max_alpha), probe[rows])
            gave_up = bracketing & ~ok & (a >= m.max_alpha)  # the bound is not enough
            narrow = ~torch.isnan(hi[rows]) & (hi[rows] - lo[rows] <= m.tolerance)
            out_of_budget = evals[rows] >= m.max_evals
            searching[rows] = ~(gave_up | narrow | out_of_budget)
        found = ~torch.isnan(hi)
        alpha = sign * torch.where(found, hi, lo)  # not reached: the furthest alpha tried
        status = torch.where(found, TARGET_REACHED, NOT_REACHED).to(torch.int32)
        return alpha, status, evals


def _take(x: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor | None:
    return None if x is None else x[rows]


def parse_alphas(text: str) -> tuple[float, ...]:
    """ "START:STOP:COUNT" -> COUNT evenly spaced values (both ends included), or "a,b,c" as given."""
    try:
        if ":" in text:
            start, stop, count = text.split(":")
            k = int(count)
            if k < 1:
                raise ValueError
            if k > MAX_STRIP:
                raise ZsteerError(f"--alphas {text}: {k} values, at most {MAX_STRIP} per row (MAX_STRIP)")
            return tuple(float(x) for x in np.linspace(float(start), float(stop), k))
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise ZsteerError(f"--alphas {text}: expected START:STOP:COUNT (e.g. -3:3:7) or a,b,c") from None
