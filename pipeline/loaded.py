"""What a loaded model is, whatever its format: the module and what describes it (a leaf of pipeline/).

``checkpoints`` (course weights, safetensors) and ``imported`` (torch.export programs) both return a
``LoadedModel``; everything after loading sees only this.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from torch import nn


@dataclass(frozen=True)
class LoadedModel:
    """A frozen, eval-mode model with what describes it."""

    # The module, frozen (requires_grad off) and in eval mode so rows are independent.
    module: nn.Module
    # The spec it was built from (models.GeneratorSpec / ClassifierSpec, or imported.Imported*Spec);
    # recorded in job.json so a resume can be checked.
    spec: object
    # sha256 of the weight file (first 16 hex digits): a different file is a different job.
    fingerprint: str
    # Where it came from, for messages.
    path: str
    # Attribute names of a classifier (empty for a generator).
    attributes: tuple[str, ...] = ()


def file_fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]
