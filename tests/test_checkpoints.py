"""Loading model files: the course's format, the project's, and every way a file can be wrong."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from modelkit import write_models

from zsteer.core.errors import AttributeNameError, CheckpointError
from zsteer.pipeline.attributes import CELEBA40, load_attribute_names, parse_target, resolve_attribute
from zsteer.pipeline.checkpoints import load_classifier, load_generator
from zsteer.pipeline.models import CourseClassifier, CourseConditionalGenerator, CourseGenerator


def test_course_files_load_with_course_defaults(tmp_path):
    gen, cls = CourseGenerator(64, 3, 64), CourseClassifier(3, 40, 64)
    torch.save({"gen": gen.state_dict()}, tmp_path / "pretrained_celeba.pth")
    torch.save({"classifier": cls.state_dict()}, tmp_path / "pretrained_classifier.pth")
    g = load_generator(tmp_path / "pretrained_celeba.pth")
    c = load_classifier(tmp_path / "pretrained_classifier.pth")
    assert g.spec.z_dim == 64 and c.attributes == CELEBA40
    z = torch.randn(3, 64)
    torch.testing.assert_close(c.module(g.module(z)), cls.eval()(gen.eval()(z)))
    assert not any(p.requires_grad for p in g.module.parameters()) and not g.module.training


def test_project_format_round_trips_with_its_config(tmp_path):
    gpath, cpath = write_models(tmp_path)
    g, c = load_generator(gpath), load_classifier(cpath)
    assert g.spec.z_dim == 16 and g.spec.hidden_dim == 8
    assert c.attributes == tuple(f"attr{i}" for i in range(6))
    assert len(g.fingerprint) == 16 and g.fingerprint != c.fingerprint


def test_a_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"gen": Evil()}, fh)
    with pytest.raises(CheckpointError, match="refused"):
        load_generator(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (lambda p: p.write_bytes(b"this is not a checkpoint"), "not a PyTorch checkpoint"),
        (lambda p: torch.save({"generator": {"x": 1}}, p), "missing key 'gen'"),
        (lambda p: torch.save([1, 2], p), "expected a dict"),
        (
            lambda p: torch.save({"gen": {"gen.0.0.weight": torch.zeros(3, 3)}}, p),
            r"parameter 'gen\.0\.0\.bias' is missing",
        ),
        (lambda p: torch.save({"gen": {}}, p), "is missing"),
    ],
)
def test_bad_generator_files_get_one_clear_line(tmp_path, content, message):
    path = tmp_path / "bad.pth"
    content(path)
    with pytest.raises(CheckpointError, match=message) as info:
        load_generator(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_missing_file_and_shape_overrides(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_generator(tmp_path / "nope.pth")
    torch.save({"gen": CourseGenerator(32, 3, 16).state_dict()}, tmp_path / "g.pth")
    assert load_generator(tmp_path / "g.pth", z_dim=32, hidden_dim=16).spec.z_dim == 32


@pytest.mark.parametrize(
    ("module", "given", "want"),
    [
        (CourseGenerator(32, 1, 16), {}, {"kind": "course_generator", "z_dim": 32, "hidden_dim": 16, "im_chan": 1}),
        (CourseConditionalGenerator(74, 1, 8), {}, {"kind": "course_conditional_generator", "z_dim": 64, "n_classes": 10}),
        (CourseConditionalGenerator(20, 1, 8), {"z_dim": 12}, {"z_dim": 12, "n_classes": 8, "hidden_dim": 8}),
        (CourseConditionalGenerator(20, 1, 8), {"n_classes": 5}, {"z_dim": 15, "n_classes": 5}),
    ],
)  # fmt: skip
def test_bare_generator_checkpoints_need_no_flags(tmp_path, module, given, want):
    torch.save({"gen": module.state_dict()}, tmp_path / "g.pth")
    spec = load_generator(tmp_path / "g.pth", **given).spec
    assert {k: getattr(spec, k) for k in want} == want


def test_a_conditional_generator_whose_inputs_cannot_be_split_asks_for_one_flag(tmp_path):
    torch.save({"gen": CourseConditionalGenerator(20, 1, 8).state_dict()}, tmp_path / "g.pth")
    with pytest.raises(CheckpointError, match=r"20 inputs .*give --z-dim or --gen-n-classes"):
        load_generator(tmp_path / "g.pth")


def test_bare_classifier_checkpoints_need_no_flags(tmp_path):
    torch.save({"classifier": CourseClassifier(1, 40, 16).state_dict()}, tmp_path / "c.pth")
    spec = load_classifier(tmp_path / "c.pth").spec
    assert (spec.im_chan, spec.n_classes, spec.hidden_dim) == (1, 40, 16)


@pytest.mark.parametrize(
    ("role", "given", "fragment"),
    [
        ("generator", {"z_dim": 40}, "--z-dim 40 contradicts the file, whose generator takes 32 inputs"),
        ("generator", {"hidden_dim": 64}, "--gen-hidden-dim 64 contradicts the file, whose tensors hold hidden_dim = 16"),
        ("generator", {"kind": "course_conditional_generator"}, "--gen-kind course_conditional_generator contradicts"),
        ("classifier", {"n_classes": 5}, "--cls-n-classes 5 contradicts the file, whose tensors hold n_classes = 40"),
    ],
)  # fmt: skip
def test_flags_that_contradict_the_file_name_both_values(tmp_path, role, given, fragment):
    path = tmp_path / "m.pth"
    if role == "generator":
        torch.save({"gen": CourseGenerator(32, 3, 16).state_dict()}, path)
        load = load_generator
    else:
        torch.save({"classifier": CourseClassifier(3, 40, 16).state_dict()}, path)
        load = load_classifier
    with pytest.raises(CheckpointError) as info:
        load(path, **given)
    assert fragment in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd, key: {f"module.{k}": v for k, v in sd.items()},  # DataParallel, bare
        lambda sd, key: {key: {f"module.{k}": v for k, v in sd.items()}},  # DataParallel, course-wrapped
        lambda sd, key: {"state_dict": sd, "epoch": 3},
        lambda sd, key: {"model": {f"_orig_mod.{k}": v for k, v in sd.items()}},  # torch.compile'd
    ],
)
def test_wrapped_and_data_parallel_checkpoints_load(tmp_path, wrap):
    gen, cls = CourseGenerator(16, 3, 8), CourseClassifier(3, 40, 8)
    torch.save(wrap(gen.state_dict(), "gen"), tmp_path / "g.pth")
    torch.save(wrap(cls.state_dict(), "classifier"), tmp_path / "c.pth")
    g, c = load_generator(tmp_path / "g.pth"), load_classifier(tmp_path / "c.pth")
    z = torch.randn(2, 16)
    torch.testing.assert_close(c.module(g.module(z)), cls.eval()(gen.eval()(z)))


def test_a_classifier_image_size_the_architecture_cannot_take_is_one_line(tmp_path):
    torch.save({"classifier": CourseClassifier(3, 40, 8).state_dict()}, tmp_path / "c.pth")
    for size in (28, 90):
        with pytest.raises(CheckpointError) as info:
            load_classifier(tmp_path / "c.pth", image_size=size)
        assert f"image_size {size} does not fit the course classifier" in str(info.value)
        assert "58 to 81 pixels" in str(info.value) and "\n" not in str(info.value)
    assert load_classifier(tmp_path / "c.pth", image_size=58).spec.image_size == 58


def test_a_whole_pickled_module_is_refused_with_how_to_resave_it(tmp_path):
    torch.save(CourseGenerator(16, 3, 8), tmp_path / "whole.pth")
    with pytest.raises(CheckpointError) as info:
        load_generator(tmp_path / "whole.pth")
    assert "refused" in str(info.value) and "torch.save(model.state_dict()" in str(info.value)


def test_attribute_names_and_targets(tmp_path):
    assert len(CELEBA40) == 40 and CELEBA40[30] == "Sideburn" and CELEBA40[31] == "Smiling"
    assert parse_target("Eyeglasses=-1", CELEBA40) == (15, -1.0)
    assert resolve_attribute("smiling", CELEBA40) == 31
    with pytest.raises(AttributeNameError, match="did you mean Smiling"):
        resolve_attribute("Smilling", CELEBA40)
    with pytest.raises(AttributeNameError, match="not a number"):
        parse_target("Smiling=lots", CELEBA40)
    (tmp_path / "names.json").write_text(json.dumps(["a", "b"]))
    (tmp_path / "names.txt").write_text("a\nb\n\n")
    assert load_attribute_names(str(tmp_path / "names.json")) == ("a", "b")
    assert load_attribute_names(str(tmp_path / "names.txt")) == ("a", "b")
    assert load_attribute_names("celeba40") == CELEBA40


def _rewrite_sidecar(path, edit) -> None:
    sidecar = path.with_suffix(".json")
    sidecar.write_text(json.dumps(edit(json.loads(sidecar.read_text()))))


@pytest.mark.parametrize(
    ("role", "edit", "fragments"),
    [
        ("generator", lambda c: [1, 2], ["generator.json", "expected a JSON object", "found list"]),
        (
            "generator",
            lambda c: {**c, "z_dim": "8"},
            ["generator.json", "'z_dim'", "positive integer", '"8"'],
        ),
        ("generator", lambda c: {**c, "hidden_dim": None}, ["'hidden_dim'", "positive integer", "null"]),
        ("generator", lambda c: {**c, "im_chan": True}, ["'im_chan'", "positive integer", "true"]),
        ("generator", lambda c: {**c, "z_dim": 0}, ["'z_dim'", "positive integer", "got 0"]),
        ("generator", lambda c: {**c, "n_classes": -1}, ["'n_classes'", "integer >= 0"]),
        ("generator", lambda c: {**c, "kind": 3}, ["'kind'", "must be a string"]),
        ("classifier", lambda c: {**c, "n_classes": 6.0}, ["classifier.json", "'n_classes'", "6.0"]),
        ("classifier", lambda c: {**c, "attributes": "attr0"}, ["'attributes'", "list of strings"]),
    ],
)
def test_bad_sidecar_values_name_the_file_and_field(tmp_path, role, edit, fragments):
    paths = dict(zip(("generator", "classifier"), write_models(tmp_path), strict=True))
    _rewrite_sidecar(paths[role], edit)
    load = load_generator if role == "generator" else load_classifier
    with pytest.raises(CheckpointError) as info:
        load(paths[role])
    message = str(info.value)
    assert "\n" not in message and all(f in message for f in fragments), message


def test_text_files_that_are_not_utf8_are_one_line_errors(tmp_path):
    gpath, _ = write_models(tmp_path)
    gpath.with_suffix(".json").write_bytes(b'{"z_dim": 16, "kind": "caf\xe9"}')  # Latin-1, not UTF-8
    with pytest.raises(
        CheckpointError, match=r"generator\.json: not UTF-8 text \(invalid byte at offset 26\)"
    ):
        load_generator(gpath)
    (tmp_path / "names.txt").write_bytes(b"Smiling\nCaf\xe9\n")
    with pytest.raises(AttributeNameError, match=r"names\.txt: not UTF-8 text"):
        load_attribute_names(str(tmp_path / "names.txt"))
