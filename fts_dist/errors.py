"""The exceptions fts_dist raises: bad configuration before training, and a transition or load that cannot go on."""

from __future__ import annotations


class FTSConfigError(ValueError):
    """A schedule, callback or strategy configuration fts_dist cannot run.

    Raised before any training step. The message names the phase, the key, parameter, pattern or file at fault,
    and what to do about it. ``phase`` and ``key`` carry the same facts for programs that catch it.
    """

    def __init__(self, message: str, *, phase: int | None = None, key: str | None = None) -> None:
        super().__init__(message)
        self.phase = phase
        self.key = key


class CheckpointRestoreError(RuntimeError):
    """The checkpoint chosen for a phase transition or a resume could not be read or applied; names the rank and
    the file. Raised on every rank, before any collective load touches a checkpoint that failed its checks."""


class ReplicaMismatchError(RuntimeError):
    """Ranks disagree on the trainable set or the weights after a transition; names the parameters."""


class ExportError(ValueError):
    """A checkpoint cannot be exported as asked: names what is missing (a parameter or buffer the model has and the
    checkpoint lacks), clashes or is unreadable, and what to do."""
