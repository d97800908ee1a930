"""One error hierarchy for every surface (CLI, Python API, server).

Each error renders as one actionable line naming the file (when there is one)
and the problem; the CLI prints exactly that line and exits non-zero.
"""

from __future__ import annotations

import os


class EdgeError(Exception):
    """Base class. `str(err)` is the one line shown to a user."""

    exit_code = 1

    def __init__(self, problem: str, path: str | os.PathLike[str] | None = None):
        self.problem = problem
        self.path = os.fspath(path) if path is not None else None
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class InputError(EdgeError):
    """Something the user handed us is wrong (file, flag, request)."""

    exit_code = 2


class CheckpointError(InputError):
    """A Hugging Face checkpoint is missing, truncated or inconsistent."""


class UnsupportedModelError(InputError):
    """The checkpoint or GGUF is of a family or architecture we do not support."""


class GGUFError(InputError):
    """A GGUF file is unreadable or lacks what we need."""


class MismatchError(InputError):
    """A text GGUF and an mmproj GGUF do not belong together."""


class MediaError(InputError):
    """An image or video cannot be used (corrupt, too large, unsupported codec)."""


class ContextOverflowError(InputError):
    """A prompt does not fit in the context window."""


class OutputError(EdgeError):
    """An output cannot be written (unwritable directory, full disk)."""


class Interrupted(EdgeError):
    """The user interrupted a long operation; partial outputs were removed."""

    exit_code = 130


class RuntimeFailure(EdgeError):
    """llama.cpp reported a failure we could not have checked for up front."""


class MissingExtraError(EdgeError):
    """An optional dependency group (a pip extra) is not installed; the message names it."""

    exit_code = 2


class Cancelled(RuntimeFailure):
    """llama.cpp stopped a decode because cancel() was called (its abort callback fired)."""
