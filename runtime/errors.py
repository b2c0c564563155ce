"""The project's own errors: one base class, so the command-line tools can turn exactly these
(plus OSError and the image library's decode errors) into one-line messages and let any other
exception, a bug, keep its traceback."""

from __future__ import annotations


class SimpsonsError(Exception):
    """A problem the user can act on; its message is the one line they see."""


class ModelError(SimpsonsError):
    """The model file is missing, not ONNX, or not one of ours."""


class DeviceError(SimpsonsError):
    """The requested device cannot be used."""


class MetadataError(ModelError):
    """The model file (or its sidecar) lacks what a consumer needs to use it."""
