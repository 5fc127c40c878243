"""The settings of an edit: how z moves (identity of a job) and where the engine runs (speed only)."""

from __future__ import annotations

import math
from dataclasses import dataclass

# Most steps a job may ask for: step counters are int32 on the device, and a budget this large already
# takes days per batch.
MAX_STEPS = 1_000_000
# Settings are float32 on the device: a value past its range (1e39) becomes inf there, and every row
# ends non_finite.
FLOAT32_MAX = 3.4028234663852886e38


@dataclass(frozen=True)
class AscentConfig:
    """How z moves. Recorded in job.json: a resume with other values is refused."""

    # Gradient steps per row (a row may have a smaller budget of its own).
    steps: int = 10
    # Step size; None = the mode's default (1/steps in lab-compatible mode, as the notebook's `weight`).
    lr: float | None = None
    # lambda: weight of ||other logits - original other logits||, which keeps other attributes in place.
    penalty: float = 0.1
    # Take unit-length steps along the gradient: step size then means distance in z per step.
    normalize: bool = False
    # Cap on ||z - z0||: a row that reaches it is put back on the sphere and stops. None = no cap.
    max_shift: float | None = None
    # Stop a row once its targets pass this probability (sigmoid of the logit). None = never.
    stop_at_prob: float | None = None
    # Reproduce the notebook number for number (accumulated gradient, batch-mean scaling).
    lab_compat: bool = False
    # The notebook batch size n whose 1/n gradient scaling lab-compatible mode reproduces.
    lab_batch: int = 8

    def __post_init__(self):
        if not 0 <= self.steps <= MAX_STEPS:
            raise ValueError(f"steps must be in [0, {MAX_STEPS}], got {self.steps}")
        if self.lr is not None and not (math.isfinite(self.lr) and 0 < self.lr <= FLOAT32_MAX):
            raise ValueError(f"lr must be a positive float32 (at most {FLOAT32_MAX:.3g}), got {self.lr}")
        if not (math.isfinite(self.penalty) and 0 <= self.penalty <= FLOAT32_MAX):
            raise ValueError(
                f"penalty must be >= 0 and a float32 (at most {FLOAT32_MAX:.3g}), got {self.penalty}"
            )
        if self.max_shift is not None and not self.max_shift > 0:
            raise ValueError(f"max_shift must be > 0, got {self.max_shift}")
        if self.stop_at_prob is not None and not 0 < self.stop_at_prob < 1:
            raise ValueError(f"stop_at_prob must be in (0, 1), got {self.stop_at_prob}")
        if self.lab_batch < 1:
            raise ValueError(f"lab_batch must be >= 1, got {self.lab_batch}")

    @property
    def step_size(self) -> float:
        if self.lr is not None:
            return self.lr
        return 1.0 / max(self.steps, 1) if self.lab_compat else 0.1


# The arithmetic an engine's networks may run in (EngineConfig.precision).
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class EngineConfig:
    """Where and how the engine runs. Results do not depend on it (up to rounding), so it is not part of a
    job's identity, except ``precision``: bf16 moves results by more than rounding, and is recorded."""

    # Rows per forward/backward; the last batch and compacted batches are padded to fixed shapes.
    batch_size: int = 128
    # torch device string ("cpu", "cuda", "cuda:1").
    device: str = "cpu"
    # torch.compile the step: "auto" (CUDA only, see pipeline/compile.py), "on" or "off".
    compile: str = "auto"
    # Kernel implementation for the objective and the update: "auto" | "triton" | "torch".
    impl: str = "auto"
    # Fold BatchNorm into the convolutions and use channels_last activations: faster, same numbers up to
    # rounding. Lab-compatible mode never does, so that it matches the notebook to the last bit.
    fast_layout: bool = True
    # Arithmetic of the generator and classifier: "fp32" (the default) or "bf16", opt-in only: weights and
    # activations in bfloat16 with fp32 accumulation inside the convolutions (oneDNN; AMX or AVX512-BF16
    # on the CPU), while z, the logits, the objective and the update stay fp32. Faster where the hardware
    # has bf16, but edits drift from fp32 (measured and judged: README "Performance"), so it is part of a
    # job's identity. The torch backend on the course architectures only.
    precision: str = "fp32"

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
