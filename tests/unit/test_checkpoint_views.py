"""Planning for nodes without a shared filesystem (``fts_dist.checkpoint_views``), and every rank resuming from
rank 0's checkpoint (``fts_dist.adapters.resume_path``)."""

from __future__ import annotations

from typing import Any

import pytest

from fts_dist.adapters.resume_path import rank_zeros_choice
from fts_dist.checkpoint_manifest import owner_of
from fts_dist.checkpoint_views import Transfer, Views, plan_transfers, transfer_bytes, views_from_sightings
from fts_dist.errors import FTSConfigError


def test_ranks_that_saw_the_same_probes_share_a_view_led_by_their_lowest_rank() -> None:
    assert views_from_sightings([{0, 1, 2, 3}] * 4) == Views((0, 0, 0, 0))
    assert Views((0, 0, 0, 0)).shared
    two_nodes = views_from_sightings([{0, 2}, {1, 3}, {0, 2}, {1, 3}])
    assert two_nodes.leaders == (0, 1, 0, 1) and not two_nodes.shared
    assert two_nodes.is_leader(1) and not two_nodes.is_leader(3) and two_nodes.leader_ranks() == [0, 1]
    assert two_nodes.describe() == "ranks [0, 2] see one copy; ranks [1, 3] see another"
    with pytest.raises(OSError, match="rank 1 cannot see the file it wrote"):
        views_from_sightings([{0, 1}, {0}])


def dcp_owner(relative: str) -> int:
    return owner_of(relative, 4)


def test_each_view_receives_what_it_lacks_from_the_rank_that_wrote_it() -> None:
    views = Views((0, 1, 0, 1))  # two nodes: ranks 0 and 2, ranks 1 and 3
    node0 = {"c/.metadata": (10, 1), "c/__0_0.distcp": (100, 1), "c/__2_0.distcp": (100, 2)}
    node1 = {"c/__1_0.distcp": (100, 3), "c/__3_0.distcp": (100, 4)}
    transfers = plan_transfers([node0, node1, node0, node1], views, dcp_owner)
    assert transfers == [
        Transfer("c/.metadata", 0, (1,)),
        Transfer("c/__0_0.distcp", 0, (1,)),
        Transfer("c/__1_0.distcp", 1, (0,)),
        Transfer("c/__2_0.distcp", 2, (1,)),  # from its writer, not from its view's leader
        Transfer("c/__3_0.distcp", 3, (0,)),
    ]
    assert transfer_bytes(transfers, [node0, node1, node0, node1]) == 410


def test_a_copy_that_matches_is_not_sent_again_and_a_stale_one_is() -> None:
    views = Views((0, 1))
    rank0 = {"last.ckpt": (500, 7), ".last.ckpt.fts-manifest.json": (40, 7)}
    assert plan_transfers([rank0, dict(rank0)], views, lambda _: 0) == []  # received before, unchanged since
    stale = {"last.ckpt": (500, 3), ".last.ckpt.fts-manifest.json": (40, 7)}  # same size, older
    assert plan_transfers([rank0, stale], views, lambda _: 0) == [Transfer("last.ckpt", 0, (1,))]
    assert plan_transfers([rank0, rank0], Views((0, 0)), lambda _: 0) == []  # one view: nothing to send


def test_a_file_its_writer_does_not_see_comes_from_the_lowest_rank_that_does() -> None:
    views = Views((0, 1, 2))
    listings: list[dict[str, tuple[int, int]]] = [{}, {"c/meta.pt": (5, 1)}, {"c/meta.pt": (5, 1)}]
    assert plan_transfers(listings, views, lambda _: 0) == [Transfer("c/meta.pt", 1, (0,))]


class GatheringComm:
    """What each rank would pass, gathered: ``all_gather`` returns the scripted values."""

    def __init__(self, values: list[Any]) -> None:
        self.values, self.rank, self.world_size = values, 0, len(values)

    def all_gather(self, obj: Any) -> list[Any]:
        return self.values


def test_every_rank_resumes_from_rank_0s_checkpoint_and_one_rank_0_lacks_is_refused() -> None:
    assert rank_zeros_choice(GatheringComm(["/c/last.ckpt", "/c/last.ckpt"]), "/c/last.ckpt") == "/c/last.ckpt"
    assert rank_zeros_choice(GatheringComm([None, None]), None) is None
    assert rank_zeros_choice(GatheringComm(["/c/last.ckpt", None]), "/c/last.ckpt") == "/c/last.ckpt"
    with pytest.raises(FTSConfigError, match=r"rank 1 would resume from '/d/last.ckpt', but rank 0 found no"):
        rank_zeros_choice(GatheringComm([None, "/d/last.ckpt"]), None)
