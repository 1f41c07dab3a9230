"""Thin Lightning glue: the scheduler callback and its early-stopping and checkpoint companions."""

from fts_dist.callbacks.checkpoint import FTSCheckpoint
from fts_dist.callbacks.early_stopping import FTSEarlyStopping
from fts_dist.callbacks.scheduler import FinetuningScheduler

__all__ = ["FTSCheckpoint", "FTSEarlyStopping", "FinetuningScheduler"]
