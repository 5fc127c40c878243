"""Option values several commands parse alike: lists of integers, and the configs' own checks as user errors.

A leaf module (click and zsteer.core only), like ``paths``, so that no command imports another.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from zsteer.core.errors import ZsteerError


def split_values(given: tuple[str, ...]) -> list[str]:
    """Repeated and/or comma-separated values, in order: ("8,128", "512") -> ["8", "128", "512"]."""
    return [v.strip() for value in given for v in value.split(",") if v.strip()]


def int_values(given: tuple[str, ...], flag: str, minimum: int = 1) -> tuple[int, ...]:
    """The integers of ``given`` (repeated and/or comma-separated), each at least ``minimum``, without
    repeats; a value that is not such an integer is a one-line error naming ``flag`` and the value."""
    what = "positive integers" if minimum == 1 else f"integers >= {minimum}"
    numbers = []
    for item in split_values(given):
        try:
            number = int(item)
        except ValueError:
            number = None
        if number is None or number < minimum:
            raise ZsteerError(f"{flag}: expected a comma-separated list of {what}, got {item!r}")
        numbers.append(number)
    return tuple(dict.fromkeys(numbers))


@contextmanager
def settings_checked() -> Iterator[None]:
    """Turn a config dataclass's own check (its ``__post_init__`` raising ValueError: an infinite penalty,
    a NaN step size, what click's types do not cover) into the one-line user error ``invalid settings``.

    Wrap only the building of configs: a ValueError from running a job is a bug, not the user's input.
    """
    try:
        yield
    except ValueError as exc:
        raise ZsteerError(f"invalid settings: {exc}") from None
