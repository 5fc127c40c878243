"""ONNX export of the generator, the classifier and the step graphs: files, manifest, parity gate."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from exportkit import gain_models, update_edge_cases

from zsteer.core.errors import ExportError, ZsteerError
from zsteer.export.graphs import build_edit_vjp, update_rows
from zsteer.export.onnx_export import MANIFEST, export_models, load_graphs, to_onnx
from zsteer.export.runtime import Placement, make_session
from zsteer.kernels.ascent_update import ascent_update_torch

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(gain_pair, tmp_path_factory):
    """One export with the default (dynamo) exporter, parity at batch 1, 7 and 128."""
    out = tmp_path_factory.mktemp("onnx")
    generator, classifier = gain_pair
    return out, export_models(generator, classifier, out)


def test_export_writes_models_and_manifest(gain_pair, exported):
    out, report = exported
    generator, classifier = gain_pair
    assert report["passed"] and report["failure"] is None
    assert {p.name for p in out.iterdir()} == {
        "generator.onnx", "classifier.onnx", "step.onnx", "step_lab.onnx", MANIFEST, "parity.json",
    }  # fmt: skip
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["attributes"] == list(classifier.attributes)
    assert manifest["generator"]["fingerprint"] == generator.fingerprint
    assert manifest["classifier"]["fingerprint"] == classifier.fingerprint
    assert manifest["generator"]["spec"] == generator.spec.to_dict()
    assert manifest["classifier"]["spec"]["n_classes"] == 5
    assert manifest["generator"]["inputs"] == [{"name": "z", "dtype": "float32", "shape": ["N", 8]}]
    assert manifest["generator"]["outputs"] == [
        {"name": "images", "dtype": "float32", "shape": ["N", 3, 64, 64]}
    ]
    assert manifest["classifier"]["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["N", 5]}]
    clean, lab = manifest["steps"]["clean"], manifest["steps"]["lab"]
    assert "accum" not in [i["name"] for i in clean["inputs"]]
    assert [o["name"] for o in lab["outputs"]][-1] == "accum_next"
    assert manifest["status_codes"]["2"] == "target_reached"
    assert manifest["parity"] == report == json.loads((out / "parity.json").read_text())


def test_parity_report_covers_batch_sizes(exported):
    _, report = exported
    for name in ("generator", "classifier"):
        assert [e["batch"] for e in report[name]] == [1, 7, 128]
        assert all(e["max_abs_diff"] <= 1e-5 for e in report[name])
    for key in ("clean", "lab"):
        entries = report["steps"][key]
        assert [(e["batch"], e["t"]) for e in entries] == [(n, t) for n in (1, 7, 128) for t in (0, 1)]
        assert all(e["status_mismatch_rows"] == 0 for e in entries)
        assert report["gradients"][key]["rel_diff_median"] <= 1e-4  # against autograd, every batch together
        assert all(e["max_grad_norm"] > 1e-2 for e in entries)  # real gain: a meaningful comparison


def test_exported_generator_runs_any_batch_size(exported, gain_pair):
    out, _ = exported
    session = make_session(out / "generator.onnx", Placement())
    net, vjp = build_edit_vjp(*gain_pair)
    for n in (2, 33):
        z = torch.randn(n, 8)
        (images,) = session.run(None, {"z": z.numpy()})
        np.testing.assert_allclose(images, net.generate(z).numpy(), atol=1e-5, rtol=0)


def test_load_graphs_reads_the_manifest(exported):
    out, _ = exported
    graphs = load_graphs(out)
    assert (graphs.z_dim, graphs.n_labels, graphs.n_attributes) == (8, 0, 5)
    assert graphs.image_shape == (3, 64, 64) and set(graphs.steps) == {False, True}


def test_parity_failure_raises_one_line_and_writes_no_manifest(gain_pair, tmp_path):
    generator, classifier = gain_pair
    # atol = 0 demands bit-identical outputs, which two runtimes do not give: the gate must trip.
    with pytest.raises(ExportError) as info:
        export_models(
            generator, classifier, tmp_path, steps=(), batch_sizes=(3,), atol=0.0, exporter="torchscript"
        )
    assert isinstance(info.value, ZsteerError)
    message = str(info.value)
    assert "\n" not in message and "does not match PyTorch" in message and "generator at batch 3" in message
    assert not (tmp_path / MANIFEST).exists() and not (tmp_path / "generator.onnx").exists()
    assert json.loads((tmp_path / "parity.json").read_text())["passed"] is False


def test_conditional_generator_with_resize_exports(tmp_path):
    """C1W4A-style generator (28x28, one channel, one-hot label) feeding a 64x64 RGB classifier."""
    generator, classifier = gain_models(z_dim=6, hidden_dim=8, n_attributes=4, n_labels=10,
                                        conditional_kind=True, im_chan=1, class_chan=3)  # fmt: skip
    report = export_models(generator, classifier, tmp_path, batch_sizes=(1, 7, 32), exporter="torchscript")
    assert report["passed"]
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert [i["name"] for i in manifest["generator"]["inputs"]] == ["z", "labels"]
    assert manifest["generator"]["inputs"][1]["dtype"] == "int64"
    assert manifest["classifier"]["inputs"][0]["shape"] == ["N", 1, 28, 28]
    assert "labels" in [i["name"] for i in manifest["steps"]["clean"]["inputs"]]


def test_unsupported_layer_fails_the_export(tmp_path):
    generator, classifier = gain_models(z_dim=8, hidden_dim=8, n_attributes=5)
    classifier.module.classifier.append(torch.nn.Dropout(0.1))
    with pytest.raises(ExportError, match="Dropout is not supported"):
        export_models(generator, classifier, tmp_path)


class _Update(torch.nn.Module):
    def forward(self, *x):
        z, z0, grad, accum, logits, weights, stop_prob, status, lr, max_shift, normalize = x
        return update_rows(z, z0, grad, accum, logits, weights, stop_prob, status, lr, max_shift, normalize)


def test_update_graph_matches_reference_in_onnxruntime():
    """NaN / inf gradients, caps, stops and frozen rows give the reference's results through ONNX too."""
    z, z0, grad, accum, logits, weights, stop_prob, status = update_edge_cases()
    names = [
        "z",
        "z0",
        "grad",
        "accum",
        "logits",
        "weights",
        "stop_prob",
        "status",
        "lr",
        "max_shift",
        "normalize",
    ]
    outputs = ["z_next", "accum_next", "grad_norm", "shift", "status_next", "moved"]
    sample = (z, z0, grad, accum, logits, weights, stop_prob, status,
              torch.tensor(0.3), torch.tensor(0.5), torch.tensor(True))  # fmt: skip
    proto = to_onnx(_Update(), sample, names, outputs, exporter="torchscript")
    session = make_session(proto.SerializeToString(), Placement())
    for max_shift in (0.5, math.inf):
        for normalize in (False, True):
            args = (*sample[:8], torch.tensor(0.3), torch.tensor(max_shift), torch.tensor(normalize))
            got = session.run(None, {n: a.numpy() for n, a in zip(names, args, strict=True)})
            ref = ascent_update_torch(
                z, z0, grad, accum, logits, weights, stop_prob, status, 0.3, max_shift, normalize
            )
            for name, value, want in zip(outputs, got, (ref.z, ref.accum, ref.grad_norm, ref.shift, ref.status, ref.moved),
                                         strict=True):  # fmt: skip
                np.testing.assert_allclose(value, want.numpy(), rtol=1e-6, atol=1e-7, err_msg=name)


