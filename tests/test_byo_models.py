"""Bring-your-own models: three non-course architectures imported as .pt2 programs, edited, run as jobs.

The models (tests/byokit.py) are a residual-block generator, a generator whose class enters through an
nn.Embedding, and a classifier with global pooling and a linear head. Each is imported with the library
call behind `zsteer import`, loaded back through the job's checks, edited by ascent, and run as a job
that is crashed and resumed. Gradients are compared with eager autograd on the original modules, and the
files zsteer must refuse (code on load, wrong shapes, no gradient) are refused in one line.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from byokit import (
    ATTRIBUTES,
    EMBEDDING_CARD,
    N_CLASSES,
    POOLED_CARD,
    RESIDUAL_CARD,
    STACK_CARD,
    Z_DIM,
    ArgmaxClassifier,
    EmbeddingGenerator,
    StackClassifier,
    StackGenerator,
    embedding_generator,
    import_all,
    pooled_classifier,
    residual_generator,
    with_gain,
)
from click.testing import CliRunner
from jobkit import crash_at_commit, job_config, latents, read_parts, write_manifest

from zsteer.cli.main import main
from zsteer.core.errors import CheckpointError, ExportError, ZsteerError
from zsteer.export.onnx_export import export_models
from zsteer.jobs.backends import BackendConfig, backend_factory
from zsteer.jobs.runner import run_job
from zsteer.pipeline.checkpoints import load_classifier, load_generator
from zsteer.pipeline.config import AscentConfig, EngineConfig
from zsteer.pipeline.engine import make_engine
from zsteer.pipeline.generic_net import ModelNet
from zsteer.pipeline.importer import write_imported

pytestmark = pytest.mark.usefixtures("single_thread")

EAGER = {"residual": residual_generator, "embedding": embedding_generator}


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    return import_all(tmp_path_factory.mktemp("byo"))


def _rows(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, Z_DIM, generator=g), torch.arange(n) % N_CLASSES


def _eager_logits(gname: str, z, labels):
    """The pair as the user wrote it, in eager PyTorch: what zsteer's graphs must reproduce."""
    gen, cls = EAGER[gname](), pooled_classifier()
    # The embedding generator draws [0, 1]: zsteer works in [-1, 1].
    images = gen(z, labels) * 2 - 1 if gname == "embedding" else gen(z)
    images = F.interpolate(images, size=(20, 20), mode="bilinear").expand(-1, 3, -1, -1)
    return cls((images + 1) / 2)  # the classifier reads [0, 1]


def test_import_writes_a_program_and_a_sidecar_that_load_back(imported):
    side = json.loads(imported["embedding"].with_suffix(".json").read_text())
    assert side["kind"] == "imported_generator" and side["class_input"] == "embedding"
    assert side["image_shape"] == [1, 12, 12] and side["output_range"] == [0.0, 1.0]
    cls = load_classifier(imported["pooled"])
    assert cls.attributes == ATTRIBUTES and cls.spec.input_shape == (3, 20, 20)
    names = {n.split("/", 1)[1] for n in zipfile.ZipFile(imported["pooled"]).namelist()}
    assert not any(n.startswith(("data/aotinductor", "data/constants/custom_obj")) for n in names)


@pytest.mark.parametrize("gname", ["residual", "embedding"])
def test_input_gradients_match_eager_autograd_on_the_original_modules(imported, gname):
    z, labels = _rows(5)
    weights = torch.randn(5, len(ATTRIBUTES), generator=torch.Generator().manual_seed(1))
    z_eager = z.clone().requires_grad_(True)
    want_logits = _eager_logits(gname, z_eager, labels)
    (want,) = torch.autograd.grad((want_logits * weights).sum(), z_eager)

    net = ModelNet(load_generator(imported[gname]), load_classifier(imported["pooled"]))
    logits, vjp = torch.func.vjp(net, net.latent_input(z, labels if net.n_labels else None))
    (got,) = vjp(weights)
    torch.testing.assert_close(logits, want_logits.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[:, :Z_DIM], want, rtol=1e-4, atol=1e-7)
    assert want.abs().max() > 1e-3, "the models have real gain: the comparison is not noise"


