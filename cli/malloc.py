"""glibc allocator settings for long CPU runs, which a process can only give itself by re-executing.

Told to keep large blocks instead of returning them to the OS after every step, glibc stops the
page-fault churn on the large activations, worth 20-40% more latents/s on CPU (docs/NOTES.md, "glibc
allocator settings").
"""

from __future__ import annotations

import os
import sys

MALLOC_ENV = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": "68719476736",
    "MALLOC_TOP_PAD_": "1073741824",
}


def reexec_with_malloc_settings(argv: list[str] | None = None) -> None:
    """Restart this process (same pid) with MALLOC_ENV unless it already has it; Linux only.

    ``argv``: the command line to restart with, default this interpreter and ``sys.argv``.
    """
    if sys.platform != "linux" or all(os.environ.get(k) == v for k, v in MALLOC_ENV.items()):
        return
    os.execve(sys.executable, argv or [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
