"""FTSCheckpoint: a ModelCheckpoint that knows at which fine-tuning depth each best checkpoint was taken."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import Tensor
from typing_extensions import override


class FTSCheckpoint(ModelCheckpoint):
    """A :class:`~pytorch_lightning.callbacks.ModelCheckpoint` that tracks the best checkpoint across phases.

    A best checkpoint that a newer one replaces is deleted at the start of the next epoch, not at once: until the
    next resume checkpoint is written, the last one still names it, and a run killed in between needs it to replay
    its transition.

    ``best_model_path`` is the checkpoint the :class:`~fts_dist.FinetuningScheduler` restores at a transition
    (``restore_best=True``); ``best_ckpt_depth`` is the depth at which it was written and ``current_ckpt_depth``
    the depth of the latest save. Both survive a restart. Saving happens after validation unless
    ``save_on_train_epoch_end=True``. Arguments are ModelCheckpoint's.

    Example::

        from pytorch_lightning import Trainer
        from fts_dist import FinetuningScheduler, FTSCheckpoint
        trainer = Trainer(callbacks=[FinetuningScheduler(), FTSCheckpoint(monitor="val_loss", save_last=True)])
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.current_ckpt_depth = 0
        self.best_ckpt_depth = 0
        self.depth_source: Callable[[], int] = lambda: 0
        self._pending_removals: list[str] = []

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._save_on_train_epoch_end is None:
            self._save_on_train_epoch_end = False  # checkpoint on validation metrics
        super().setup(trainer, pl_module, stage)

    @override
    def _save_topk_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, Tensor]) -> None:
        best_before = self.best_model_path
        self.current_ckpt_depth = self.depth_source()
        super()._save_topk_checkpoint(trainer, monitor_candidates)
        if self.best_model_path != best_before:
            self.best_ckpt_depth = self.current_ckpt_depth

    @override
    def _remove_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        # A replaced best checkpoint is still named by the resume checkpoints written up to now: a run killed before
        # the next one is written resumes there and restores it at its next transition. Delete it one epoch later.
        self._pending_removals.append(filepath)

    def _flush_removals(self, trainer: pl.Trainer) -> None:
        pending, self._pending_removals = self._pending_removals, []
        for filepath in pending:
            if filepath not in (self.best_model_path, self.last_model_path):
                super()._remove_checkpoint(trainer, filepath)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush_removals(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._flush_removals(trainer)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "current_ckpt_depth": self.current_ckpt_depth,
            "best_ckpt_depth": self.best_ckpt_depth,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.current_ckpt_depth = int(state_dict.get("current_ckpt_depth", 0))
        self.best_ckpt_depth = int(state_dict.get("best_ckpt_depth", 0))