def _copy_export(out, dest, drop_hashes: bool = False):
    """A copy of an export folder; ``drop_hashes`` makes it look like one written before hashes were kept."""
    import shutil

    shutil.copytree(out, dest)
    if drop_hashes:
        manifest = json.loads((dest / MANIFEST).read_text())
        for entry in (manifest["generator"], manifest["classifier"], *manifest["steps"].values()):
            entry.pop("sha256")
        (dest / MANIFEST).write_text(json.dumps(manifest))
    return dest


def test_manifest_hashes_refuse_a_swapped_graph_file(exported, tmp_path):
    out, _ = exported
    manifest = json.loads((out / MANIFEST).read_text())
    assert len(manifest["classifier"]["sha256"]) == 64 and len(manifest["steps"]["clean"]["sha256"]) == 64
    folder = _copy_export(out, tmp_path / "swapped")
    # Another graph's bytes under classifier.onnx: the model fingerprints alone would not notice.
    (folder / "classifier.onnx").write_bytes((folder / "generator.onnx").read_bytes())
    with pytest.raises(
        ExportError, match=r"classifier\.onnx: its sha256 is not the one manifest\.json"
    ) as info:
        load_graphs(folder)
    assert "\n" not in str(info.value)


def test_an_export_with_other_stop_codes_is_refused(exported, tmp_path):
    """A folder exported before out_of_range existed holds a step graph that lets rows past MAX_ABS_Z."""
    out, _ = exported
    folder = _copy_export(out, tmp_path / "older")
    manifest = json.loads((folder / MANIFEST).read_text())
    del manifest["status_codes"]["6"]
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match=r"exported by another zsteer.*re-export the folder$"):
        load_graphs(folder)


