"""zsteer's own small demo models, trained on a procedural face data set (no download needed).

``WEIGHTS_DIR`` holds ``generator``, ``classifier`` and ``judge`` (``.safetensors`` + ``.json``), trained by
``python -m zsteer.demo.train`` and checked by ``python -m zsteer.demo.evaluate``; see its MODEL_CARD.md.
``zsteer.demo.command`` is what `zsteer demo` runs: the edit job on these models, scored by the judge.
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
ROLES = ("generator", "classifier", "judge")


def demo_paths(weights_dir: str | Path | None = None) -> dict[str, Path]:
    """Paths of the demo weight files: ``{"generator": ..., "classifier": ..., "judge": ...}``."""
    root = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    return {role: root / f"{role}.safetensors" for role in ROLES}


__all__ = ["ROLES", "WEIGHTS_DIR", "demo_paths"]
