"""The directions file: named unit directions in z-space, as ``NAME.safetensors`` plus ``NAME.json``.

The safetensors file holds the tensors (``vectors`` [K, D] unit rows, ``intercepts`` [K] with NaN where
a direction has no boundary, and ``values`` [K] where the method has them: eigenvalues, explained
variance); the JSON sidecar says what they are: the method, each direction's name, the attribute it
raises (or null), its fit statistics, the models it was fitted on (their fingerprints, as job.json
records them), the seed and the settings. Data only: nothing in either file runs code when read.

``conditioned`` (InterFaceGAN's conditional manipulation) gives a direction with its components along
other directions of the set removed, the same operation at fit time and at edit time; ``boundary`` the
fitted hyperplane, which conditioning leaves where it was.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from zsteer.core.errors import ZsteerError

from .directions import project_out

FORMAT = "zsteer-directions"
VERSION = 1


@dataclass(frozen=True)
class DirectionSet:
    """Named directions in z-space and how they were found."""

    # How they were found: boundary, gradient, sefa, pca, axis.
    method: str
    # One name per direction, unique: what `--direction` and a row's `direction` column name.
    names: tuple[str, ...]
    # [K, D] unit rows.
    vectors: torch.Tensor
    # [K] boundary offsets: the signed distance of z to direction k's boundary is z . n_k + b_k; NaN
    # where the method draws no boundary (all but boundary).
    intercepts: torch.Tensor
    # The classifier attribute each direction raises (boundary, gradient), or None (unsupervised).
    attributes: tuple[str | None, ...]
    # Per direction: fit statistics (accuracies, eigenvalue, explained variance, conditions).
    stats: tuple[dict, ...]
    # [K] eigenvalues (sefa) or explained variance ratios (pca); None for the others.
    values: torch.Tensor | None = None
    # Models, seed, settings and timings of the fit: JSON-able, written to the sidecar as they are.
    info: dict = field(default_factory=dict)
    # [K, D] the fitted boundaries' unit normals where they differ from ``vectors`` (conditioned at fit
    # time); None = the vectors are the normals.
    normals: torch.Tensor | None = None

    def __post_init__(self):
        k = len(self.names)
        if self.vectors.ndim != 2 or self.vectors.shape[0] != k or len(self.attributes) != k:
            raise ValueError(
                f"{k} names but vectors {tuple(self.vectors.shape)}, {len(self.attributes)} attributes"
            )
        if len(set(self.names)) != k:
            raise ValueError("direction names must be unique")

    @property
    def z_dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def generator_fingerprint(self) -> str | None:
        """The fingerprint of the generator the directions were fitted on (None: not recorded)."""
        models = self.info.get("models")
        generator = models.get("generator") if isinstance(models, dict) else None
        fingerprint = generator.get("fingerprint") if isinstance(generator, dict) else None
        return fingerprint if isinstance(fingerprint, str) else None

    def index(self, name: str) -> int:
        """Position of the direction ``name``; a one-line error listing the names otherwise."""
        try:
            return self.names.index(name)
        except ValueError:
            shown = ", ".join(self.names[:12]) + (", ..." if len(self.names) > 12 else "")
            raise ZsteerError(f"no direction {name!r} in the directions file; it has: {shown}") from None

    def has_boundary(self, name: str) -> bool:
        return not math.isnan(float(self.intercepts[self.index(name)]))

    def boundary(self, name: str) -> tuple[torch.Tensor, float]:
        """(unit normal [D], offset) of direction ``name``'s boundary: signed distance = z . n + b.

        The normal is the fitted one even after ``with_conditions`` moved the direction itself.
        """
        k = self.index(name)
        normals = self.vectors if self.normals is None else self.normals
        return normals[k], float(self.intercepts[k])

    def conditioned(self, name: str, conditions: tuple[str, ...]) -> torch.Tensor:
        """Direction ``name`` [D] made orthogonal to every direction in ``conditions`` (itself skipped)."""
        k = self.index(name)
        others = [self.index(c) for c in conditions if c != name]
        if not others:
            return self.vectors[k]
        return project_out(self.vectors[k], self.vectors[others])

    def with_conditions(self, conditions: tuple[str, ...]) -> DirectionSet:
        """Every direction conditioned on ``conditions`` (fit time: ``--condition``), recorded in stats;
        the boundaries (normals, intercepts) stay the fitted ones, so distances keep their meaning."""
        rows, stats = [], []
        for name, stat in zip(self.names, self.stats, strict=True):
            rows.append(self.conditioned(name, conditions))
            used = [c for c in conditions if c != name]
            stats.append(stat | {"conditioned_on": used} if used else stat)
        normals = self.vectors if self.normals is None else self.normals
        return replace(
            self, vectors=torch.stack(rows), normals=normals, stats=tuple(stats),
            info=self.info | {"conditions": list(conditions)},
        )  # fmt: skip


def _paths(path: str | Path) -> tuple[Path, Path]:
    """(tensors, sidecar) of a directions file named with or without its .safetensors / .json suffix."""
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.with_suffix(".safetensors"), path.with_suffix(".json")


def save_directions(directions: DirectionSet, path: str | Path) -> Path:
    """Write ``PATH.safetensors`` and ``PATH.json`` (each to a temporary name, then renamed)."""
    tensors_path, sidecar_path = _paths(path)
    tensors = {
        "vectors": directions.vectors.float().contiguous(),
        "intercepts": directions.intercepts.float().contiguous(),
    }
    for name in ("values", "normals"):
        if getattr(directions, name) is not None:
            tensors[name] = getattr(directions, name).float().contiguous()
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "method": directions.method,
        "z_dim": directions.z_dim,
        "directions": [
            {"name": n, "attribute": a, "stats": s}
            for n, a, s in zip(directions.names, directions.attributes, directions.stats, strict=True)
        ],
        **directions.info,
    }
    tensors_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tensors_path.with_name(tensors_path.name + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(tensors_path)
    tmp = sidecar_path.with_name(sidecar_path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(sidecar_path)
    return tensors_path


def directions_fingerprint(path: str | Path) -> str:
    """sha256 (16 hex digits) of the tensors and the sidecar: what a job's identity records."""
    digest = hashlib.sha256()
    for part in _paths(path):
        digest.update(part.read_bytes())
    return digest.hexdigest()[:16]


