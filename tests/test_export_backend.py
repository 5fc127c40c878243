"""The onnxruntime backend (export/backend.py) against the torch AscentEngine.

Two kinds of comparison:
- the loop alone, exactly: the backend driving the step graph's torch module (a stand-in session) against
  the engine driving the same hand-written gradient: same arithmetic, so every row must agree to rounding
  and every status, step count and stop must be identical;
- onnxruntime end to end against the autograd engine. Their forwards differ by ~1e-6, and a ReLU
  network's gradient is discontinuous at its kinks: a row whose path passes within ~1e-6 of a kink (or
  has a tiny ||delta|| right after step 0) amplifies that difference over the steps, and lab-compatible
  mode carries it on in its gradient sum (tests/test_export_vjp.py shows the same between two torch
  paths). So, free-running, the typical row must agree within 1e-5 and 90% of rows within 1e-3.
- Step by step, from the same inputs: the typical row within 1e-5, and 95% of rows within 1e-4 or within
  twice the row's conditioning, whichever is larger. The penalty's gradient is lambda * J^T delta / ||delta||,
  so a logit difference e between the two forwards turns its direction by about e / ||delta||: a row whose
  preserved logits have barely moved (small steps, as lab mode's 1 / batch scaling makes them) carries that
  ratio into its gradient, whatever the backend. What remains are the rows at a kink.
"""

from __future__ import annotations

import math
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from exportkit import gain_models

from zsteer.core.errors import ExportError
from zsteer.core.status import MAX_SHIFT, STEPS_DONE, TARGET_REACHED
from zsteer.export.backend import OrtAscentEngine
from zsteer.export.graphs import AscentStepGraph, build_edit_vjp
from zsteer.export.onnx_export import export_graphs, export_models
from zsteer.export.runtime import CHUNK_ROWS, Placement, RowChunks, import_onnxruntime, make_session
from zsteer.pipeline.engine import AscentConfig, AscentEngine, EngineConfig, default_preserve

pytest.importorskip("onnxruntime")

N_ROWS, BATCH = 24, 16  # two batches per edit, the second one partial

CONFIGS = {
    "clean": AscentConfig(steps=6, penalty=0.3),
    "lab": AscentConfig(steps=6, penalty=0.3, lab_compat=True, lr=0.5),
    "capped": AscentConfig(steps=6, penalty=0.3, normalize=True, lr=0.1, max_shift=0.3),
}


@pytest.fixture(scope="module")
def setup():
    generator, classifier = gain_models(z_dim=8, hidden_dim=8, n_attributes=5)
    net, vjp = build_edit_vjp(generator, classifier)
    graphs = export_graphs(vjp, (False, True), exporter="torchscript")
    return SimpleNamespace(generator=generator, classifier=classifier, net=net, vjp=vjp, graphs=graphs)


def _job(setup, n: int = N_ROWS, seed: int = 0):
    """Rows with per-row budgets (0 to 8 steps) and stop probabilities: never, soon, already reached."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, setup.vjp.z_dim, generator=g)
    weights = torch.zeros(n, setup.vjp.n_logits)
    weights[:, 0] = 1.0
    weights[1::4, 1] = -0.5
    max_steps = torch.randint(0, 9, (n,), generator=g, dtype=torch.int32)
    max_steps[:2] = torch.tensor([0, 8], dtype=torch.int32)
    with torch.no_grad():
        prob0 = torch.sigmoid(setup.net(z)[:, 0])
    stop = torch.full((n,), math.nan)
    stop[1::3] = (prob0[1::3] + 0.01).clamp(max=0.999)  # reachable within a few steps
    stop[2::3] = (prob0[2::3] - 0.01).clamp(min=0.001)  # reached at step 0 unless a w < 0 target blocks it
    return z, weights, default_preserve(weights), max_steps, stop


def _engine(setup, config: AscentConfig) -> AscentEngine:
    return AscentEngine(setup.net, config, EngineConfig(batch_size=BATCH, compile="off", impl="torch"))


class TorchSession:
    """Stands in for an onnxruntime step session: runs the step graph's torch module on numpy inputs."""

    def __init__(self, module: AscentStepGraph):
        self.module = module

    def run(self, output_names, feeds):
        with torch.no_grad():
            outputs = self.module(*(torch.from_numpy(np.asarray(feeds[k])) for k in self.module.input_names))
        return [o.numpy() for o in outputs]


