"""Which engine edits a job's batches: PyTorch (default) or onnxruntime, behind one factory signature.

Both give the same rows within tolerance, so the backend is a runtime choice, not part of a job's
identity: a job started on one may be resumed on the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from zsteer.pipeline.checkpoints import LoadedModel
from zsteer.pipeline.engine import AscentConfig, EngineConfig, make_engine

BACKENDS = ("torch", "onnxruntime")


@dataclass(frozen=True)
class BackendConfig:
    """The runtime that executes the ascent step."""

    # "torch" (eager or compiled, Triton kernels on CUDA) or "onnxruntime" (no PyTorch in the hot loop).
    name: str = "torch"
    # A folder written by `zsteer export` to run from; None = export the graphs in memory at start-up.
    onnx_dir: Path | None = None
    # onnxruntime intra-op threads; None = onnxruntime's choice.
    threads: int | None = None
    # On a machine where the CUDA provider is listed but unusable, run on the CPU instead of failing.
    cpu_fallback: bool = False

    def __post_init__(self):
        if self.name not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.name!r}")


def engine_factory(backend: BackendConfig):
    """A ``run_job`` engine factory: (generator, classifier, ascent, engine config) -> engine."""
    if backend.name == "torch":
        return make_engine

    def make_ort_engine(
        generator: LoadedModel, classifier: LoadedModel, ascent: AscentConfig, engine: EngineConfig
    ):
        from zsteer.export.backend import OrtAscentEngine
        from zsteer.pipeline.network import EditNet

        options = {"threads": backend.threads, "cpu_fallback": backend.cpu_fallback}
        if backend.onnx_dir is not None:
            fingerprints = (generator.fingerprint, classifier.fingerprint)
            return OrtAscentEngine.from_export(
                backend.onnx_dir, ascent, engine, expect_fingerprints=fingerprints, **options
            )
        return OrtAscentEngine(EditNet(generator, classifier), ascent, engine, **options)

    return make_ort_engine
