"""The onnxruntime runtime of the shared ascent loop: an Editor whose hot loop runs no PyTorch model.

``pipeline.ascent_loop.AscentLoop`` keeps the books (batches, padding, compaction of stopped rows,
starting logits, the final stop test) exactly as for the torch engine; this module supplies one step,
the ascent step graph (graphs.AscentStepGraph) run by an onnxruntime session, and the forward (the
generator and classifier sessions).

Tensors cross into onnxruntime without copies: on the CPU a tensor's numpy view is fed to
``session.run`` (with ``threads`` > 1, views of chunks of its rows to concurrent 1-thread runs,
``runtime.RowChunks``, whose outputs are joined); with IO binding (the default on CUDA, ``iobinding=True`` on the CPU too) the step's
inputs are bound by their device pointers and its outputs are written into tensors the loop allocated.
Rows are independent, so each row gets the result the torch engine gives it, up to fp32 rounding of the
two implementations.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from zsteer.core.errors import ExportError, ZsteerError
from zsteer.pipeline.ascent_loop import AscentLoop, StepOut, StepRows
from zsteer.pipeline.checkpoints import LoadedModel
from zsteer.pipeline.config import AscentConfig, EngineConfig
from zsteer.pipeline.editor import to_uint8_images
from zsteer.pipeline.imported import is_imported
from zsteer.pipeline.network import EditNet

from .graphs import EditVJP
from .imported_backend import OrtForwardEngine, imported_step_graphs
from .onnx_export import OnnxGraphs, export_graphs, load_graphs
from .runtime import Placement, RowChunks, import_onnxruntime, make_sessions

# onnxruntime's element type names -> numpy and torch dtypes, for binding outputs to tensors.
_ORT_TYPES = {
    "tensor(float)": (np.float32, torch.float32),
    "tensor(int32)": (np.int32, torch.int32),
    "tensor(int64)": (np.int64, torch.int64),
    "tensor(bool)": (np.bool_, torch.bool),
}
_TORCH_TO_NUMPY = {torch_t: np_t for np_t, torch_t in _ORT_TYPES.values()}


class OrtAscentEngine(AscentLoop):
    """An Editor on onnxruntime sessions; the same ``edit_batch`` / ``render`` as ``AscentEngine``.

    ``net`` is exported in memory (a few seconds); ``from_export`` reads a folder written by
    ``export_models`` instead. ``engine.device`` picks the provider ("cpu", "cuda", "cuda:1");
    ``engine.batch_size`` the rows per step. The other EngineConfig fields concern torch and are ignored.
    """

    def __init__(
        self,
        net: EditNet | None,
        ascent: AscentConfig,
        engine: EngineConfig | None = None,
        *,
        graphs: OnnxGraphs | None = None,
        threads: int | None = None,
        iobinding: bool | None = None,
        cpu_fallback: bool = False,
        exporter: str = "dynamo",
    ):
        self.engine = engine or EngineConfig()
        self.ascent = ascent
        self.batch_size = self.engine.batch_size
        import_onnxruntime()  # fail before a long export when onnxruntime is missing
        if graphs is None:
            if net is None:
                raise ExportError("OrtAscentEngine needs an EditNet or exported graphs")
            graphs = export_graphs(EditVJP(net), (ascent.lab_compat,), exporter)
        if ascent.lab_compat not in graphs.steps:
            mode = "lab-compatible" if ascent.lab_compat else "clean"
            raise ExportError(f"the exported graphs have no {mode} step graph (re-export with it)")
        self.graphs = graphs
        self.z_dim, self.n_labels, self.n_attributes = graphs.z_dim, graphs.n_labels, graphs.n_attributes
        models = {
            "generator": graphs.generator,
            "classifier": graphs.classifier,
            "step": graphs.steps[ascent.lab_compat],
        }
        placement = Placement.parse(self.engine.device)
        # On the CPU with several threads, batches run as concurrent 1-thread runs over chunks of rows
        # (runtime.RowChunks); IO binding and CUDA run whole batches, and so does a CUDA request that falls
        # back to the CPU (cpu_fallback), on ``threads`` intra-op threads: the sessions are made before
        # the placement they get is known.
        chunked = placement.device_type == "cpu" and not iobinding and (threads or 0) > 1
        sources = {
            "generator": graphs.files.get("generator"),
            "classifier": graphs.files.get("classifier"),
            "step": graphs.files.get(ascent.lab_compat),
        }
        self.sessions, self.placement = make_sessions(
            models, placement, 1 if chunked else threads, cpu_fallback, sources=sources
        )
        self.device = torch.device(
            "cpu" if self.placement.device_type == "cpu" else f"cuda:{self.placement.device_id}"
        )
        self.iobinding = self.placement.device_type == "cuda" if iobinding is None else iobinding
        self.chunks = RowChunks(threads if chunked else 1)
        step = self.sessions["step"]
        self.step_inputs = [i.name for i in step.get_inputs()]
        self.step_outputs = [o.name for o in step.get_outputs()]
        self._output_types = {o.name: _ORT_TYPES[o.type] for o in step.get_outputs()}
        self._scalar_feeds = self._scalars()

    @classmethod
    def from_export(
        cls, export_dir: str | Path, ascent: AscentConfig, engine: EngineConfig | None = None,
        *, expect_fingerprints: tuple[str, str] | None = None, **kwargs,
    ) -> OrtAscentEngine:  # fmt: skip
        """From a folder written by ``export_models``; ``expect_fingerprints`` = (generator, classifier)
        checks that it was exported from the models a job names."""
        graphs = load_graphs(export_dir)
        if expect_fingerprints is not None:
            found = (
                graphs.manifest["generator"]["fingerprint"],
                graphs.manifest["classifier"]["fingerprint"],
            )
            if tuple(expect_fingerprints) != found:
                raise ExportError(
                    f"{export_dir}: exported from other models (fingerprints {found[0]}/{found[1]}, "
                    f"expected {expect_fingerprints[0]}/{expect_fingerprints[1]})"
                )
        return cls(None, ascent, engine, graphs=graphs, **kwargs)

    # ---- the runtime ----------------------------------------------------------------------------------

    def _scalars(self) -> dict[str, np.ndarray]:
        a = self.ascent
        values = {
            "lr": np.asarray(a.step_size, dtype=np.float32),
            "penalty": np.asarray(a.penalty, dtype=np.float32),
            "max_shift": np.asarray(math.inf if a.max_shift is None else a.max_shift, dtype=np.float32),
            "normalize": np.asarray(a.normalize, dtype=np.bool_),
            "lab_scale": np.asarray(1.0 / a.lab_batch, dtype=np.float32),
        }
        return {k: v for k, v in values.items() if k in self.step_inputs}

    def _check_labels(self, labels: torch.Tensor | None) -> None:
        if self.n_labels and labels is None:
            raise ValueError("this generator is conditional: every row needs a label")

    def step_rows(self, rows: StepRows, t: int) -> StepOut:
        """One run of the step graph for a padded batch."""
        self._check_labels(rows.labels)
        m = rows.z.shape[0]
        tensors = {name: getattr(rows, name) for name in self.step_inputs if hasattr(rows, name)}
        if tensors.get("logits0") is None:  # ignored at t = 0: the graph uses step 0's own logits
            tensors["logits0"] = torch.zeros(m, self.n_attributes, device=self.device)
        t_feed = np.asarray(t, dtype=np.int32)
        if self.iobinding:
            out = self._run_step_bound(tensors, t_feed)
        else:
            feeds = {k: v.cpu().numpy() for k, v in tensors.items()} | self._scalar_feeds | {"t": t_feed}
            outputs = self.chunks.run(lambda f: self.sessions["step"].run(None, f), feeds, m)
            out = {
                k: torch.from_numpy(v).to(self.device)
                for k, v in zip(self.step_outputs, outputs, strict=True)
            }
        return StepOut(
            out["logits"], out["z_next"], out["status_next"], out["steps_next"], out.get("accum_next")
        )

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None, images: bool):
        """(images [m, H, W, C] uint8 or None, logits [m, A]) of a padded batch, by the two sessions."""
        self._check_labels(labels)
        inputs = {"z": z} | ({"labels": labels} if self.n_labels else {})
        if self.iobinding:  # z read in place, the images stay on the device between the two sessions
            generator = self.sessions["generator"].io_binding()
            kept = {k: v.contiguous() for k, v in inputs.items()}  # alive until the run returns
            for key, value in kept.items():
                self._bind_tensor(generator, key, value, output=False)
            generator.bind_output("images", self.placement.device_type, self.placement.device_id)
            self.sessions["generator"].run_with_iobinding(generator)
            (generated,) = generator.get_outputs()
            (logits,) = self._run_bound("classifier", {"images": generated}, ["logits"])
            generated, logits = generated.numpy(), logits.numpy()
        else:
            feeds = {k: v.cpu().numpy() for k, v in inputs.items()}
            generated, logits = self.chunks.run(self._forward_run, feeds, z.shape[0])
        pixels = to_uint8_images(torch.from_numpy(generated)) if images else None
        return pixels, torch.from_numpy(logits).to(self.device)

    def _forward_run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """[images [m, C, H, W], logits [m, A]] of some rows, by the generator and classifier sessions."""
        generated = self.sessions["generator"].run(None, feeds)[0]
        return [generated, self.sessions["classifier"].run(None, {"images": generated})[0]]

    # ---- IO binding -----------------------------------------------------------------------------------

    def _ortvalue(self, array: np.ndarray):
        ort = import_onnxruntime()
        return ort.OrtValue.ortvalue_from_numpy(
            np.ascontiguousarray(array), self.placement.device_type, self.placement.device_id
        )

    def _run_bound(self, name: str, inputs: dict, outputs: list[str]) -> list:
        """Run a session on OrtValues; the outputs are new OrtValues on the device."""
        session = self.sessions[name]
        binding = session.io_binding()
        for key, value in inputs.items():
            binding.bind_ortvalue_input(key, value)
        for key in outputs:
            binding.bind_output(key, self.placement.device_type, self.placement.device_id)
        session.run_with_iobinding(binding)
        return binding.get_outputs()

    def _output_shape(self, name: str, m: int) -> tuple[int, ...]:
        width = {
            "logits": self.n_attributes,
            "z_next": self.z_dim,
            "grad": self.z_dim,
            "accum_next": self.z_dim,
        }
        return (m, width[name]) if name in width else (m,)

    def _bind_tensor(self, binding, name: str, tensor: torch.Tensor, output: bool) -> None:
        tensor_np_type = _TORCH_TO_NUMPY[tensor.dtype]
        bind = binding.bind_output if output else binding.bind_input
        bind(
            name, self.placement.device_type, self.placement.device_id, tensor_np_type,
            tuple(tensor.shape), tensor.data_ptr(),
        )  # fmt: skip

    def _run_step_bound(
        self, tensors: dict[str, torch.Tensor], t_feed: np.ndarray
    ) -> dict[str, torch.Tensor]:
        """The step graph on device tensors, bound by pointer: inputs read in place, outputs written into
        tensors allocated here (so the loop's state never leaves the device)."""
        session = self.sessions["step"]
        binding = session.io_binding()
        inputs = {k: v.contiguous() for k, v in tensors.items()}  # kept alive until the run returns
        for key, value in inputs.items():
            self._bind_tensor(binding, key, value, output=False)
        scalars = {k: self._ortvalue(v) for k, v in (self._scalar_feeds | {"t": t_feed}).items()}
        for key, value in scalars.items():
            binding.bind_ortvalue_input(key, value)
        m = next(iter(inputs.values())).shape[0]
        outputs = {
            name: torch.empty(
                self._output_shape(name, m), dtype=self._output_types[name][1], device=self.device
            )
            for name in self.step_outputs
        }
        for key, value in outputs.items():
            self._bind_tensor(binding, key, value, output=True)
        session.run_with_iobinding(binding)
        return outputs


def onnxruntime_backend(
    generator: LoadedModel, classifier: LoadedModel, ascent: AscentConfig, engine: EngineConfig, backend
) -> AscentLoop:
    """The "onnxruntime" entry of the job's backend registry (jobs/backends.py).

    Imported models (.pt2) render with any graph and take ascent steps only where the hand-written
    gradient covers their layers (export/imported_backend.py).

    ``backend``: its ``onnx_dir`` (graphs written by `zsteer export`, checked against the models'
    fingerprints; None = export in memory), ``threads`` and ``cpu_fallback``.
    """
    if engine is not None and engine.precision != "fp32":  # bf16 is the torch engine's (EngineConfig)
        raise ZsteerError(f"--precision {engine.precision}: the onnxruntime backend runs fp32 only")
    options = {"threads": backend.threads, "cpu_fallback": backend.cpu_fallback}
    if is_imported(generator) or is_imported(classifier):  # export/imported_backend.py
        if ascent.steps == 0:  # a renderer (direction, interpolation): any graph runs forward
            return OrtForwardEngine(generator, classifier, engine or EngineConfig(), backend)
        graphs = imported_step_graphs(generator, classifier, ascent, backend)  # or one line naming a node
        return OrtAscentEngine(None, ascent, engine, graphs=graphs, **options)
    if backend.onnx_dir is not None:
        fingerprints = (generator.fingerprint, classifier.fingerprint)
        return OrtAscentEngine.from_export(
            backend.onnx_dir, ascent, engine, expect_fingerprints=fingerprints, **options
        )
    return OrtAscentEngine(EditNet(generator, classifier), ascent, engine, **options)
