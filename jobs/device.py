"""The job's torch device: parsed by the runner, and whether CUDA can be seen where the editor is built.

Where the editor runs is the executor's choice, so the check is too (``Executor.check``): the local
executor asks this machine; the Ray executor asks its cluster for GPUs, and each worker asks its own
node when it starts. The driver itself never needs the device: it loads the models on the CPU.
"""

from __future__ import annotations

import torch

from zsteer.core.errors import ZsteerError


def parse_device(device: str) -> torch.device:
    """``device`` as a torch.device, or a one-line error naming --device."""
    try:
        return torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ZsteerError(f"--device {device}: {exc}") from None


def require_device(device: str, where: str) -> None:
    """Refuse, in one line, a CUDA ``device`` this process cannot use; ``where`` says which process."""
    if parse_device(device).type == "cuda" and not torch.cuda.is_available():
        raise ZsteerError(f"--device {device}: CUDA is not available {where}")
