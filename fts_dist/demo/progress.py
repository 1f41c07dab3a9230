"""Callbacks that show a schedule's progress: the phase in the progress bar, and a per-phase summary table."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, TQDMProgressBar
from pytorch_lightning.utilities import rank_zero_info
from typing_extensions import override

from fts_dist.callbacks.scheduler import FinetuningScheduler
from fts_dist.memory import format_bytes


def _find_scheduler(trainer: pl.Trainer) -> FinetuningScheduler | None:
    return next((c for c in trainer.callbacks if isinstance(c, FinetuningScheduler)), None)  # type: ignore[attr-defined]


class FTSProgressBar(TQDMProgressBar):
    """The TQDM progress bar with the current phase as ``phase=depth/max_depth`` beside the metrics."""

    @override
    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        scheduler = _find_scheduler(trainer)
        if scheduler is not None and scheduler.coordinator is not None:
            metrics["phase"] = f"{scheduler.curr_depth}/{scheduler.coordinator.max_depth}"
        return metrics


@dataclass
class PhaseRow:
    depth: int
    epochs: int = 0
    trainable: int = 0
    best: float | None = None
    seconds: float = 0.0
    held: int | None = None  # bytes this rank held in the phase (fts_dist.callbacks.memory_report.PhaseMemory)
    planned: int | None = None  # and what the plan made at setup gave it


def _format_phase_table(rows: list[PhaseRow], metric: str) -> str:
    """A markdown table of the phases that ran."""
    header = f"| phase | epochs | trainable params | best {metric} | time (s) | memory held / planned |"
    lines = [header, "|---|---|---|---|---|---|"]
    for row in rows:
        best = "-" if row.best is None else f"{row.best:.4f}"
        memory = f"{format_bytes(row.held)} / {format_bytes(row.planned)}"
        lines.append(f"| {row.depth} | {row.epochs} | {row.trainable:,} | {best} | {row.seconds:.1f} | {memory} |")
    return "\n".join(lines)


class PhaseSummary(Callback):
    """Collects, per phase: epochs run, trainable parameters, the best value of ``metric`` and wall time; prints
    the table on rank 0 when fitting ends (``rows`` holds it on every rank)."""

    def __init__(self, metric: str = "val_acc", mode: str = "max", print_table: bool = True) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"`mode` must be 'max' or 'min', got {mode!r}")
        self.metric = metric
        self.mode = mode
        self.print_table = print_table
        self.rows: list[PhaseRow] = []
        self._mark = 0.0

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mark = time.perf_counter()

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        scheduler = _find_scheduler(trainer)
        depth = scheduler.curr_depth if scheduler else 0
        if not self.rows or self.rows[-1].depth != depth:
            self.rows.append(PhaseRow(depth))
        row = self.rows[-1]
        now = time.perf_counter()
        row.seconds += now - self._mark
        self._mark = now
        row.epochs += 1
        row.trainable = (
            scheduler.trainable_numel
            if scheduler
            else sum(p.numel() for p in pl_module.parameters() if p.requires_grad)
        )
        if scheduler is not None:
            memory = scheduler.memory
            row.held = memory.held.get(depth, row.held)
            row.planned = memory.planned[depth] if memory.planned and depth < len(memory.planned) else None
        metric = trainer.callback_metrics.get(self.metric)
        if metric is not None:
            value = float(metric)
            better = row.best is None or (value > row.best if self.mode == "max" else value < row.best)
            row.best = value if better else row.best

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.print_table and self.rows:
            rank_zero_info("\n" + _format_phase_table(self.rows, self.metric))

    def table(self) -> str:
        return _format_phase_table(self.rows, self.metric)
