"""The library's exceptions, in one place. Torch-free, so any process may import it.

Every error a user can cause derives from :class:`DDPMError`; the ``ddpm`` command prints
such an error as one line and exits with status 2.
"""

from __future__ import annotations


class DDPMError(Exception):
    """Base class of the errors this library raises on purpose."""


class UsageError(DDPMError):
    """A command-line usage error (a bad option, a missing file), reported in one line."""


class CheckpointError(DDPMError):
    """A checkpoint is missing, not a safetensors file, not one of this project's, or unsafe."""


class DatasetError(DDPMError):
    """A data set is missing, corrupt or not of the expected kind."""


class DistributedError(DDPMError):
    """A process of a distributed run cannot join it, or lost contact with another (which failed,
    hangs past the timeout or was stopped); reported in one line so the whole run ends, not hangs."""


class GenerationCancelled(DDPMError):
    """Generation stopped because it was asked to; ``step`` of ``total`` steps were done."""

    def __init__(self, step: int, total: int) -> None:
        super().__init__(f"generation cancelled after {step} of {total} steps")
        self.step = step
        self.total = total
