"""Work done once, on rank 0, whose result (or configuration error) every rank receives."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from fts_dist.coordinator.comm import Comm
from fts_dist.errors import FTSConfigError

T = TypeVar("T")


def run_on_rank_zero(work: Callable[[], T], comm: Comm) -> T:
    """Collective: rank 0 runs ``work`` and broadcasts its result. An :class:`FTSConfigError` it raises is raised
    on every rank, so no rank waits for a peer that gave up.

    Example::

        >>> from fts_dist.coordinator import LocalComm
        >>> run_on_rank_zero(lambda: 42, LocalComm())
        42
    """
    outcome: T | FTSConfigError | None = None
    if comm.rank == 0:
        try:
            outcome = work()
        except FTSConfigError as err:
            outcome = err
    outcome = comm.broadcast(outcome)
    if isinstance(outcome, FTSConfigError):
        raise FTSConfigError(str(outcome), phase=outcome.phase, key=outcome.key)
    return outcome  # type: ignore[return-value]
