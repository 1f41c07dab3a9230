"""Which adapter serves which Lightning strategy; users may register their own."""

from __future__ import annotations

import pytorch_lightning as pl
import torch.distributed as dist
from pytorch_lightning.strategies import (
    DDPStrategy,
    DeepSpeedStrategy,
    FSDPStrategy,
    ModelParallelStrategy,
    SingleDeviceStrategy,
)
from pytorch_lightning.utilities import rank_zero_warn

from fts_dist.adapters.base import StrategyAdapter
from fts_dist.adapters.ddp import DDPAdapter
from fts_dist.adapters.torch_comm import TorchDistributedComm
from fts_dist.coordinator import Comm, LocalComm
from fts_dist.errors import FTSConfigError

# A strategy class mapped to None is known and not yet supported: the lookup stops there instead of falling
# through to a base class's adapter (DeepSpeedStrategy subclasses DDPStrategy, but the DDP adapter is wrong for it).
_ADAPTERS: dict[type[pl.strategies.Strategy], type[StrategyAdapter] | None] = {
    SingleDeviceStrategy: StrategyAdapter,
    DDPStrategy: DDPAdapter,
    DeepSpeedStrategy: None,
    FSDPStrategy: None,
    ModelParallelStrategy: None,
}


def register_adapter(strategy_cls: type[pl.strategies.Strategy], adapter_cls: type[StrategyAdapter] | None) -> None:
    """Serve ``strategy_cls`` (and its subclasses without an entry of their own) with ``adapter_cls``.

    Example::

        >>> from pytorch_lightning.strategies import SingleDeviceStrategy
        >>> class MyStrategy(SingleDeviceStrategy): ...
        >>> register_adapter(MyStrategy, StrategyAdapter)
    """
    _ADAPTERS[strategy_cls] = adapter_cls


def supported_strategies() -> list[str]:
    return sorted(cls.__name__ for cls, adapter in _ADAPTERS.items() if adapter is not None)


def adapter_class_for(strategy_cls: type[pl.strategies.Strategy]) -> type[StrategyAdapter] | None:
    """The adapter class for a strategy class: its own entry, else its nearest registered base class's."""
    for cls in strategy_cls.__mro__:
        if cls in _ADAPTERS:
            return _ADAPTERS[cls]
    return None


def resolve_adapter(strategy: pl.strategies.Strategy, allow_untested: bool = False) -> StrategyAdapter:
    """The adapter for ``strategy``: its own class's entry, else its nearest registered base class's.

    Raises:
        FTSConfigError: no adapter serves the strategy and ``allow_untested`` is False.
    """
    adapter_cls = adapter_class_for(type(strategy))
    if adapter_cls is not None:
        return adapter_cls(strategy)
    name = type(strategy).__name__
    if not allow_untested:
        raise FTSConfigError(
            f"fts_dist has no adapter for strategy {name}; supported: {', '.join(supported_strategies())}. "
            "Pick one of those, register an adapter with `fts_dist.adapters.register_adapter`, or pass "
            "`allow_untested=True` to try the generic adapter (replicas may diverge).",
            key="strategy",
        )
    rank_zero_warn(f"fts_dist: strategy {name} is untested; using the generic adapter because allow_untested=True.")
    return _GenericAdapter(strategy)


class _GenericAdapter(StrategyAdapter):
    """For allow_untested: the single-process logic with real collectives when a process group exists."""

    @property
    def comm(self) -> Comm:
        return TorchDistributedComm() if dist.is_available() and dist.is_initialized() else LocalComm()
