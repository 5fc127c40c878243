"""Why a row stopped: the int32 codes the kernels, engines and ONNX graphs write, and their names.

The codes cross every layer (a Triton kernel writes them, a Parquet column shows their names), so they
live here, at the base, rather than in any one of those layers.
"""

from __future__ import annotations

import numpy as np

# ACTIVE: still moving. STEPS_DONE: used its step budget (set by the edit loop, not the kernels).
ACTIVE, STEPS_DONE, TARGET_REACHED, MAX_SHIFT, NON_FINITE = 0, 1, 2, 3, 4
# NOT_REACHED: a direction edit's --until-prob search used its strength bound or evaluation budget
# without the target probability (jobs/direction_method.py); never written by the kernels.
NOT_REACHED = 5
# OUT_OF_RANGE: a finite step would have taken a value of z past MAX_ABS_Z (an absurd --lr, say); the
# update keeps the row's last z, as it does for a non-finite step.
OUT_OF_RANGE = 6
# Largest |z_i| a latent may have. Latents are drawn from N(0, I), where |z_i| > 10 has a chance below 1e-22
# per value; 1,000 standard deviations out no generator has seen anything like it, and far beyond (1e18
# and up) the float32 objective overflows. So an input row beyond it is rejected with its value
# (jobs/rows.py), and a step that would go beyond it stops the row (kernels/ascent_update.py): garbage is
# neither edited nor produced. Edited latents that drifted (tens of sigma) stay well inside.
MAX_ABS_Z = 1000.0
STATUS_NAMES = {
    ACTIVE: "active",
    STEPS_DONE: "steps",
    TARGET_REACHED: "target_reached",
    MAX_SHIFT: "max_shift",
    NON_FINITE: "non_finite",
    NOT_REACHED: "not_reached",
    OUT_OF_RANGE: "out_of_range",
}
# The stop_reason strings of a job's output, indexed by code.
_REASONS = np.array([STATUS_NAMES[i] for i in range(len(STATUS_NAMES))], dtype=object)


def stop_reasons(status: np.ndarray) -> np.ndarray:  # [n] int32 codes -> [n] object (str)
    """The stop_reason string of each code."""
    return _REASONS[np.asarray(status)]


def count_stop_reasons(status: np.ndarray) -> dict[str, int]:
    """{stop_reason: rows} over the codes present, counted from the integers (no string pass)."""
    counts = np.bincount(np.asarray(status, np.int64), minlength=len(STATUS_NAMES))
    return {STATUS_NAMES[i]: int(c) for i, c in enumerate(counts) if c}
