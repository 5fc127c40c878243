"""Where a benchmark ran: versions, CPU, devices, threads and the allocator settings, for the report."""

from __future__ import annotations

import importlib.metadata
import os
import platform

import torch

# What a reader of a report needs to reproduce it; missing packages are recorded as None.
PACKAGES = ("zsteer", "torch", "onnxruntime", "onnxruntime-gpu", "triton", "numpy", "pyarrow")
# glibc allocator variables (cli/malloc.py sets them for long CPU runs): they change CPU throughput.
MALLOC_VARS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(dev)
    return cpu_name() if dev.type == "cpu" else dev.type


def environment(devices: list[str]) -> dict:
    """Versions, machine, devices and thread settings of this process."""
    return {
        "versions": {name: _version(name) for name in PACKAGES} | {"python": platform.python_version()},
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "devices": {d: _safe_device_name(d) for d in devices},
        "cuda": torch.version.cuda,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "malloc": {k: os.environ.get(k) for k in MALLOC_VARS},
    }


def _safe_device_name(device: str) -> str:
    try:
        return device_name(device)
    except (RuntimeError, ValueError) as exc:
        return f"unavailable ({exc})"
