"""One error family for everything a user can get wrong; the CLI prints its message as one line, exit 2."""


class ZsteerError(Exception):
    """A problem with the user's input (file, row, flag), described in one line that names it."""


class CheckpointError(ZsteerError):
    """A model file that cannot be loaded as the model it claims to be."""


class AttributeNameError(ZsteerError):
    """A target or attribute list that does not fit the classifier."""


class ExportError(ZsteerError):
    """An export that cannot be done or does not match PyTorch, or an onnxruntime setup that cannot run."""
