"""Each rank's random-number generators and data-loader position, in every checkpoint, back on the same rank at a
resume: what a bit-exact resume needs beyond Lightning's own checkpoint.

Lightning saves rank 0's callback and loader state only, and no generator state at all, so a resumed run with
dropout, random augmentation or a per-rank stateful sampler is not the uninterrupted one. At each save every rank
contributes :func:`fts_dist.runtime.rng.capture_rng` and its loaders' ``state_dict`` (one small object gather, at
a save every rank makes anyway); at a resume each rank takes its own entry back. A checkpoint saved by a different
number of ranks is resumed with a warning saying what is not restored.

When the generators are set back: at the load, so that the iterator the resumed loop creates draws what the
uninterrupted run's next epoch drew; after a stop in the middle of an epoch (where the uninterrupted run created no
iterator), once more just before the first batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_warn
from typing_extensions import override

from fts_dist.coordinator import Comm
from fts_dist.runtime.rng import capture_rng, restore_rng

CHECKPOINT_KEY = "fts_dist_rank_states"


class RankStates(Callback):
    """Saves every rank's generator states and loader positions; restores this rank's at a resume."""

    def __init__(self, comm: Callable[[], Comm]) -> None:
        self.comm = comm
        self._pending: dict[str, Any] | None = None  # generator states to set again before the first batch

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        mine = {"rng": _portable(capture_rng()), "loaders": _fit_loop_state(checkpoint).get("combined_loader")}
        checkpoint[CHECKPOINT_KEY] = {"world_size": trainer.world_size, "ranks": self.comm().all_gather(mine)}

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        saved = checkpoint.get(CHECKPOINT_KEY)
        if saved is None:
            return  # written without fts_dist's per-rank states: Lightning's own resume
        if saved["world_size"] != trainer.world_size:
            rank_zero_warn(
                f"fts_dist: the checkpoint was saved by {saved['world_size']} ranks and resumes on "
                f"{trainer.world_size}: the ranks' random-number generators and data-loader positions are not "
                "restored (each loader starts from rank 0's saved position, as in Lightning), so the run is not "
                "bit for bit the uninterrupted one."
            )
            return
        mine = saved["ranks"][trainer.global_rank]
        if mine["loaders"] is not None:
            _fit_loop_state(checkpoint)["combined_loader"] = mine["loaders"]  # read by Lightning's loop restore next
        self._pending = mine["rng"]
        missed = restore_rng(_native(mine["rng"]))
        if missed:
            rank_zero_warn(f"fts_dist: the checkpoint's {missed} generator states cannot be restored here.")

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._pending is None:
            return
        if batch_idx > 0:  # resumed in the middle of an epoch: undo the draws of the iterator the resume created
            restore_rng(_native(self._pending))
        self._pending = None


def _fit_loop_state(checkpoint: dict[str, Any]) -> dict[str, Any]:
    return checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {})


def _portable(states: dict[str, Any]) -> dict[str, Any]:
    """numpy's state as plain Python values, so that a ``weights_only`` load accepts the checkpoint."""
    if "numpy" in states:
        name, keys, position, has_gauss, cached = states["numpy"]
        states = {**states, "numpy": (name, keys.tolist(), int(position), int(has_gauss), float(cached))}
    return states


def _native(states: dict[str, Any]) -> dict[str, Any]:
    if "numpy" in states:
        import numpy

        name, keys, position, has_gauss, cached = states["numpy"]
        states = {**states, "numpy": (name, numpy.asarray(keys, dtype=numpy.uint32), position, has_gauss, cached)}
    return states
