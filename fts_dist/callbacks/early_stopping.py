"""FTSEarlyStopping: early stopping that ends a phase, and ends the run only in the last phase."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EarlyStopping
from pytorch_lightning.callbacks.early_stopping import EarlyStoppingReason
from torch import Tensor
from typing_extensions import override


class FTSEarlyStopping(EarlyStopping):
    """An :class:`~pytorch_lightning.callbacks.EarlyStopping` whose patience ends the current fine-tuning phase.

    In every phase but the last, running out of patience marks the phase complete (``es_phase_complete``) and
    the :class:`~fts_dist.FinetuningScheduler` moves to the next phase at the start of the next epoch; in the
    last phase it stops training as usual. Thresholds and non-finite metrics stop training in any phase. The
    check runs after validation unless ``check_on_train_epoch_end=True``. Arguments are EarlyStopping's.

    Example::

        from pytorch_lightning import Trainer
        from fts_dist import FinetuningScheduler, FTSEarlyStopping
        trainer = Trainer(callbacks=[FinetuningScheduler(), FTSEarlyStopping(monitor="val_loss", patience=2)])
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.es_phase_complete = False
        self.final_phase = False

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._check_on_train_epoch_end is None:
            self._check_on_train_epoch_end = False  # judge phases on validation metrics
        super().setup(trainer, pl_module, stage)

    def reset_phase(self) -> None:
        """Start a new phase: patience counts again; the best score so far is kept."""
        self.es_phase_complete = False
        self.wait_count = 0

    @override
    def _evaluate_stopping_criteria(self, current: Tensor) -> tuple[bool, str | None]:
        reason_before = self.stopping_reason
        should_stop, reason = super()._evaluate_stopping_criteria(current)
        patience_ran_out = should_stop and self.stopping_reason == EarlyStoppingReason.PATIENCE_EXHAUSTED
        if patience_ran_out and not self.final_phase:
            self.stopping_reason = reason_before
            self.es_phase_complete = True
            self.wait_count = 0
            return False, f"Monitored metric {self.monitor} stopped improving: this fine-tuning phase is complete."
        return should_stop, reason

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "es_phase_complete": self.es_phase_complete, "final_phase": self.final_phase}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.es_phase_complete = bool(state_dict.get("es_phase_complete", False))
        self.final_phase = bool(state_dict.get("final_phase", False))