@pytest.mark.parametrize("gname", ["residual", "embedding"])
def test_ascent_raises_the_target_and_a_row_is_the_same_at_any_batch_size(imported, gname):
    gen, cls = load_generator(imported[gname]), load_classifier(imported["pooled"])
    z, labels = _rows(5, seed=2)
    labels = labels if gen.spec.n_classes else None
    weights = torch.zeros(5, len(ATTRIBUTES))
    weights[:, 0] = 1.0
    ascent = AscentConfig(steps=6, lr=2.0)
    edits = [
        make_engine(gen, cls, ascent, EngineConfig(batch_size=b)).edit(
            z, weights, (weights == 0).float(), labels
        )
        for b in (1, 3, 8)
    ]
    first = edits[0]
    assert (first.logits_after[:, 0] > first.logits_before[:, 0]).all()
    assert (first.steps_taken == 6).all() and first.images.shape == (
        5,
        *gen.spec.image_shape[1:],
        gen.spec.im_chan,
    )
    for other in edits[1:]:
        assert torch.equal(other.z_edited, first.z_edited) and torch.equal(other.images, first.images)
    auto = make_engine(gen, cls, ascent, EngineConfig(compile="auto"))
    assert auto.engine.compile == "off", "auto never compiles the per-row graph calls (batch_size copies)"


@pytest.mark.parametrize("gname", ["residual", "embedding"])
def test_a_job_on_imported_models_resumes_exactly_once(imported, tmp_path, monkeypatch, gname):
    n = 24
    columns = {"id": np.arange(n), "z": latents(n, seed=4, z_dim=Z_DIM)}
    if gname == "embedding":
        columns["label"] = np.arange(n) % N_CLASSES
    manifest = write_manifest(tmp_path / "m.parquet", columns, row_group_size=8)
    models = (imported[gname], imported["pooled"])

    def config(out):
        return job_config(manifest, out, models, targets=("smile",), unit_rows=8, output={"images": "png"})

    whole = tmp_path / "whole"
    assert run_job(config(whole)).status == "complete"
    out = tmp_path / "crashed"
    crash_at_commit(monkeypatch, 2, config(out))
    assert run_job(config(out)).status == "complete"
    a, b = read_parts(whole).sort_by("id"), read_parts(out).sort_by("id")
    assert a.column("id").to_pylist() == list(range(n))
    assert a.equals(b), "a crash and a resume change no row, bit for bit"
    identity = json.loads((out / "job.json").read_text())["identity"]
    assert identity["generator"]["spec"]["kind"] == "imported_generator"
    assert identity["classifier"]["attributes"] == list(ATTRIBUTES)
    assert len(identity["classifier"]["fingerprint"]) == 16


def test_the_generic_net_says_how_it_adapts_images(imported, caplog):
    caplog.set_level("INFO", logger="zsteer")
    ModelNet(load_generator(imported["embedding"]), load_classifier(imported["pooled"]))
    assert "resized (bilinear), its one channel repeated" in caplog.text


# ---- refusals: one line each, at load ----------------------------------------------------------------