def _row_rel(a: torch.Tensor, b: torch.Tensor, z0: torch.Tensor) -> torch.Tensor:
    """Per row: |difference of the two edits| relative to the row's own displacement (floored)."""
    da, db = a - z0, b - z0
    scale = da.abs().amax(dim=1).clamp_min(1e-3 * float(da.abs().max()))
    return (da - db).abs().amax(dim=1) / scale


@pytest.mark.parametrize("mode", sorted(CONFIGS))
def test_loop_matches_engine_exactly(setup, mode):
    config = CONFIGS[mode]
    z, weights, preserve, max_steps, stop = _job(setup)
    engine = _engine(setup, config)
    engine._step = setup.vjp.grad_step  # the engine on the hand-written gradient, as the graph computes it
    ref = engine.edit(z, weights, preserve, max_steps=max_steps, stop_prob=stop)
    backend = OrtAscentEngine(None, config, EngineConfig(batch_size=BATCH), graphs=setup.graphs)
    backend.sessions["step"] = TorchSession(AscentStepGraph(setup.vjp, config.lab_compat).eval())
    got = backend.edit(z, weights, preserve, max_steps=max_steps, stop_prob=stop)
    assert torch.equal(got.status, ref.status) and torch.equal(got.steps_taken, ref.steps_taken)
    assert float(_row_rel(got.z_edited, ref.z_edited, z).max()) < 1e-5
    torch.testing.assert_close(got.logits_before, ref.logits_before, rtol=0, atol=1e-5)
    codes = set(ref.status.tolist())
    assert {STEPS_DONE, TARGET_REACHED} <= codes and (MAX_SHIFT in codes) == (mode == "capped")
    assert int(ref.steps_taken[0]) == 0 and int(ref.steps_taken.max()) >= 3


class Recorder:
    """Wraps the backend's step session and keeps every call's inputs and outputs."""

    def __init__(self, session):
        self.session, self.calls = session, []

    def run(self, output_names, feeds):
        outputs = self.session.run(output_names, feeds)
        # Copies: the backend reuses its arrays (in-place status updates) after the call.
        self.calls.append(({k: np.array(v) for k, v in feeds.items()}, [np.array(o) for o in outputs]))
        return outputs


def _assert_matches_engine(got, ref, z0):
    """Free-running end to end: the typical row to rounding, nearly all rows within 1e-3 (module doc)."""
    per_row = _row_rel(got.z_edited, ref.z_edited, z0)
    assert float(per_row.median()) < 1e-5
    assert float((per_row < 1e-3).float().mean()) >= 0.9
    assert float((got.status == ref.status).float().mean()) >= 0.9
    assert float((got.steps_taken == ref.steps_taken).float().mean()) >= 0.9
    torch.testing.assert_close(got.logits_before, ref.logits_before, rtol=0, atol=1e-5)
    same = per_row < 1e-4
    torch.testing.assert_close(got.logits_after[same], ref.logits_after[same], rtol=0, atol=1e-4)
    torch.testing.assert_close(got.latent_shift[same], ref.latent_shift[same], rtol=1e-4, atol=1e-6)
    assert int((got.images[same].int() - ref.images[same].int()).abs().max()) <= 1
    assert got.images.dtype == torch.uint8 and got.images.shape == ref.images.shape


def _assert_steps_match_torch(calls, module: AscentStepGraph, output_names):
    """Teacher-forced: each recorded onnxruntime step against the torch module on the same inputs."""
    per_row, allowed = [], []
    for feeds, outputs in calls:
        out = dict(zip(output_names, outputs, strict=True))
        with torch.no_grad():
            ref = module(*(torch.from_numpy(np.asarray(feeds[k])) for k in module.input_names))
        ref = dict(zip(module.output_names, (r.numpy() for r in ref), strict=True))
        # The loop pads a batch by repeating its last row: count each row once.
        _, real = np.unique(feeds["z"], axis=0, return_index=True)
        feeds = {k: v[real] if np.ndim(v) else v for k, v in feeds.items()}
        out, ref = ({k: v[real] for k, v in d.items()} for d in (out, ref))
        scale = np.maximum(np.abs(ref["grad"]).max(axis=1), 1e-12)
        error = np.abs(out["grad"] - ref["grad"]).max(axis=1) / scale
        np.testing.assert_allclose(out["logits"], ref["logits"], rtol=0, atol=1e-5)
        # A row may take the other side of a stop threshold only with its gradient off (a kink).
        assert np.mean(out["status_next"] == ref["status_next"]) >= 0.9
        # Conditioning of the penalty's direction (module doc); step 0 starts from its own logits.
        start = ref["logits"] if int(feeds["t"]) == 0 else feeds["logits0"]
        delta = np.linalg.norm((ref["logits"] - start) * feeds["preserve"], axis=1)
        logit_error = np.abs(out["logits"] - ref["logits"]).max(axis=1)
        conditioning = np.where(delta > 0, logit_error / np.maximum(delta, 1e-30), 0.0)
        per_row.append(error)
        allowed.append(np.maximum(1e-4, 2 * conditioning))
    per_row, allowed = np.concatenate(per_row), np.concatenate(allowed)
    assert np.median(per_row) < 1e-5 and np.mean(per_row <= allowed) >= 0.95


