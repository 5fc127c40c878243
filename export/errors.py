"""The export package's one error type: a ZsteerError, so the CLI prints it as one line (exit 2)."""

from __future__ import annotations

from zsteer.pipeline.errors import ZsteerError


class ExportError(ZsteerError):
    """An export that cannot be done or does not match PyTorch, or an onnxruntime setup that cannot run."""
