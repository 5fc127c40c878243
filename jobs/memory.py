"""Peak memory of the current process, measured so that it means this process alone."""

from __future__ import annotations

import resource


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB: VmHWM, the high-water mark of its own address space.

    Not ru_maxrss: Linux carries that across exec, so a process forked from a big parent (a benchmark,
    a test runner, the job for its encoder processes) would report the parent's size as its own.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:  # not Linux
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux, bytes on macOS