def test_export_without_hashes_still_loads(exported, tmp_path):
    out, _ = exported
    graphs = load_graphs(_copy_export(out, tmp_path / "old", drop_hashes=True))
    assert set(graphs.steps) == {False, True} and graphs.classifier == (out / "classifier.onnx").read_bytes()


@pytest.mark.parametrize("drop_hashes", [False, True], ids=["hashed", "old-folder"])
def test_truncated_graph_file_is_one_line_naming_it(exported, tmp_path, drop_hashes):
    from zsteer.export.backend import OrtAscentEngine
    from zsteer.pipeline.engine import AscentConfig

    out, _ = exported
    folder = _copy_export(out, tmp_path / "cut", drop_hashes=drop_hashes)
    with open(folder / "step.onnx", "r+b") as f:
        f.truncate(100)
    expected = "its sha256 is not" if not drop_hashes else r"not a valid ONNX file \(truncated\?\)"
    with pytest.raises(ExportError, match=rf"step\.onnx: {expected}") as info:
        OrtAscentEngine.from_export(folder, AscentConfig(steps=2))
    assert "\n" not in str(info.value) and str(folder / "step.onnx") in str(info.value)


def test_make_session_names_the_file_onnxruntime_cannot_load(exported, tmp_path):
    """The last line of defence (a file cut where a protobuf parse cannot tell): onnxruntime's own
    InvalidProtobuf, once a 70-line traceback, is one line naming the file."""
    out, _ = exported
    cut = tmp_path / "step.onnx"
    cut.write_bytes((out / "step.onnx").read_bytes()[:100])
    with pytest.raises(ExportError, match=rf"^{cut}: not a valid ONNX file \(truncated\?\)$"):
        make_session(cut, Placement())
    with pytest.raises(ExportError, match=r"^od/step\.onnx: not a valid ONNX file"):
        make_session(cut.read_bytes(), Placement(), source="od/step.onnx")


def test_bench_checks_the_onnx_dir_before_measuring(exported, tmp_path, monkeypatch):
    from click.testing import CliRunner

    import zsteer.cli.bench
    from zsteer.cli.main import main

    out, _ = exported
    folder = _copy_export(out, tmp_path / "od", drop_hashes=True)
    with open(folder / "classifier.onnx", "r+b") as f:
        f.truncate(100)

    def refuse(*args, **kwargs):
        raise AssertionError("the benchmark ran")

    monkeypatch.setattr(zsteer.cli.bench, "run_bench", refuse)
    args = ["bench", "--quick", "--backend", "onnxruntime", "--onnx-dir", str(folder), "--peak-seconds", "0"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "Traceback" not in result.output, (result.output, result.exception)
    assert (
        result.stderr.strip()
        == f"zsteer: error: {folder / 'classifier.onnx'}: not a valid ONNX file (truncated?)"
    )


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda m: m.pop("z_dim"), "malformed manifest: no field 'z_dim'"),
        (lambda m: m.__setitem__("steps", []), "malformed manifest ("),
        (lambda m: m["generator"].pop("file"), "malformed manifest: no field 'file'"),
    ],
)
def test_a_malformed_manifest_is_one_line(exported, tmp_path, edit, fragment):
    out, _ = exported
    folder = _copy_export(out, tmp_path / "m")
    manifest = json.loads((folder / MANIFEST).read_text())
    edit(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match=rf"^{folder / MANIFEST}: ") as info:
        load_graphs(folder)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_edit_checks_the_onnx_dir_before_the_job_folder(exported, tmp_path):
    """A swapped graph file is refused by `zsteer edit` before --out is made (the engine would refuse it
    only once the job had started)."""
    from click.testing import CliRunner

    from zsteer.cli.main import main

    out, _ = exported
    folder = _copy_export(out, tmp_path / "swapped")
    (folder / "classifier.onnx").write_bytes((folder / "generator.onnx").read_bytes())
    job = tmp_path / "job"
    args = [
        "edit",
        "-m",
        str(tmp_path / "m.parquet"),
        "-o",
        str(job),
        "-t",
        "attr1",
        "--backend",
        "onnxruntime",
    ]
    result = CliRunner().invoke(main, [*args, "--onnx-dir", str(folder)])
    assert result.exit_code == 2 and "classifier.onnx: its sha256 is not" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not job.exists()
