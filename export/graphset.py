"""The serialised graphs of one export, as ``onnx_export`` makes or reads them and ``parity`` checks them.

A leaf of the export package (no onnx import): ``onnx_export`` imports ``parity``, and both need this.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class OnnxGraphs:
    """Serialised ONNX models for one generator + classifier pair, and what the backend needs to run them."""

    generator: bytes
    classifier: bytes
    # lab_compat (False / True) -> serialised step graph; only the variants that were asked for.
    steps: dict[bool, bytes]
    z_dim: int
    n_labels: int
    n_attributes: int
    image_shape: tuple[int, int, int]  # (C, H, W) the generator draws
    attributes: tuple[str, ...] = ()
    manifest: dict = field(default_factory=dict)  # the manifest these came from, when read from a folder
    # The file each graph was read from, for errors that name it: "generator", "classifier", and the step
    # graphs' lab_compat (False / True); empty for graphs exported in memory.
    files: dict = field(default_factory=dict)
