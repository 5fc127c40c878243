"""An onnxruntime backend for editing jobs, with the interface of ``pipeline.engine.AscentEngine``.

The hot loop runs no PyTorch: numpy for the per-row bookkeeping and onnxruntime sessions for the step
graph (graphs.AscentStepGraph), the generator and the classifier. Two loops:

- host loop (CPU provider, default there): state in numpy; rows that stopped are dropped from the next
  step (compacted), as the torch engine does, so they cost nothing more;
- device loop (CUDA provider, default there; ``iobinding=True`` on the CPU too): the state stays in
  OrtValues on the device through IO binding, every step runs the whole batch (the graph keeps stopped
  rows frozen and counts the step budgets itself) and only the status vector comes back to the host
  each step, to stop early once no row is active.

Rows are independent in both, so both give each row the result the torch engine gives it, up to fp32
rounding of the two implementations.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from zsteer.kernels.ascent_update import ACTIVE, STEPS_DONE, final_status
from zsteer.pipeline.engine import AscentConfig, EditResult, EngineConfig, row_settings
from zsteer.pipeline.network import EditNet

from zsteer.core.errors import ExportError
from .graphs import EditVJP
from .onnx_export import OnnxGraphs, export_graphs, load_graphs
from .runtime import Placement, import_onnxruntime, make_sessions


def to_uint8_images_np(images: np.ndarray) -> np.ndarray:  # [N, C, H, W] in [-1, 1] -> [N, H, W, C] uint8
    """numpy twin of ``pipeline.engine.to_uint8_images`` (round half to even, like torch)."""
    scaled = np.clip(np.round((images.astype(np.float32) + 1) * np.float32(127.5)), 0, 255)
    return np.ascontiguousarray(scaled.astype(np.uint8).transpose(0, 2, 3, 1))


class OrtAscentEngine:
    """Edits batches of latents with onnxruntime sessions; same ``edit`` / ``render`` as ``AscentEngine``.

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
        self.sessions, self.placement = make_sessions(
            models, Placement.parse(self.engine.device), threads, cpu_fallback
        )
        self.iobinding = self.placement.device_type == "cuda" if iobinding is None else iobinding
        step = self.sessions["step"]
        self.step_inputs = [i.name for i in step.get_inputs()]
        self.step_outputs = [o.name for o in step.get_outputs()]

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

    # ---- scalars and per-row inputs -------------------------------------------------------------------

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

    def _labels(self, labels, n: int) -> np.ndarray | None:
        if not self.n_labels:
            return None
        if labels is None:
            raise ValueError("this generator is conditional: every row needs a label")
        return _np(labels, np.int64).reshape(n)

    # ---- rendering ------------------------------------------------------------------------------------

    def _render_np(self, z: np.ndarray, labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """images [N, C, H, W] float32 and logits [N, A] for z [N, z_dim], one batch."""
        feeds = {"z": z} | ({"labels": labels} if labels is not None else {})
        if not self.iobinding:
            images = self.sessions["generator"].run(None, feeds)[0]
            return images, self.sessions["classifier"].run(None, {"images": images})[0]
        values = {k: self._ortvalue(v) for k, v in feeds.items()}
        (images,) = self._run_bound("generator", values, ["images"])
        (logits,) = self._run_bound("classifier", {"images": images}, ["logits"])
        return images.numpy(), logits.numpy()

    def render(
        self, z: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [N, H, W, C] uint8 and logits [N, A] for latents z [N, z_dim], batch by batch."""
        z_np = _np(z, np.float32)
        n, bs = z_np.shape[0], self.engine.batch_size
        lab = self._labels(labels, n)
        images, logits = [], []
        for s in range(0, n, bs):
            img, lg = self._render_np(z_np[s : s + bs], None if lab is None else lab[s : s + bs])
            images.append(to_uint8_images_np(img))
            logits.append(lg)
        return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(logits))

    # ---- editing --------------------------------------------------------------------------------------

    def edit(
        self,
        z: torch.Tensor,  # [N, z_dim] starting latents
        weights: torch.Tensor,  # [N, A] signed target weights
        preserve: torch.Tensor,  # [N, A] 1.0 where an attribute is to stay put
        labels: torch.Tensor | None = None,  # [N] class of each row (conditional generators)
        max_steps: torch.Tensor | None = None,  # [N] per-row step budget (default: config.steps)
        stop_prob: torch.Tensor | None = None,  # [N] per-row stop probability, NaN = never
        render: bool = True,
    ) -> EditResult:
        """Edit any number of rows, ``batch_size`` at a time; each row's result depends only on that row."""
        z_np = _np(z, np.float32)
        n, bs = z_np.shape[0], self.engine.batch_size
        as_tensor = [
            None if x is None else torch.as_tensor(np.asarray(_np(x, np.float64)))
            for x in (max_steps, stop_prob)
        ]
        max_steps_t, stop_t = row_settings(n, self.ascent, *as_tensor)
        max_steps_np, stop_np = max_steps_t.numpy(), stop_t.numpy()
        weights_np, preserve_np = _np(weights, np.float32), _np(preserve, np.float32)
        labels_np = self._labels(labels, n)
        run = self._edit_bound if self.iobinding else self._edit_host
        parts = [
            run({
                "z": z_np[s : s + bs], "weights": weights_np[s : s + bs], "preserve": preserve_np[s : s + bs],
                "labels": None if labels_np is None else labels_np[s : s + bs],
                "max_steps": max_steps_np[s : s + bs], "stop_prob": stop_np[s : s + bs],
            }, render)
            for s in range(0, n, bs)
        ]  # fmt: skip
        keys = parts[0].keys()
        out = {k: None if parts[0][k] is None else np.concatenate([p[k] for p in parts]) for k in keys}
        # Leaving the hot loop: torch tensors for EditResult, the shift computed as the torch engine does.
        z_edited = torch.from_numpy(out["z_edited"])
        return EditResult(
            z_edited=z_edited,
            logits_before=torch.from_numpy(out["logits_before"]),
            logits_after=torch.from_numpy(out["logits_after"]),
            latent_shift=torch.linalg.vector_norm(z_edited - torch.from_numpy(z_np), dim=1),
            steps_taken=torch.from_numpy(out["steps_taken"]),
            status=torch.from_numpy(out["status"]),
            images=None if out["images"] is None else torch.from_numpy(out["images"]),
        )

    def _first_state(self, batch: dict) -> dict[str, np.ndarray]:
        n = batch["z"].shape[0]
        z0 = np.ascontiguousarray(batch["z"], dtype=np.float32)  # [n, z_dim]
        state = {
            "z": z0.copy(), "z0": z0, "labels": batch["labels"],
            "logits0": np.zeros((n, self.n_attributes), np.float32),  # ignored at t = 0: step 0's own logits
            "weights": np.ascontiguousarray(batch["weights"]), "preserve": np.ascontiguousarray(batch["preserve"]),
            "stop_prob": np.ascontiguousarray(batch["stop_prob"]), "status": np.full(n, ACTIVE, np.int32),
            "max_steps": np.ascontiguousarray(batch["max_steps"]), "steps_taken": np.zeros(n, np.int32),
        }  # fmt: skip
        if "accum" in self.step_inputs:
            state["accum"] = np.zeros_like(z0)
        return state

    def _finish(self, z, labels, logits0, status, steps, render, batch) -> dict:
        images, logits_after = self._render_np(z, labels) if z.shape[0] else (None, None)
        if logits_after is None:
            status = np.where(status == ACTIVE, STEPS_DONE, status).astype(np.int32)
        else:  # the stop test after the last step, as AscentEngine._edit_batch
            status = final_status(
                torch.from_numpy(np.asarray(status, np.int32)),
                torch.from_numpy(logits_after).float(),
                torch.from_numpy(np.asarray(batch["weights"], np.float32)),
                torch.from_numpy(np.asarray(batch["stop_prob"], np.float32)),
            ).numpy()
        if logits0 is None:  # no steps at all: before == after
            logits0 = logits_after
        return {
            "z_edited": z, "logits_before": logits0, "logits_after": logits_after, "steps_taken": steps,
            "status": status, "images": to_uint8_images_np(images) if render else None,
        }  # fmt: skip

    def _edit_host(self, batch: dict, render: bool) -> dict:
        """Host loop: numpy state, stopped rows compacted away (as AscentEngine._edit_batch)."""
        state = self._first_state(batch)
        n = state["z"].shape[0]
        scalars = self._scalars()
        session = self.sessions["step"]
        logits0 = None
        budget = int(state["max_steps"].max()) if n else 0
        for t in range(budget):
            status = state["status"]
            status[(status == ACTIVE) & (state["max_steps"] <= t)] = STEPS_DONE
            # Step 0 runs every row: its forward gives each row's starting logits.
            rows = None if t == 0 else np.flatnonzero(status == ACTIVE)
            if rows is not None and rows.size == 0:
                break
            if rows is not None and rows.size == n:
                rows = None  # all active: no gather needed
            feeds = {k: (v if rows is None else v[rows]) for k, v in state.items() if k in self.step_inputs}
            feeds.update(scalars, t=np.asarray(t, dtype=np.int32))
            out = dict(zip(self.step_outputs, session.run(None, feeds), strict=True))
            if t == 0:
                logits0 = out["logits"]
                state["logits0"] = logits0
            for key, name in (("z", "z_next"), ("status", "status_next"), ("steps_taken", "steps_next"),
                              ("accum", "accum_next")):  # fmt: skip
                if name in out:
                    if rows is None:
                        state[key] = out[name]
                    else:
                        state[key][rows] = out[name]
        return self._finish(
            state["z"], state["labels"], logits0, state["status"], state["steps_taken"], render, batch
        )

    # ---- device loop (IO binding) ---------------------------------------------------------------------

    def _ortvalue(self, array: np.ndarray):
        ort = import_onnxruntime()
        return ort.OrtValue.ortvalue_from_numpy(
            np.ascontiguousarray(array), self.placement.device_type, self.placement.device_id
        )

    def _run_bound(self, name: str, inputs: dict, outputs: list[str]) -> list:
        """Run a session on OrtValues; the outputs are new OrtValues on the device."""
        session = self.sessions[name]
        # A fresh binding per run: outputs bound to a device (not to buffers) are allocated anew, so the
        # previous step's outputs, now this step's inputs, are never overwritten while being read.
        binding = session.io_binding()
        for key, value in inputs.items():
            binding.bind_ortvalue_input(key, value)
        for key in outputs:
            binding.bind_output(key, self.placement.device_type, self.placement.device_id)
        session.run_with_iobinding(binding)
        return binding.get_outputs()

    def _edit_bound(self, batch: dict, render: bool) -> dict:
        """Device loop: state in device OrtValues; every row runs every step, the graph keeps the books."""
        host = self._first_state(batch)
        n = host["z"].shape[0]
        state = {k: self._ortvalue(v) for k, v in host.items() if k in self.step_inputs}
        state.update({k: self._ortvalue(v) for k, v in self._scalars().items()})
        max_steps, status = host["max_steps"], host["status"]
        budget = int(max_steps.max()) if n else 0
        logits0 = None
        for t in range(budget):
            if t > 0 and not np.any((status == ACTIVE) & (max_steps > t)):
                break
            state["t"] = self._ortvalue(np.asarray(t, dtype=np.int32))
            out = dict(zip(self.step_outputs, self._run_bound("step", state, self.step_outputs), strict=True))
            state["z"], state["status"], state["steps_taken"] = (
                out["z_next"],
                out["status_next"],
                out["steps_next"],
            )
            if "accum_next" in out:
                state["accum"] = out["accum_next"]
            if t == 0:
                logits0 = out["logits"]
                state["logits0"] = logits0
            status = out["status_next"].numpy()  # [n] int32: the one copy back per step
        z = state["z"].numpy()
        steps = state["steps_taken"].numpy()
        return self._finish(
            z, host["labels"], None if logits0 is None else logits0.numpy(), status, steps, render, batch
        )


def _np(x, dtype) -> np.ndarray:
    """A torch tensor or array-like as a contiguous numpy array of ``dtype`` (CPU)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x), dtype=dtype)
