"""The one exception type fts_dist raises for bad configuration."""

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
