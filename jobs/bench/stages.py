"""Time per stage of an edit, by wrapping an editor's own methods for a separate, untimed-for-throughput pass.

The engine's hot path has no timing code in it: ``instrument(editor, timer)`` puts timing wrappers on the
editor instance (instance attributes shadow the class's methods) and takes them off again, so the
throughput windows run the editor exactly as a job does, and this pass runs afterwards. Times are
exclusive: a stage's seconds leave out the stages nested in it.

    update             AscentLoop.step_rows minus the gradient step in it (the fused update, padding)
    input_gradient     the engine's forward + VJP (``_step``) minus the two forwards in it
    generator_forward  EditNet.generate inside a step
    classifier_forward EditNet.classify inside a step
    forward_and_gradient  the compiled step as a whole (hooks cannot see inside a compiled graph)
    step               a runtime's whole step where it cannot be split (onnxruntime's step graph)
    render             the forward after the last step (generator, classifier, uint8 pixels)

On CUDA the timer synchronises at each stage boundary, which is why this pass is apart from the windows.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable

STAGES = (
    "host_to_device",
    "generator_forward",
    "classifier_forward",
    "input_gradient",
    "forward_and_gradient",
    "step",
    "update",
    "render",
    "png_encode",
    "parquet_write",
)


class StageTimer:
    """Exclusive seconds per named stage; ``sync()`` (CUDA) runs at every boundary."""

    def __init__(
        self, sync: Callable[[], None] | None = None, clock: Callable[[], float] = time.perf_counter
    ):
        self.seconds: Counter = Counter()
        self._sync = sync or (lambda: None)
        self._clock = clock
        self._stack: list[list] = []  # [name, start, seconds of nested stages]

    @property
    def current(self) -> str | None:
        return self._stack[-1][0] if self._stack else None

    @contextlib.contextmanager
    def stage(self, name: str):
        self._sync()
        frame = [name, self._clock(), 0.0]
        self._stack.append(frame)
        try:
            yield
        finally:
            self._sync()
            total = self._clock() - frame[1]
            self._stack.pop()
            self.seconds[name] += total - frame[2]
            if self._stack:
                self._stack[-1][2] += total

    def wrap(self, fn: Callable, name: str, inside: str | None = None) -> Callable:
        """``fn`` timed as ``name``; with ``inside``, only while that stage is the current one."""

        def timed(*args, **kwargs):
            if inside is not None and self.current != inside:
                return fn(*args, **kwargs)
            with self.stage(name):
                return fn(*args, **kwargs)

        return timed


def _shadow(obj, name: str, value, undo: list) -> None:
    """Set an instance attribute over a class attribute, remembering how to remove it."""
    had = name in vars(obj)
    old = vars(obj).get(name)
    obj.__dict__[name] = value  # nn.Module too: a plain function is an ordinary instance attribute there
    undo.append((obj, name, had, old))


@contextlib.contextmanager
def instrument(editor, timer: StageTimer):
    """Stage timing wrappers on ``editor`` (an AscentLoop runtime or any Editor) for the duration."""
    undo: list = []
    try:
        if hasattr(editor, "step_rows"):
            split = hasattr(editor, "_step") and hasattr(editor, "net")
            compiled = bool(getattr(editor, "compiled", False))
            _shadow(editor, "step_rows", timer.wrap(editor.step_rows, "update" if split else "step"), undo)
            if split:
                inner = "forward_and_gradient" if compiled else "input_gradient"
                _shadow(editor, "_step", timer.wrap(editor._step, inner, inside="update"), undo)
                if not compiled:
                    net = editor.net
                    _shadow(
                        net, "generate", timer.wrap(net.generate, "generator_forward", inside=inner), undo
                    )
                    _shadow(
                        net, "classify", timer.wrap(net.classify, "classifier_forward", inside=inner), undo
                    )
        if hasattr(editor, "forward"):
            _shadow(editor, "forward", timer.wrap(editor.forward, "render"), undo)
        yield timer
    finally:
        for obj, name, had, old in reversed(undo):
            if had:
                obj.__dict__[name] = old
            else:
                del obj.__dict__[name]
