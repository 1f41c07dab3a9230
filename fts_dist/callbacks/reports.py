"""What FinetuningScheduler tells the user about a run: why it ended, and thawed parameters that do not train."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks.early_stopping import EarlyStoppingReason
from pytorch_lightning.utilities import rank_zero_warn

from fts_dist.adapters import StrategyAdapter
from fts_dist.callbacks.early_stopping import FTSEarlyStopping
from fts_dist.coordinator import ScheduleCoordinator, describe_stop
from fts_dist.errors import FTSConfigError


def end_of_fit_line(trainer: pl.Trainer, coordinator: ScheduleCoordinator, es: FTSEarlyStopping | None) -> str:
    """The run's last line: the phase it ended in, when each phase began, and why training stopped."""
    early_stop = None
    if es is not None and es.stopping_reason != EarlyStoppingReason.NOT_STOPPED:
        early_stop = (es.stopped_epoch, es.stopping_reason_message or es.stopping_reason.name)
    reason = describe_stop(
        depth=coordinator.depth,
        max_depth=coordinator.max_depth,
        final_depth=coordinator.schedule.final_depth,
        epoch=trainer.current_epoch,
        max_epochs=trainer.fit_loop.max_epochs,
        early_stop=early_stop,
    )
    starts = ", ".join(f"phase {d} from epoch {e}" for d, e in enumerate(coordinator.state.phase_start_epochs))
    return f"fts_dist: fine-tuning ended at phase {coordinator.depth} ({starts}): {reason}."


def check_unused_parameters(adapter: StrategyAdapter, module: pl.LightningModule, depth: int) -> None:
    """Right after a phase's first backward: name the thawed parameters that got no gradient; an error where the
    strategy would fail on them (DDP without ``find_unused_parameters``), a warning elsewhere."""
    unused = adapter.parameters_without_gradient(module)
    if not unused:
        return
    if adapter.unused_parameters_are_fatal():
        raise FTSConfigError(
            f"{len(unused)} parameter(s) thawed by phase {depth} or earlier got no gradient in the phase's first "
            f"step: {unused}. DDP would stop at the next step. Remove them from the schedule (they then stay "
            "frozen), or use DDPStrategy(find_unused_parameters=True) if they are used only on some steps.",
            phase=depth,
            key="params",
        )
    rank_zero_warn(
        f"fts_dist: {len(unused)} parameter(s) thawed by phase {depth} or earlier got no gradient in the phase's "
        f"first step and do not train: {unused}. Remove them from the schedule to silence this."
    )
