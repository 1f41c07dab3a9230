"""Every rank resumes from the checkpoint rank 0 chose.

Lightning resolves ``ckpt_path`` (``"last"`` above all) on each rank, from the files that rank sees. On nodes
without a shared filesystem rank 0 may find the last checkpoint where another node finds none, or an older copy:
the ranks would load different states, or one would wait in a load the others never start. Right before Lightning
loads, every rank takes rank 0's choice (the checkpoint is then sent to the nodes that lack it,
:mod:`fts_dist.adapters.checkpoint_sync`); a checkpoint that another rank chose but rank 0 has none of is refused
before step 0.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

from fts_dist.coordinator import Comm
from fts_dist.errors import FTSConfigError
from fts_dist.log import rank_zero_info


def agree_on_resume_path(trainer: pl.Trainer, comm: Comm) -> None:
    """Make ``trainer`` resume every rank from rank 0's ``ckpt_path`` (a collective at the resume's start)."""
    if comm.world_size == 1:
        return
    connector = trainer._checkpoint_connector
    own = type(connector).resume_start.__get__(connector, type(connector))  # not a wrapper a previous fit left

    def resume_start(checkpoint_path: Any = None, *args: Any, **kwargs: Any) -> None:
        if trainer.state.fn == "fit":
            checkpoint_path = rank_zeros_choice(comm, checkpoint_path)
        own(checkpoint_path, *args, **kwargs)

    connector.resume_start = resume_start  # type: ignore[method-assign]


def rank_zeros_choice(comm: Comm, path: Any) -> str | None:
    """Collective: rank 0's checkpoint path, on every rank; :class:`FTSConfigError` when rank 0 has none and
    another rank has one."""
    choices = comm.all_gather(str(path) if path else None)
    chosen = choices[0]
    others = [(rank, choice) for rank, choice in enumerate(choices) if choice != chosen]
    if chosen is None and others:
        rank, choice = others[0]
        raise FTSConfigError(
            f"fts_dist: rank {rank} would resume from '{choice}', but rank 0 found no checkpoint to resume from. "
            "Every rank resumes from rank 0's choice: on nodes without a shared filesystem, keep the checkpoint on "
            "rank 0's node (or pass its path there as `ckpt_path`), or put the checkpoint directory on a "
            "filesystem every node shares."
        )
    if others:
        rank, choice = others[0]
        rank_zero_info(f"fts_dist: every rank resumes from rank 0's '{chosen}' (rank {rank} had found {choice!r}).")
    return chosen
