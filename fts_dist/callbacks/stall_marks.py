"""The training thread's progress marks for :mod:`fts_dist.runtime.stalls`, and the watchdog's start and stop.

:class:`FinetuningScheduler` adds this callback when ``stall_timeout`` is set: every step, backward, optimizer step,
validation batch and checkpoint save is a mark (phase transitions mark their own steps).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from typing_extensions import override

from fts_dist.runtime.stalls import StallWatchdog, mark, process_group_store


class StallMarks(Callback):
    """Marks progress at each point of the loop and runs a :class:`StallWatchdog` for the fit."""

    def __init__(self, timeout: float, phase: Callable[[], int]) -> None:
        self.timeout = timeout
        self.phase = phase
        self.watchdog: StallWatchdog | None = None

    def _mark(self, trainer: pl.Trainer, where: str) -> None:
        mark(where, step=trainer.global_step, phase=self.phase())

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.watchdog = StallWatchdog(process_group_store(), trainer.global_rank, trainer.world_size, self.timeout)
        self.watchdog.start()

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._mark(trainer, "in a training step (forward)")

    @override
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Any) -> None:
        self._mark(trainer, "in backward")

    @override
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self._mark(trainer, "in an optimizer step")

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._mark(trainer, "after a training step")

    @override
    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._mark(trainer, "in validation")

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mark(trainer, "after validation")

    @override
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: Any) -> None:
        self._mark(trainer, "saving a checkpoint")

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._stop()

    def _stop(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
            self.watchdog = None
