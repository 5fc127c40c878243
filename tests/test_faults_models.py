"""Fault injection on model files: non-finite weights, files that are not checkpoints, specs far larger
than the file (or memory)."""

from __future__ import annotations

import pytest
import torch
from jobkit import ATTRS, TINY_CLASSIFIER, TINY_GENERATOR
from safetensors.torch import load_file, save_file

from zsteer.core.errors import CheckpointError
from zsteer.pipeline.checkpoints import load_classifier, load_generator
from zsteer.pipeline.models import build_classifier, build_generator


@pytest.mark.parametrize("role", ["generator", "classifier"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e39])
@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_weights_that_are_not_finite_are_refused_at_load_naming_the_parameter(
    tmp_path, job_models, role, value, fmt
):
    source = job_models[0] if role == "generator" else job_models[1]
    state = load_file(source)
    name = sorted(k for k, v in state.items() if v.is_floating_point() and v.dim() > 1)[-1]
    state[name] = state[name].double()
    state[name].view(-1)[3] = value  # 1e39: finite in float64, inf as float32
    if fmt == "safetensors":
        path = tmp_path / f"{role}.safetensors"
        save_file(state, path)
        path.with_suffix(".json").write_text(source.with_suffix(".json").read_text())
    else:
        path = tmp_path / f"{role}.pth"
        torch.save({"gen" if role == "generator" else "classifier": state}, path)
    load = load_generator if role == "generator" else load_classifier
    kw = {"attributes": ATTRS} if role == "classifier" and fmt == "pth" else {}
    with pytest.raises(CheckpointError) as info:
        load(path, **kw)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: {role} parameter {name!r} holds 1 NaN or Inf")


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"id,z\n1,2\n", "it looks like text ('id,z'"),
        (b"", "it is empty"),
        (bytes(range(200, 256)), "it starts with bytes c8 c9"),
        (b"PK\x03\x04" + b"\0" * 40, "a damaged PyTorch checkpoint"),
    ],
)
def test_a_file_that_is_not_a_checkpoint_says_what_it_is_and_what_was_expected(tmp_path, content, fragment):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_generator(path)
    message = str(info.value)
    assert "\n" not in message and fragment in message, message
    assert "expected weights saved by torch.save" in message
    assert "pop from empty list" not in message


@pytest.mark.parametrize("hidden", [10**8, 5])
def test_a_spec_that_does_not_fit_the_file_allocates_nothing_and_names_the_shape(job_models, hidden):
    """--gen-hidden-dim 100000000 used to allocate terabytes and die in a traceback."""
    with pytest.raises(CheckpointError) as info:
        load_generator(job_models[0], hidden_dim=hidden)
    message = str(info.value)
    assert "\n" not in message and ("has shape" in message or "too large for memory" in message)
    assert "hidden_dim" in message or "--gen-hidden-dim" in message


def test_a_model_too_large_for_memory_is_one_line(tmp_path, monkeypatch):
    """The file and the spec agree, and memory still runs out when the module is built."""
    from zsteer.pipeline import checkpoints

    gpath = tmp_path / "g.pth"
    torch.save({"gen": build_generator(TINY_GENERATOR).state_dict()}, gpath)
    real = checkpoints.build_generator

    def out_of_memory(spec):
        if torch.get_default_device().type != "meta":
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 10 bytes")
        return real(spec)

    monkeypatch.setattr(checkpoints, "build_generator", out_of_memory)
    with pytest.raises(CheckpointError, match=r"g\.pth: a generator of this size .* is too large for memory"):
        load_generator(gpath)
    assert build_classifier(TINY_CLASSIFIER) is not None


@pytest.mark.parametrize("flags", [["--lr", "1e39"], ["--penalty", "1e39"]])
def test_settings_past_float32_are_refused_in_one_line(tmp_path, job_models, flags):
    """They would be inf on the device, and every row would end non_finite."""
    from click.testing import CliRunner
    from jobkit import latents, write_manifest

    from zsteer.cli.main import main

    manifest = write_manifest(tmp_path / "m.parquet", {"id": list(range(4)), "z": latents(4)})
    args = ["edit", "-m", manifest, "--out", tmp_path / "job", "--generator", job_models[0], "--classifier",
            job_models[1], "-t", "attr1", "--images", "none", *flags]  # fmt: skip
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert f"{flags[0][2:]} must be" in result.stderr and "float32" in result.stderr


@pytest.mark.parametrize("role", ["generator", "classifier"])
def test_finite_weights_that_still_give_nan_are_refused_at_load(tmp_path, job_models, role):
    """A BatchNorm running_var below 0: every weight is finite, every output NaN."""
    source = job_models[0] if role == "generator" else job_models[1]
    state = load_file(source)
    name = next(k for k in sorted(state) if k.endswith("running_var"))
    state[name] = -state[name]
    path = tmp_path / f"{role}.safetensors"
    save_file(state, path)
    path.with_suffix(".json").write_text(source.with_suffix(".json").read_text())
    load = load_generator if role == "generator" else load_classifier
    with pytest.raises(
        CheckpointError, match=rf"{role}\.safetensors: the {role} gives NaN or Inf for a test input"
    ):
        load(path)
