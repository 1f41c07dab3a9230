"""Which ranks see the same checkpoint directory, and which files each view must receive before a load.

Ranks on nodes without a shared filesystem each see their own copy of a checkpoint directory: a file a rank writes
is on its node only. fts_dist probes each checkpoint directory once (every rank writes a file named for it and looks
for every other rank's, :mod:`fts_dist.adapters.checkpoint_sync`) and groups the ranks by what they saw: a *view*
is a set of ranks that see one copy, led by its lowest rank. The view leaders publish staged checkpoints and remove
old ones on their copy, and before any load, each view receives the files of the checkpoint it lacks, each from the
rank that wrote it.

Nothing here communicates or touches a file: this is the planning, tested alone.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

FileState = tuple[int, int]  # size in bytes, modification time in ns: a received copy keeps its source's
Listing = Mapping[str, FileState]  # a checkpoint's files as one rank sees them, by path relative to its parent


@dataclass(frozen=True)
class Views:
    """``leaders[r]``: the lowest rank that sees the same copy of a directory as rank ``r``."""

    leaders: tuple[int, ...]

    @property
    def shared(self) -> bool:
        """Whether every rank sees one copy (a shared filesystem, or one node)."""
        return all(leader == 0 for leader in self.leaders)

    def is_leader(self, rank: int) -> bool:
        return self.leaders[rank] == rank

    def leader_ranks(self) -> list[int]:
        return sorted(set(self.leaders))

    def describe(self) -> str:
        """``ranks [0, 2] see one copy, ranks [1, 3] another``."""
        groups = [[r for r, leader in enumerate(self.leaders) if leader == lead] for lead in self.leader_ranks()]
        return "; ".join(f"ranks {group} see {'one copy' if i == 0 else 'another'}" for i, group in enumerate(groups))


def views_from_sightings(sightings: Sequence[Collection[int]]) -> Views:
    """The views, from what each rank saw: ``sightings[r]`` holds the ranks whose probe file rank ``r`` found
    (itself included). Ranks that saw the same set share a view; a rank that missed its own probe is an error."""
    for rank, seen in enumerate(sightings):
        if rank not in seen:
            raise OSError(f"rank {rank} cannot see the file it wrote in the checkpoint directory")
    first_with: dict[frozenset[int], int] = {}
    leaders = []
    for rank, seen in enumerate(sightings):
        leaders.append(first_with.setdefault(frozenset(seen), rank))
    return Views(tuple(leaders))


@dataclass(frozen=True)
class Transfer:
    """``relative`` goes from rank ``source`` to the leaders ``receivers`` (each writes it into its view)."""

    relative: str
    source: int
    receivers: tuple[int, ...]


def plan_transfers(listings: Sequence[Listing], views: Views, owner: Callable[[str], int]) -> list[Transfer]:
    """What each view lacks of a checkpoint, and who sends it.

    ``listings[r]`` is the checkpoint as rank ``r`` sees it. A file comes from its ``owner`` (the rank that wrote it)
    when the owner sees it, else from the lowest rank that does; every other view whose copy is missing or differs
    (size or modification time) receives it, through its leader.
    """
    transfers = []
    for relative in sorted({name for listing in listings for name in listing}):
        holders = [rank for rank, listing in enumerate(listings) if relative in listing]
        writer = owner(relative)
        source = writer if writer in holders else holders[0]
        wanted = listings[source][relative]
        receivers = tuple(
            leader
            for leader in views.leader_ranks()
            if leader != views.leaders[source] and listings[leader].get(relative) != wanted
        )
        if receivers:
            transfers.append(Transfer(relative, source, receivers))
    return transfers


def transfer_bytes(transfers: Sequence[Transfer], listings: Sequence[Listing]) -> int:
    """The bytes the transfers move, counting each receiver."""
    return sum(listings[t.source][t.relative][0] * len(t.receivers) for t in transfers)