def load_directions(path: str | Path) -> DirectionSet:
    """Read a directions file; anything missing or malformed is a one-line error naming the file."""
    tensors_path, sidecar_path = _paths(path)
    missing = [part for part in (tensors_path, sidecar_path) if not part.is_file()]
    if missing:
        raise ZsteerError(
            f"{path}: not a directions file; expected NAME.safetensors + NAME.json, as `zsteer directions fit` "
            f"writes ({' and '.join(map(str, missing))} missing)"
        )
    try:
        doc = json.loads(sidecar_path.read_text())
        tensors = load_file(str(tensors_path))
    except (OSError, ValueError) as exc:
        raise ZsteerError(f"{tensors_path}: not a readable directions file ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ZsteerError(f"{sidecar_path}: not a zsteer directions sidecar (format is not {FORMAT!r})")
    if doc.get("version") != VERSION:
        raise ZsteerError(
            f"{sidecar_path}: directions format version {doc.get('version')}, expected {VERSION}"
        )
    try:
        entries = doc["directions"]
        vectors, intercepts = tensors["vectors"], tensors["intercepts"]
        info = {
            k: v for k, v in doc.items() if k not in ("format", "version", "method", "z_dim", "directions")
        }
        result = DirectionSet(
            method=doc["method"], names=tuple(e["name"] for e in entries), vectors=vectors,
            intercepts=intercepts, attributes=tuple(e.get("attribute") for e in entries),
            stats=tuple(e.get("stats", {}) for e in entries), values=tensors.get("values"), info=info,
            normals=tensors.get("normals"),
        )  # fmt: skip
    except (KeyError, TypeError, ValueError) as exc:
        raise ZsteerError(f"{sidecar_path}: malformed directions file ({exc})") from None
    if not torch.isfinite(result.vectors).all():
        raise ZsteerError(f"{tensors_path}: directions hold NaN or Inf")
    if doc.get("z_dim") != result.z_dim:
        raise ZsteerError(
            f"{sidecar_path}: z_dim is {doc.get('z_dim')} but the vectors of {tensors_path.name} have "
            f"{result.z_dim} values"
        )
    return result
