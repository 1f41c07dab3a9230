"""Checkpoints every rank writes into (sharded and DeepSpeed saves), staged and published together.

The strategy writes to a hidden staging directory that moves into place once every rank has finished
(:func:`fts_dist.checkpoint_io.publish`), so a kill mid-write leaves the previous checkpoint whole; a failure on any
rank is raised on every rank, so no rank waits in the next collective for a peer that gave up. Before it moves,
each rank records the size and CRC-32 of the files it owns, and rank 0 writes them into the directory's manifest
(:mod:`fts_dist.checkpoint_manifest`), which every load checks first. On nodes without a shared filesystem, each
view's leader (:mod:`fts_dist.adapters.checkpoint_sync`) publishes its own copy: the shards its ranks wrote.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from fts_dist.adapters.checkpoint_sync import CheckpointViews
from fts_dist.adapters.strategy_hooks import wrap_lightning_method
from fts_dist.checkpoint_io import publish, staging_path, tidy_checkpoint_directory
from fts_dist.checkpoint_manifest import FileRecord, record_owned_files, write_directory_manifest
from fts_dist.coordinator import Comm


def stage_checkpoint_directories(strategy: pl.strategies.Strategy, comm: Comm, views: CheckpointViews) -> None:
    """Have ``strategy`` write each checkpoint that every rank writes into to a hidden staging directory, moved
    into place once all ranks have finished (a failure on any rank is raised on every rank)."""

    def staged(save: Callable[..., Any]) -> Callable[..., Any]:
        def save_checkpoint(checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
            target = Path(strategy.broadcast(str(filepath)))
            staging = staging_path(target)
            leads = views.of(target.parent).is_leader(comm.rank)  # rank 0 alone, where every rank sees one copy
            _together(comm, lambda: tidy_checkpoint_directory(target.parent), only=leads)
            _together(comm, lambda: save(checkpoint, staging, storage_options))  # every rank its shards
            owned: dict[str, FileRecord] = {}
            _together(comm, lambda: owned.update(record_owned_files(staging, comm.rank, comm.world_size)))
            records = {name: record for ranks in comm.all_gather(owned) for name, record in ranks.items()}
            _together(comm, lambda: write_directory_manifest(staging, records), only=comm.rank == 0)
            _together(comm, lambda: publish(staging, target), only=leads and staging.exists())

        return save_checkpoint

    wrap_lightning_method(strategy, "save_checkpoint", staged)


def _together(comm: Comm, work: Callable[[], Any], only: bool = True) -> None:
    """Collective: run ``work`` (on the ranks where ``only`` holds) and raise on every rank if it failed on any, so
    no rank waits in the next collective for a peer that gave up."""
    failure = None
    if only:
        try:
            work()
        except Exception as err:
            failure = f"{type(err).__name__}: {err}"
    failed = [(rank, message) for rank, message in enumerate(comm.all_gather(failure)) if message]
    if failed:
        raise RuntimeError(f"fts_dist: writing a sharded checkpoint failed on rank {failed[0][0]}: {failed[0][1]}")
