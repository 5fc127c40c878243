"""The package installs as `zsteer` and imports from a plain (non-editable) install, outside the tree."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from zsteer.demo import ROLES

REPO = Path(__file__).resolve().parents[1]


def test_wheel_installs_and_imports_outside_the_source_tree(tmp_path):
    # Build from a copy: setuptools leaves a build/ folder beside the sources it builds.
    source = tmp_path / "source"
    shutil.copytree(
        REPO, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "runs", "*.egg-info")
    )
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("zsteer-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in (
        "pipeline/engine.py",
        "kernels/objective.py",
        "cli/main.py",
        "demo/command.py",
        "export/__init__.py",
    ):
        assert f"zsteer/{module}" in names
    for role in ROLES:  # the demo models are package data: `zsteer demo` needs them after an install
        for ext in ("safetensors", "json"):
            assert f"zsteer/demo/weights/{role}.{ext}" in names, (role, ext)
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    # -S skips site-packages' .pth files, so the editable install's import hook is not in play;
    # the dependencies come from site-packages added by hand, zsteer only from the plain install.
    # Then the default models load from the installed package: what `zsteer edit` without
    # --generator/--classifier and `zsteer demo` use.
    code = "\n".join(
        [
            "import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]",
            "import zsteer.pipeline.engine, zsteer.cli.main, zsteer.kernels.objective",
            "from zsteer.pipeline.loading import ModelSource, demo_model_paths, load_models",
            "from zsteer.pipeline.checkpoints import load_classifier",
            "gen, cls = load_models(ModelSource())",
            "judge = load_classifier(demo_model_paths()['judge'])",
            "assert len(cls.attributes) == len(judge.attributes) == 8, (cls.attributes, judge.attributes)",
            "print(zsteer.pipeline.engine.__file__)",
            "print(gen.path, cls.path, judge.path, sep='\\n')",
        ]
    )
    site = sysconfig.get_paths()["purelib"]
    out = subprocess.run(
        [sys.executable, "-S", "-c", code, str(target), site],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
    )
    printed = out.stdout.strip().splitlines()
    assert len(printed) == 4 and all(path.startswith(str(target)) for path in printed), printed
