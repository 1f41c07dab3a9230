"""What the sharded adapters (FSDP2, FSDP1) share: collectives, staged checkpoint directories, shard-wise restore.

A sharded checkpoint is a directory every rank writes its shards into. Saves go to a hidden staging directory that
moves into place once every rank has finished (:func:`fts_dist.checkpoint_io.publish`), so a kill mid-write leaves
the previous checkpoint whole and nothing a resume would pick up. At a transition every rank reads only its own
shards through Lightning's loader (``torch.distributed.checkpoint``), after the optimizer has been cut back to the
groups the checkpoint holds; no rank builds the full model or the full optimizer state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch.distributed.checkpoint import CheckpointException, FileSystemReader
from typing_extensions import override

from fts_dist.adapters.distributed import DistributedAdapter
from fts_dist.adapters.staged_saves import stage_checkpoint_directories
from fts_dist.optim.param_groups import lr_schedulers, release_state, truncate_param_groups

_OPTIMIZER_GROUPS_KEY = "optimizer_0.param_groups."  # how Lightning's sharded saves name the first optimizer's groups


class ShardedAdapter(DistributedAdapter):
    """The base of the FSDP2 and FSDP1 adapters (not registered for any strategy by itself)."""

    def warn_if_checkpoints_are_whole(self, whole: bool, setting: str) -> None:
        """A whole-model checkpoint is gathered on rank 0 at every save and read whole by every rank at every
        transition and resume; the sharded default keeps both per rank."""
        if whole:
            rank_zero_warn(
                f"fts_dist: {type(self.strategy).__name__}({setting}) writes whole-model checkpoints: each restore "
                "at a transition reads the whole file on every rank. Keep the sharded default to read only each "
                "rank's shards."
            )

    @override
    def prepare_checkpointing(self, trainer: pl.Trainer, before_resume_load: Callable[[dict[str, Any]], None]) -> None:
        super().prepare_checkpointing(trainer, before_resume_load)
        stage_checkpoint_directories(self.strategy, self.comm, self.checkpoint_views)

    @override
    def load_checkpoint_state(self, path: str, phases: Sequence[Sequence[str]], trainer: pl.Trainer) -> None:
        groups = self.group_count(len(phases) - 1)
        check_saved_group_count(Path(path), groups)
        truncate_param_groups(trainer.optimizers[0], groups, lr_schedulers(trainer))
        release_state(trainer.optimizers[0])  # Lightning's loader builds the loaded state beside the live one
        try:
            self._load_strategy_checkpoint(path)  # weights and optimizer state, each rank its own shards
        except CheckpointException as err:  # a BaseException: make it an ordinary error the transition reports
            raise RuntimeError(str(err)) from err


def check_saved_group_count(path: Path, groups: int) -> None:
    """Raise before anything changes when the checkpoint at ``path`` does not hold ``groups`` optimizer groups."""
    saved_groups = _saved_group_count(path)
    if saved_groups != groups:
        raise ValueError(f"it holds {saved_groups} optimizer group(s) where this schedule expects {groups}")


def _saved_group_count(path: Path) -> int:
    """Optimizer groups in a Lightning checkpoint: from a sharded directory's metadata, or a whole file's state."""
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at '{path}'")
    if path.is_dir():
        keys = FileSystemReader(str(path)).read_metadata().state_dict_metadata
        return len(
            {key[len(_OPTIMIZER_GROUPS_KEY) :].split(".")[0] for key in keys if key.startswith(_OPTIMIZER_GROUPS_KEY)}
        )
    checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    return len(checkpoint["optimizer_states"][0]["param_groups"])
