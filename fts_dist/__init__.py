"""fts_dist: distributed-first scheduled fine-tuning (gradual unfreezing) for PyTorch Lightning.

The public names load on first use, so ``fts-dist --version`` and ``--help`` answer without importing torch or
Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fts_dist._version import __version__
from fts_dist.errors import FTSConfigError

if TYPE_CHECKING:
    from fts_dist.callbacks import FinetuningScheduler, FTSCheckpoint, FTSEarlyStopping
    from fts_dist.export import export_checkpoint, load_pretrained
    from fts_dist.gen import gen_block_schedule, gen_ft_schedule
    from fts_dist.strategies import DeepSpeedStrategy, FSDPStrategy

_LAZY = {
    "FinetuningScheduler": "fts_dist.callbacks",
    "FTSCheckpoint": "fts_dist.callbacks",
    "FTSEarlyStopping": "fts_dist.callbacks",
    "DeepSpeedStrategy": "fts_dist.strategies",
    "FSDPStrategy": "fts_dist.strategies",
    "gen_block_schedule": "fts_dist.gen",
    "gen_ft_schedule": "fts_dist.gen",
    "export_checkpoint": "fts_dist.export",
    "load_pretrained": "fts_dist.export",
}

__all__ = [
    "DeepSpeedStrategy",
    "FSDPStrategy",
    "FTSCheckpoint",
    "FTSConfigError",
    "FTSEarlyStopping",
    "FinetuningScheduler",
    "__version__",
    "export_checkpoint",
    "gen_block_schedule",
    "gen_ft_schedule",
    "load_pretrained",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fts_dist' has no attribute {name!r}")
