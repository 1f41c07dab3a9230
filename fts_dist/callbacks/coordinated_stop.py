"""The coordinated stop (:mod:`fts_dist.runtime.preemption`) in the training loop: signals set a flag, every step
boundary asks all ranks, and when one was signalled they save ``last.ckpt`` together and end the run.

:class:`FinetuningScheduler` adds this callback when ``stop_signals`` (or ``$FTS_DIST_STOP_SIGNALS``) names
signals. The boundaries are the end of each training step but an epoch's last, and the end of each epoch (after its
validation): never inside a transition (those run at an epoch's start), a validation or a save, so the checkpoint
is one Lightning resumes from exactly; ``trainer.fit(..., ckpt_path="last")`` (``fts-dist fit --ckpt_path last``)
does. A signal in a validation, a transition or a save waits for the next boundary; a second signal changes
nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from typing_extensions import override

from fts_dist.log import rank_zero_info
from fts_dist.runtime.preemption import PreemptedStop, StopRequest, any_rank, requeue_slurm_job


class CoordinatedStop(Callback):
    """Stops every rank at the same step boundary once any rank received one of ``signals``."""

    def __init__(self, signals: tuple[str, ...], checkpoint: ModelCheckpoint) -> None:
        self.request = StopRequest(signals)
        self.checkpoint = checkpoint

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.request.install():
            rank_zero_info(f"fts_dist: {', '.join(self.request.names)} stop the run at the next step boundary.")

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:  # the last: the epoch's end, after validation
            self._stop_if_signalled(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_if_signalled(trainer)

    def _stop_if_signalled(self, trainer: pl.Trainer) -> None:
        """Collective: when any rank was signalled, every rank saves ``last.ckpt`` and the run ends."""
        if not any_rank(self.request.received is not None):
            return
        path = self.path()
        trainer.save_checkpoint(path)  # collective: every rank, the same step
        requeued = requeue_slurm_job() if trainer.global_rank == 0 else None
        message = (
            f"fts_dist: stopped at step {trainer.global_step} (epoch {trainer.current_epoch}) on "
            f"{self.request.received or 'a signal to another rank'}; saved '{path}'."
        )
        if requeued:
            message += f" {requeued}"
        raise PreemptedStop(message)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.request.uninstall()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.request.uninstall()

    def path(self) -> str:
        """``last.ckpt`` in the checkpoint callback's directory, which ``ckpt_path="last"`` finds."""
        directory = Path(self.checkpoint.dirpath or ".")
        return str(directory / f"{self.checkpoint.CHECKPOINT_NAME_LAST}{self.checkpoint.FILE_EXTENSION}")
