"""What every multi-process adapter shares: collectives on the default process group, and the strategy it serves."""

from __future__ import annotations

from typing import ClassVar

import pytorch_lightning as pl
from typing_extensions import override

from fts_dist.adapters.base import StrategyAdapter
from fts_dist.adapters.torch_comm import TorchDistributedComm
from fts_dist.coordinator import Comm
from fts_dist.errors import FTSConfigError


class DistributedAdapter(StrategyAdapter):
    """The base of the DDP, sharded and DeepSpeed adapters; ``serves`` is the strategy class each is for."""

    serves: ClassVar[type[pl.strategies.Strategy]]

    @property
    @override
    def comm(self) -> Comm:
        return TorchDistributedComm()

    @override
    def validate_strategy(self, trainer: pl.Trainer) -> None:
        if not isinstance(self.strategy, self.serves):
            raise FTSConfigError(
                f"{type(self).__name__} serves {self.serves.__name__}, got {type(self.strategy).__name__}."
            )
