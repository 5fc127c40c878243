"""The Triton kernels on CPU, through Triton's interpreter, each check in a fresh process.

TRITON_INTERPRET=1 takes effect only if it is set before triton is first imported, and another test of
this session may have imported triton already. So the element-by-element comparisons
(tests/kernels/triton_checks.py) run in a child pytest with the variable set; the ahead-of-time
compilation for sm_80 / sm_90 and the torch.compile tracing of the operators
(tests/kernels/triton_compile_checks.py) and the no-interpreter error run in children with it removed.

Without triton these tests skip, unless ZSTEER_REQUIRE_TRITON=1 (`./dev test`, and so CI, sets it): then they fail, so that a
CI whose install lost triton cannot pass by skipping them.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKS = Path(__file__).resolve().parent / "kernels" / "triton_checks.py"
COMPILE_CHECKS = Path(__file__).resolve().parent / "kernels" / "triton_compile_checks.py"


@pytest.fixture(autouse=True)
def _needs_triton():
    if importlib.util.find_spec("triton") is not None:
        return
    if os.environ.get("ZSTEER_REQUIRE_TRITON") == "1":
        pytest.fail("ZSTEER_REQUIRE_TRITON=1 but triton is not installed (pip install -e '.[triton]')")
    pytest.skip("triton is not installed")


def _run(args: list[str], interpret: bool, timeout: float) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_triton_kernels_match_references_in_the_interpreter():
    proc = _run(["-m", "pytest", str(CHECKS), "-q", "-p", "no:cacheprovider"], interpret=True, timeout=900)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, f"triton checks failed (rc {proc.returncode}):\n{tail}"
    assert " passed" in tail and "skipped" not in tail, tail


@pytest.mark.slow
def test_triton_kernels_compile_for_nvidia_gpus():
    proc = _run(
        ["-m", "pytest", str(COMPILE_CHECKS), "-q", "-p", "no:cacheprovider"], interpret=False, timeout=600
    )
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, f"triton compile checks failed (rc {proc.returncode}):\n{tail}"
    assert " passed" in tail and "skipped" not in tail, tail


_NO_INTERPRETER = """
import torch
from zsteer.kernels.objective import objective
x = torch.zeros(3, 4)
try:
    objective(x, x, x, x, 0.1, impl="triton")
except RuntimeError as exc:
    print(exc)
else:
    print("NO ERROR")
"""


def test_triton_impl_on_cpu_without_the_interpreter_says_how_to_fix_it():
    proc = _run(["-c", _NO_INTERPRETER], interpret=False, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TRITON_INTERPRET=1" in proc.stdout and "impl='torch'" in proc.stdout, proc.stdout
