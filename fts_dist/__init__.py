"""fts_dist: distributed-first scheduled fine-tuning (gradual unfreezing) for PyTorch Lightning."""

from fts_dist.callbacks import FinetuningScheduler, FTSCheckpoint, FTSEarlyStopping
from fts_dist.errors import FTSConfigError
from fts_dist.gen import gen_ft_schedule

__version__ = "0.1.0"

__all__ = [
    "FTSCheckpoint",
    "FTSConfigError",
    "FTSEarlyStopping",
    "FinetuningScheduler",
    "__version__",
    "gen_ft_schedule",
]