def _rewrite(src: Path, dst: Path, edit) -> Path:
    """A copy of the .pt2 archive ``src`` with ``edit(inner_name, bytes) -> bytes | None`` applied."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            inner = info.filename.split("/", 1)[1]
            data = edit(inner, zin.read(info.filename))
            if data is not None:
                zout.writestr(info.filename, data)
    dst.with_suffix(".json").write_text(src.with_suffix(".json").read_text())
    return dst


def _edit_program(change):
    def edit(inner, data):
        if inner != "models/model.json":
            return data
        doc = json.loads(data)
        change(doc)
        return json.dumps(doc).encode()

    return edit


def _first_node(doc) -> dict:
    return doc["graph_module"]["graph"]["nodes"][0]


@pytest.mark.parametrize(
    "case, edit, message",
    [
        ("sympy", _edit_program(lambda d: d["range_constraints"].update({"__import__('os').system('touch PWNED')": {}})),
         "symbolic size"),
        ("guard", _edit_program(lambda d: d.update(guards_code=["__import__('os').system('touch PWNED')"])),
         "guard"),
        ("target", _edit_program(lambda d: _first_node(d).update(target="torch.load")), "not an ATen operator"),
        ("from_file", _edit_program(lambda d: _first_node(d).update(target="torch.ops.aten.from_file.default")),
         "reads or writes"),
        ("pickled weight", lambda inner, data: data.replace(b'"use_pickle": false', b'"use_pickle": true', 1)
         if inner.endswith("weights_config.json") else data, "stored as a pickle"),
        ("compiled library", lambda inner, data: data, "data/aotinductor"),
        ("sample inputs", lambda inner, data: data if not inner.startswith("data/sample_inputs/")
         else __import__("pickle").dumps(Path("x")), "sample inputs are not plain tensors"),
    ],
)  # fmt: skip
def test_files_that_could_run_code_on_load_are_refused_before_torch_reads_them(
    imported, tmp_path, monkeypatch, case, edit, message
):
    monkeypatch.chdir(tmp_path)
    bad = _rewrite(imported["residual"], tmp_path / "bad.pt2", edit)
    if case == "compiled library":
        with zipfile.ZipFile(bad, "a") as archive:
            root = archive.namelist()[0].split("/")[0]
            archive.writestr(f"{root}/data/aotinductor/model/model.so", b"\x7fELF")
    loads = []
    monkeypatch.setattr(torch.export, "load", lambda *a, **k: loads.append(a))
    with pytest.raises(CheckpointError, match=message) as err:
        load_generator(bad)
    assert "\n" not in str(err.value) and str(bad) in str(err.value)
    assert not loads and not (tmp_path / "PWNED").exists()


def test_a_classifier_without_a_gradient_is_refused_naming_the_operation(tmp_path):
    path = tmp_path / "argmax.pt2"
    with pytest.raises(
        CheckpointError, match=r"no gradient reaches the classifier's input images.*aten\.round"
    ):
        write_imported(with_gain(ArgmaxClassifier(), 3), POOLED_CARD, path)
    assert not path.exists(), "a refused import leaves no file behind"


def _with_sidecar(src: Path, dst: Path, **fields) -> Path:
    dst.write_bytes(src.read_bytes())
    doc = json.loads(src.with_suffix(".json").read_text()) | fields
    dst.with_suffix(".json").write_text(json.dumps(doc))
    return dst


def test_shape_rank_and_attribute_problems_are_one_line_errors_at_load(imported, tmp_path):
    res, pooled = imported["residual"], imported["pooled"]
    with pytest.raises(CheckpointError, match=r"input 0 of the graph has rank 2 \[N, 6\], expected rank 4"):
        as_classifier = _with_sidecar(res, tmp_path / "c.pt2", kind="imported_classifier",
                                      input_shape=[3, 16, 16], attributes=["a"])  # fmt: skip
        load_classifier(as_classifier)
    with pytest.raises(
        CheckpointError, match=r"draws \[3, 16, 16\] per row, its sidecar says image_shape \[3, 8, 8\]"
    ):
        load_generator(_with_sidecar(res, tmp_path / "g.pt2", image_shape=[3, 8, 8]))
    with pytest.raises(CheckpointError, match="has 4 logits but 3 attribute names"):
        load_classifier(_with_sidecar(pooled, tmp_path / "a.pt2", attributes=["a", "b", "c"]))
    with pytest.raises(CheckpointError, match="input 0 of the graph is \\[N, 6\\], expected width 9"):
        load_generator(_with_sidecar(res, tmp_path / "w.pt2", z_dim=9))
    with pytest.raises(
        CheckpointError, match="describes a 'imported_generator', but it was given as the classifier"
    ):
        load_classifier(res)
    (tmp_path / "lone.pt2").write_bytes(res.read_bytes())
    with pytest.raises(CheckpointError, match="its sidecar lone.json is missing"):
        load_generator(tmp_path / "lone.pt2")
    with pytest.raises(CheckpointError, match="z_dim 8 was given, but its sidecar says 6"):
        load_generator(res, z_dim=8)
    deep = _with_sidecar(res, tmp_path / "deep.pt2")
    deep.with_suffix(".json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match="deep.json: JSON nested too deeply"):
        load_generator(deep)


def test_zsteer_import_runs_the_users_factory_and_refuses_bad_options(tmp_path):
    runner = CliRunner()
    tests = str(Path(__file__).parent)
    out = tmp_path / "emb.pt2"
    args = ["import", "--module", "byokit:embedding_generator", "--kind", "generator", "--z-dim", str(Z_DIM),
            "--n-classes", str(N_CLASSES), "--class-input", "embedding", "--output-range", "0,1",
            "--out", str(out), "--path", tests]  # fmt: skip
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert json.loads(out.with_suffix(".json").read_text())["source"] == "byokit:embedding_generator"
    assert load_generator(out).spec == load_generator(out).spec.__class__(
        z_dim=Z_DIM,
        n_classes=N_CLASSES,
        class_input="embedding",
        output_range=(0.0, 1.0),
        image_shape=(1, 12, 12),
    )
    bad = runner.invoke(main, [*args[:2], "byokit:nothing_here", *args[3:]])
    assert bad.exit_code == 2 and "has no attribute 'nothing_here'" in bad.output
    wrong = runner.invoke(main, [*args[:-4], "--output-range", "0,255", "--out", str(out), "--path", tests])
    assert wrong.exit_code == 2 and "the range must be [-1, 1] or [0, 1]" in wrong.output


def test_the_cards_are_what_the_sidecars_hold():
    assert RESIDUAL_CARD.class_input == "none" and EMBEDDING_CARD.output_range == (0.0, 1.0)
    with pytest.raises(ZsteerError, match="go together"):
        write_imported(residual_generator(), RESIDUAL_CARD.__class__(z_dim=Z_DIM, n_classes=2), "x.pt2")


def test_import_runs_the_top_class_and_refuses_more_classes_than_the_module_has(tmp_path):
    """The sample batches cycle through classes 0..4 only: a 5-entry embedding passed them as 9 classes
    and every job crashed on a row of class 5 or more. The top class is run at import, naming --n-classes."""
    five = with_gain(EmbeddingGenerator(n_classes=5), 2)
    card = EMBEDDING_CARD.__class__(
        z_dim=Z_DIM, n_classes=9, class_input="embedding", output_range=(0.0, 1.0)
    )
    out = tmp_path / "nine.pt2"
    with pytest.raises(
        ZsteerError, match=r"^--n-classes 9: the module cannot draw classes 0 and 8 .*IndexError"
    ):
        write_imported(five, card, out)
    assert not out.exists() and not out.with_suffix(".json").exists()
    assert write_imported(five, replace(card, n_classes=5), out).spec.n_classes == 5


# ---- D's methods on imported models: directions and interpolation ---------------------------------------


@pytest.mark.parametrize("gname", ["residual", "embedding"])
def test_a_direction_edit_on_imported_models_is_exactly_once_and_batch_invariant(
    imported, tmp_path, monkeypatch, gname
):
    from zsteer.jobs.direction_method import DirectionMethod
    from zsteer.jobs.interpolate_method import InterpolateMethod
    from zsteer.pipeline.direction_file import save_directions
    from zsteer.pipeline.direction_fit import FitConfig, fit_directions

    gen, cls = load_generator(imported[gname]), load_classifier(imported["pooled"])
    found = fit_directions(gen, cls, FitConfig(method="gradient", n_samples=32, attributes=("smile", "hat")))
    path = save_directions(found, tmp_path / "dirs")
    with pytest.raises(ValueError, match="sefa factorises the course generator's first layer"):
        fit_directions(gen, cls, FitConfig(method="sefa"))
    n = 12
    columns = {"id": np.arange(n), "z": latents(n, seed=5, z_dim=Z_DIM)}
    if gen.spec.n_classes:
        columns["label"] = np.arange(n) % N_CLASSES
    columns["id_to"] = [(i + 5) % n for i in range(n)]  # for the interpolation: another row's z
    manifest = write_manifest(tmp_path / "m.parquet", columns)
    models = (imported[gname], imported["pooled"])
    method = DirectionMethod(directions=path, direction="smile", alphas=(-1.0, 2.0))

    def config(out, batch_size=4, **kw):
        return job_config(
            manifest, out, models, targets=(), method=method, unit_rows=4, batch_size=batch_size, **kw
        )

    def table(out):
        return read_parts(out).sort_by([("id", "ascending"), ("alpha", "ascending")])

    out = tmp_path / "crashed"
    crash_at_commit(monkeypatch, 2, config(out))
    assert run_job(config(out)).status == "complete"
    crashed = table(out)
    assert crashed.num_rows == 2 * n
    logits = np.array(crashed.column("logits_after").to_pylist())[:, 0].reshape(n, 2)
    assert logits[:, 1].mean() > logits[:, 0].mean(), "along the mean smile gradient, smile rises on average"
    run_job(config(tmp_path / "batch1", batch_size=1))
    assert table(tmp_path / "batch1").equals(crashed)

    run_job(config(tmp_path / "ort", backend=BackendConfig("onnxruntime")))  # forward-only: any graph
    np.testing.assert_allclose(
        np.array(table(tmp_path / "ort").column("logits_after").to_pylist()),
        np.array(crashed.column("logits_after").to_pylist()),
        rtol=1e-5,
        atol=1e-5,
    )
    frames = tmp_path / "frames"
    run_job(job_config(manifest, frames, models, targets=(), method=InterpolateMethod(frames=3), unit_rows=4))
    frames_table = read_parts(frames)
    assert frames_table.num_rows == 3 * n and len(set(frames_table.column("id").to_pylist())) == n


def test_class_blending_on_an_embedding_generator_is_refused_before_any_unit(imported, tmp_path):
    """A label_to column with an embedding generator crashed in the first unit after job.json and the
    lookup were written; it is refused when the editor is built, and the job is taken back."""
    from zsteer.jobs.interpolate_method import InterpolateMethod

    n = 6
    columns = {"id": np.arange(n), "z": latents(n, seed=9, z_dim=Z_DIM), "label": np.arange(n) % N_CLASSES}
    columns["id_to"] = [(i + 1) % n for i in range(n)]
    models = (imported["embedding"], imported["pooled"])
    plain = write_manifest(tmp_path / "plain.parquet", columns)
    blended = write_manifest(
        tmp_path / "blend.parquet", {**columns, "label_to": (np.arange(n) + 1) % N_CLASSES}
    )

    def config(manifest, out):
        return job_config(manifest, out, models, targets=(), method=InterpolateMethod(frames=3), unit_rows=4)

    out = tmp_path / "blend"
    with pytest.raises(
        ZsteerError, match=r"^label_to: .*embedding\.pt2 takes its class as an embedding index"
    ):
        run_job(config(blended, out))
    assert not (out / "job.json").exists() and not (out / "lookup").exists()
    assert run_job(config(plain, out)).status == "complete"  # the same folder, without label_to: runs


# ---- onnxruntime: forward-only for any graph, ascent for the stacks the hand-written gradient covers ------


def test_onnxruntime_renders_any_imported_graph_and_refuses_its_ascent_naming_the_first_node(imported):
    gen, cls = load_generator(imported["embedding"]), load_classifier(imported["pooled"])
    z, labels = _rows(5, seed=3)
    onnx = backend_factory("onnxruntime")
    renderer = onnx(gen, cls, AscentConfig(steps=0), EngineConfig(batch_size=4), BackendConfig("onnxruntime"))
    images, logits = renderer.render(z, labels)
    want_images, want_logits = make_engine(gen, cls, AscentConfig(steps=0)).render(z, labels)
    torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-6)
    assert (images.int() - want_images.int()).abs().max() <= 1  # a pixel may round the other way
    with pytest.raises(
        ExportError, match=r"generator node 'embedding' \(aten\.embedding\) has no hand-written"
    ):
        onnx(gen, cls, AscentConfig(steps=2), EngineConfig(), BackendConfig("onnxruntime"))
    with pytest.raises(ExportError, match="zsteer export writes the course models' graphs"):
        export_models(gen, cls, Path("unused"))


def test_onnxruntime_renders_imported_rows_with_the_same_bits_on_any_threads_and_batch(imported):
    """On 2 threads the rows go to concurrent 1-thread runs (runtime.RowChunks), each row still alone."""
    gen, cls = load_generator(imported["embedding"]), load_classifier(imported["pooled"])
    z, labels = _rows(11, seed=4)

    def render(threads, rows):
        backend = BackendConfig("onnxruntime", threads=threads)
        renderer = backend_factory("onnxruntime")(gen, cls, AscentConfig(steps=0), EngineConfig(), backend)
        return renderer.render(z[rows], labels[rows])

    images, logits = render(1, slice(None))
    for threads, rows in ((2, slice(None)), (2, slice(3, 9)), (3, slice(2, 3))):
        got_images, got_logits = render(threads, rows)
        assert torch.equal(got_logits, logits[rows]) and torch.equal(got_images, images[rows])


def test_onnxruntime_ascent_on_an_imported_layer_stack_matches_torch(tmp_path):
    gen = write_imported(with_gain(StackGenerator(), 5), RESIDUAL_CARD, tmp_path / "stack_g.pt2")
    cls = write_imported(with_gain(StackClassifier(), 6), STACK_CARD, tmp_path / "stack_c.pt2")
    z, _ = _rows(5, seed=4)
    weights = torch.zeros(5, len(ATTRIBUTES))
    weights[:, 1] = 1.0
    ascent, engine = AscentConfig(steps=4, lr=0.5), EngineConfig(batch_size=4)
    want = make_engine(gen, cls, ascent, engine).edit(z, weights, (weights == 0).float())
    ort = backend_factory("onnxruntime")(gen, cls, ascent, engine, BackendConfig("onnxruntime"))
    got = ort.edit(z, weights, (weights == 0).float())
    assert (want.z_edited - z).abs().max() > 0.05, "the edit moves z"
    torch.testing.assert_close(got.z_edited, want.z_edited, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.logits_after, want.logits_after, rtol=1e-5, atol=1e-5)


def test_the_resnet_judge_trains_on_the_demo_data_and_imports_as_a_judge(tmp_path):
    from zsteer.demo.procedural import ATTRIBUTES as DEMO_ATTRIBUTES
    from zsteer.demo.resnet_judge import JudgeTraining, train_resnet_judge, write_judge

    model, info = train_resnet_judge(JudgeTraining(steps=2, batch=8, eval_images=16), log_every=0)
    judge = load_classifier(write_judge(model, tmp_path / "judge.pt2", info))
    assert judge.attributes == DEMO_ATTRIBUTES and judge.spec.input_shape == (3, 64, 64)
    log = json.loads((tmp_path / "judge.training.json").read_text())
    assert set(log["accuracy"]) == set(DEMO_ATTRIBUTES) and log["steps"] == 2


def test_zsteer_import_loads_weights_as_data_and_refuses_a_pickle_that_runs_code(tmp_path):
    trained = pooled_classifier()
    torch.save({"model": trained.state_dict()}, tmp_path / "cls.pth")
    out = tmp_path / "cls.pt2"
    args = ["import", "--module", "byokit:PooledClassifier", "--kind", "classifier", "--input-shape", "3,20,20",
            "--input-range", "0,1", "--attributes", ",".join(ATTRIBUTES), "--out", str(out),
            "--path", str(Path(__file__).parent)]  # fmt: skip
    runner = CliRunner()
    result = runner.invoke(main, [*args, "--weights", str(tmp_path / "cls.pth")])
    assert result.exit_code == 0, result.output
    images = torch.rand(3, 3, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(load_classifier(out).module(images * 2 - 1), trained(images))
    torch.save({"model": Path("not a tensor")}, tmp_path / "evil.pth")  # a pickled object, not weights
    refused = runner.invoke(main, [*args, "--weights", str(tmp_path / "evil.pth")])
    assert refused.exit_code == 2 and "without unpickling code" in refused.output


def test_the_shipped_resnet_judge_loads_as_data_and_judges_the_demo_data():
    from zsteer.demo import demo_paths
    from zsteer.demo.resnet_judge import held_out_accuracy

    judge = load_classifier(Path(demo_paths()["generator"]).with_name("resnet_judge.pt2"))
    assert judge.spec.input_shape == (3, 64, 64)
    assert held_out_accuracy(judge.module, 64).min() >= 0.9
