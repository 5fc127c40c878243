"""benchmarks/gpu_check.sh on a machine without a GPU: its arguments, its dry run, and that it stops at the
first broken step with that step's log (here the CUDA check, which the CPU torch of this venv fails)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
STEPS = ["install", "cuda", "kernels", "jobs", "bench"]


def run(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def _steps(stdout: str) -> list[str]:
    return [line.split()[1] for line in stdout.splitlines() if line[:1].isdigit()]


def test_the_dry_run_prints_the_steps_in_order_within_eight_minutes(tmp_path):
    proc = run("--dry-run", "--out", tmp_path / "out", "--rows", 64)
    assert proc.returncode == 0, proc.stderr
    assert _steps(proc.stdout) == STEPS
    text = proc.stdout
    assert "--impl $impl" in text and "for impl in triton torch" in text and "compare_jobs.py" in text
    assert (
        "env -u TRITON_INTERPRET ZSTEER_REQUIRE_CUDA=1" in text and "tests/kernels/triton_checks.py" in text
    )
    assert "--backend torch,torch-compiled,onnxruntime" in text and "--device cuda" in text
    assert ".[gpu,triton,test]" in text and "torch==2.13.*" in text and "--n 64" in text
    total = int(text.split("total timeout: ")[1].split()[0])
    assert total < 8 * 60
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
    skipped = run("--dry-run", "--skip-install", "--venv", tmp_path / "env")
    assert _steps(skipped.stdout) == STEPS[1:] and f"{tmp_path}/env/bin/zsteer" in skipped.stdout


def test_bad_arguments_are_refused_with_the_usage():
    for args in (["--bogus"], ["--out"], ["--rows", "0"], ["--venv", "--dry-run"]):
        proc = run(*args)
        assert proc.returncode == 2, args
        assert proc.stderr.startswith("gpu_check.sh: error: ") and "--dry-run" in proc.stderr, proc.stderr
    assert run("--help").returncode == 0


def test_it_stops_at_the_first_broken_step_and_shows_its_log(tmp_path):
    venv = Path(sys.executable).parent.parent  # this CPU-only venv: the CUDA check must fail
    out = tmp_path / "check"
    proc = run("--skip-install", "--venv", venv, "--out", out, timeout=300)
    assert proc.returncode == 1, proc.stdout
    assert "cuda     ... FAILED (exit 1" in proc.stdout and "torch sees no CUDA device" in proc.stdout
    assert "kernels" not in proc.stdout  # nothing after the broken step ran
    assert (out / "summary.txt").read_text().startswith("cuda: FAILED")
    assert sorted(p.name for p in out.iterdir()) == ["1-cuda.log", "summary.txt"]
