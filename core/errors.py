"""One error family for everything a user can get wrong; the CLI prints its message as one line, exit 2."""

import json


class ZsteerError(Exception):
    """A problem with the user's input (file, row, flag), described in one line that names it."""


class CheckpointError(ZsteerError):
    """A model file that cannot be loaded as the model it claims to be."""


class AttributeNameError(ZsteerError):
    """A target or attribute list that does not fit the classifier."""


class ExportError(ZsteerError):
    """An export that cannot be done or does not match PyTorch, or an onnxruntime setup that cannot run."""


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of ``exc``'s message, or its type's name when it has none, cut to ``limit`` characters
    when given: how a one-line error quotes another library's exception (pyarrow's run to several lines)."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]


def quoted_json(value, limit: int = 60) -> str:
    """A JSON value as a one-line error quotes it: ``json.dumps``, cut to ``limit`` characters with "..."."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fault_reason(exc: BaseException) -> str:
    """Why an operation failed, for a one-line error: an OSError's strerror ("Permission denied") where it
    has one, else ``first_line``."""
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else first_line(exc)