@pytest.mark.parametrize("mode", sorted(CONFIGS))
def test_onnxruntime_matches_engine(setup, mode):
    config = CONFIGS[mode]
    z, weights, preserve, max_steps, stop = _job(setup, seed=1)
    ref = _engine(setup, config).edit(z, weights, preserve, max_steps=max_steps, stop_prob=stop)
    host = OrtAscentEngine(None, config, EngineConfig(batch_size=BATCH), graphs=setup.graphs)
    host.sessions["step"] = recorder = Recorder(host.sessions["step"])
    got = host.edit(z, weights, preserve, max_steps=max_steps, stop_prob=stop)
    _assert_matches_engine(got, ref, z)
    module = AscentStepGraph(setup.vjp, config.lab_compat).eval()
    _assert_steps_match_torch(recorder.calls, module, host.step_outputs)
    # The device loop (IO binding, no compaction) on the CPU: the same rows, the same numbers.
    bound = OrtAscentEngine(None, config, EngineConfig(batch_size=BATCH), graphs=setup.graphs, iobinding=True)
    assert bound.iobinding and not host.iobinding
    again = bound.edit(z, weights, preserve, max_steps=max_steps, stop_prob=stop)
    assert torch.equal(again.status, got.status) and torch.equal(again.steps_taken, got.steps_taken)
    torch.testing.assert_close(again.z_edited, got.z_edited, rtol=0, atol=1e-6)
    torch.testing.assert_close(again.logits_after, got.logits_after, rtol=0, atol=1e-6)


def test_row_chunks_bounds():
    """At least ``workers`` chunks of near-equal size, at most ``chunk_rows`` each, none under
    MIN_CHUNK_ROWS (a small batch runs whole)."""
    assert RowChunks(2, chunk_rows=32).bounds(128) == [(0, 32), (32, 64), (64, 96), (96, 128)]
    assert RowChunks(2).bounds(128) == [(a, a + CHUNK_ROWS) for a in range(0, 128, CHUNK_ROWS)]
    assert RowChunks(2, chunk_rows=8).bounds(20) == [(0, 6), (6, 13), (13, 20)]
    assert RowChunks(2).bounds(9) == [(0, 4), (4, 9)]
    assert RowChunks(2).bounds(7) == RowChunks(1).bounds(7) == [(0, 7)]
    assert RowChunks(3).bounds(2) == [(0, 2)]


def test_chunked_cpu_runs_give_the_same_bits(setup):
    """With 2 threads on the CPU the sessions run on 1 thread each, concurrently over chunks of rows: every
    row's edit, logits and image are bit for bit those of one whole-batch run."""
    config = CONFIGS["capped"]
    z, weights, preserve, max_steps, stop = _job(setup, seed=2)
    whole = OrtAscentEngine(None, config, EngineConfig(batch_size=BATCH), graphs=setup.graphs, threads=1)
    chunked = OrtAscentEngine(None, config, EngineConfig(batch_size=BATCH), graphs=setup.graphs, threads=2)
    assert whole.chunks.workers == 1 and chunked.chunks.workers == 2
    chunked.chunks = RowChunks(2, chunk_rows=4)  # 4 chunks of a 16-row batch, 2 at a time
    want = whole.edit(z, weights, preserve, max_steps=max_steps, stop_prob=stop)
    got = chunked.edit(z, weights, preserve, max_steps=max_steps, stop_prob=stop)
    for name in ("z_edited", "status", "steps_taken", "logits_before", "logits_after", "images"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name


def test_defaults_and_no_render(setup):
    config = AscentConfig(steps=3, stop_at_prob=0.9)
    z, weights, preserve, _, _ = _job(setup, n=5)
    ref = _engine(setup, config).edit(z, weights, preserve, render=False)
    got = OrtAscentEngine(None, config, graphs=setup.graphs).edit(z, weights, preserve, render=False)
    assert got.images is None and ref.images is None
    assert torch.equal(got.steps_taken, ref.steps_taken) and torch.equal(got.status, ref.status)
    torch.testing.assert_close(got.z_edited, ref.z_edited, rtol=1e-4, atol=1e-6)


def test_render_matches_engine(setup):
    z = torch.randn(40, setup.vjp.z_dim)
    images, logits = OrtAscentEngine(
        None, AscentConfig(), EngineConfig(batch_size=16), graphs=setup.graphs
    ).render(z)
    ref_images, ref_logits = _engine(setup, AscentConfig()).render(z)
    assert images.shape == ref_images.shape == (40, 64, 64, 3) and images.dtype == torch.uint8
    assert int((images.int() - ref_images.int()).abs().max()) <= 1
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-5)


