"""The tiny communication interface the coordinator needs, and its one-process implementation."""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Comm(Protocol):
    """What the coordinator needs from the process group; adapters provide real implementations."""

    @property
    def rank(self) -> int: ...

    @property
    def world_size(self) -> int: ...

    def broadcast(self, obj: T) -> T:
        """Return rank 0's ``obj`` on every rank."""
        ...

    def all_gather(self, obj: Any) -> list[Any]:
        """Return every rank's ``obj``, indexed by rank, on every rank."""
        ...

    def barrier(self) -> None: ...


class LocalComm:
    """The single-process case: every collective is the identity."""

    rank = 0
    world_size = 1

    def broadcast(self, obj: T) -> T:
        return obj

    def all_gather(self, obj: Any) -> list[Any]:
        return [obj]

    def barrier(self) -> None:
        return None