def test_exports_from_the_net_in_memory(setup):
    backend = OrtAscentEngine(setup.net, CONFIGS["clean"], exporter="torchscript")
    assert set(backend.graphs.steps) == {False}  # only the step variant the config needs
    z, weights, preserve, max_steps, stop = _job(setup, n=6)
    got = backend.edit(z, weights, preserve, max_steps=max_steps, stop_prob=stop, render=False)
    ref = _engine(setup, CONFIGS["clean"]).edit(z, weights, preserve, max_steps=max_steps, stop_prob=stop)
    torch.testing.assert_close(got.z_edited, ref.z_edited, rtol=1e-4, atol=1e-6)


def test_from_export_folder_checks_fingerprints(setup, tmp_path):
    export_models(
        setup.generator, setup.classifier, tmp_path, steps=(True,), batch_sizes=(1, 7), exporter="torchscript"
    )
    prints = (setup.generator.fingerprint, setup.classifier.fingerprint)
    backend = OrtAscentEngine.from_export(tmp_path, CONFIGS["lab"], expect_fingerprints=prints)
    z, weights, preserve, _, _ = _job(setup, n=4)
    assert backend.edit(z, weights, preserve).z_edited.shape == (4, setup.vjp.z_dim)
    with pytest.raises(ExportError, match="exported from other models"):
        OrtAscentEngine.from_export(tmp_path, CONFIGS["lab"], expect_fingerprints=("0" * 16, prints[1]))
    with pytest.raises(ExportError, match="no manifest.json"):
        OrtAscentEngine.from_export(tmp_path / "missing", CONFIGS["lab"])


def test_conditional_generator_needs_labels():
    generator, classifier = gain_models(z_dim=6, hidden_dim=8, n_attributes=4, n_labels=10,
                                        conditional_kind=True, im_chan=1, class_chan=3)  # fmt: skip
    net, vjp = build_edit_vjp(generator, classifier)
    graphs = export_graphs(vjp, (False,), exporter="torchscript")
    config = AscentConfig(steps=4, penalty=0.3)
    backend = OrtAscentEngine(None, config, graphs=graphs)
    z, labels = torch.randn(6, 6), torch.arange(6)
    weights = torch.zeros(6, 4)
    weights[:, 0] = 1.0
    with pytest.raises(ValueError, match="conditional"):
        backend.edit(z, weights, default_preserve(weights))
    got = backend.edit(z, weights, default_preserve(weights), labels)
    ref = AscentEngine(net, config).edit(z, weights, default_preserve(weights), labels)
    assert got.images.shape == ref.images.shape == (6, 28, 28, 1)
    torch.testing.assert_close(got.z_edited, ref.z_edited, rtol=1e-4, atol=1e-6)


def test_missing_onnxruntime_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    with pytest.raises(ExportError, match=r"zsteer\[cpu\]"):
        import_onnxruntime()


def test_cuda_request_without_cuda_provider(setup, monkeypatch):
    ort = import_onnxruntime()
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider")
    with pytest.raises(ExportError, match="no CUDA provider"):
        OrtAscentEngine(None, CONFIGS["clean"], EngineConfig(device="cuda"), graphs=setup.graphs)
    with pytest.warns(UserWarning, match="falling back to onnxruntime on the CPU"):
        backend = OrtAscentEngine(
            None, CONFIGS["clean"], EngineConfig(device="cuda"), graphs=setup.graphs, cpu_fallback=True
        )
    assert backend.placement == Placement("cpu", 0) and not backend.iobinding
    # onnxruntime-gpu lists CUDA even where it cannot load it; the session's own providers are checked.
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    with pytest.raises(ExportError, match="could not use CUDA device 1"):
        make_session(setup.graphs.generator, Placement.parse("cuda:1"))
    with pytest.raises(ExportError, match="unknown device"):
        Placement.parse("mps")
