"""Which adapter serves which Lightning strategy, and what each strategy needs; users may register their own.

This table is the one place that knows, per strategy class: the adapter that applies phase plans under it (or that
none does yet), and whether it needs CUDA devices. The CLI's device fallback and ``fts-dist schedule validate``
ask it; nothing else keeps a list of strategies.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch.distributed as dist
from pytorch_lightning.strategies import (
    DDPStrategy,
    DeepSpeedStrategy,
    FSDPStrategy,
    ModelParallelStrategy,
    SingleDeviceStrategy,
    SingleDeviceXLAStrategy,
    StrategyRegistry,
    XLAStrategy,
)
from pytorch_lightning.utilities import rank_zero_warn
from typing_extensions import override

from fts_dist.adapters.base import StrategyAdapter
from fts_dist.adapters.ddp import DDPAdapter
from fts_dist.adapters.deepspeed.adapter import DeepSpeedAdapter
from fts_dist.adapters.sharded.fsdp1 import FSDP1Adapter
from fts_dist.adapters.sharded.fsdp2 import FSDP2Adapter
from fts_dist.adapters.torch_comm import TorchDistributedComm
from fts_dist.coordinator import Comm, LocalComm
from fts_dist.errors import FTSConfigError
from fts_dist.strategies import DeepSpeedStrategy as CPUCapableDeepSpeedStrategy
from fts_dist.strategies import FSDPStrategy as CPUCapableFSDPStrategy


@dataclass(frozen=True)
class _Entry:
    adapter: type[StrategyAdapter] | None  # None: known and not supported (the lookup stops there)
    needs_gpu: bool = False


# A strategy class mapped to an entry without adapter is known and not yet supported: the lookup stops there instead
# of falling through to a base class's adapter (DeepSpeedStrategy subclasses DDPStrategy, but the DDP adapter is
# wrong for it).
_ADAPTERS: dict[type[pl.strategies.Strategy], _Entry] = {
    SingleDeviceStrategy: _Entry(StrategyAdapter),
    DDPStrategy: _Entry(DDPAdapter),
    DeepSpeedStrategy: _Entry(DeepSpeedAdapter, needs_gpu=True),
    CPUCapableDeepSpeedStrategy: _Entry(DeepSpeedAdapter),
    FSDPStrategy: _Entry(FSDP1Adapter, needs_gpu=True),
    CPUCapableFSDPStrategy: _Entry(FSDP1Adapter),
    ModelParallelStrategy: _Entry(FSDP2Adapter),
    XLAStrategy: _Entry(None),  # subclasses DDPStrategy, SingleDeviceXLAStrategy SingleDeviceStrategy: not theirs
    SingleDeviceXLAStrategy: _Entry(None),
}


def register_adapter(
    strategy_cls: type[pl.strategies.Strategy], adapter_cls: type[StrategyAdapter] | None, *, needs_gpu: bool = False
) -> None:
    """Serve ``strategy_cls`` (and its subclasses without an entry of their own) with ``adapter_cls``.

    ``needs_gpu`` tells the CLI's device fallback that the strategy cannot run on a CPU machine.

    Example::

        >>> from pytorch_lightning.strategies import SingleDeviceStrategy
        >>> class MyStrategy(SingleDeviceStrategy): ...
        >>> register_adapter(MyStrategy, StrategyAdapter)
    """
    _ADAPTERS[strategy_cls] = _Entry(adapter_cls, needs_gpu)


def supported_strategies() -> list[str]:
    """Names of the strategy classes that have an adapter (Lightning's by class name, others by package too)."""
    return sorted(
        cls.__name__
        if cls.__module__.startswith("pytorch_lightning.")
        else f"{cls.__module__.split('.')[0]}.{cls.__name__}"
        for cls, entry in _ADAPTERS.items()
        if entry.adapter is not None
    )


def _entry_for(strategy_cls: type[pl.strategies.Strategy]) -> _Entry | None:
    return next((_ADAPTERS[cls] for cls in strategy_cls.__mro__ if cls in _ADAPTERS), None)


def adapter_class_for(strategy_cls: type[pl.strategies.Strategy]) -> type[StrategyAdapter] | None:
    """The adapter class for a strategy class: its own entry, else its nearest registered base class's."""
    entry = _entry_for(strategy_cls)
    return entry.adapter if entry else None


def strategy_class(strategy: Any) -> type[pl.strategies.Strategy] | None:
    """The strategy class behind a strategy as a config gives it: a registry name (``"ddp"``, ``"fsdp"``), a
    ``class_path`` (dict or namespace), a class or an instance; ``None`` for ``"auto"``.

    Raises:
        FTSConfigError: an unknown name or a class path that cannot be imported.
    """
    if isinstance(strategy, type):
        return strategy
    if isinstance(strategy, pl.strategies.Strategy):
        return type(strategy)
    class_path = strategy.get("class_path") if isinstance(strategy, dict) else getattr(strategy, "class_path", None)
    if class_path:
        module_name, _, name = str(class_path).rpartition(".")
        try:
            return getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError, ValueError) as err:
            raise FTSConfigError(f"Cannot import strategy {class_path!r}: {err}", key="strategy") from err
    name = str(strategy).lower()  # as Lightning reads names
    if name == "auto":
        return None
    if name not in StrategyRegistry:
        known = sorted(StrategyRegistry.available_strategies())
        raise FTSConfigError(f"Unknown strategy {name!r}; Lightning knows {known}.", key="strategy")
    return StrategyRegistry[name]["strategy"]


def strategy_needs_gpu(strategy: Any) -> bool:
    """Whether a strategy (as :func:`strategy_class` takes it) needs CUDA devices."""
    cls = strategy_class(strategy)
    entry = _entry_for(cls) if cls is not None else None
    return bool(entry and entry.needs_gpu)


def check_strategy_supported(strategy: Any) -> None:
    """Raise the one "no adapter" :class:`FTSConfigError` for a strategy (as :func:`strategy_class` takes it) that
    no adapter serves."""
    cls = strategy_class(strategy)
    if cls is not None and adapter_class_for(cls) is None:
        raise _no_adapter_error(cls.__name__)


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
        raise _no_adapter_error(name)
    rank_zero_warn(f"fts_dist: strategy {name} is untested; using the generic adapter because allow_untested=True.")
    return _GenericAdapter(strategy)


def _no_adapter_error(name: str) -> FTSConfigError:
    return FTSConfigError(
        f"fts_dist has no adapter for strategy {name}; supported: {', '.join(supported_strategies())}. "
        "Pick one of those, register an adapter with `fts_dist.adapters.register_adapter`, or pass "
        "`allow_untested=True` to the FinetuningScheduler to try the generic adapter (replicas may diverge).",
        key="strategy",
    )


class _GenericAdapter(StrategyAdapter):
    """For allow_untested: the single-process logic with real collectives when a process group exists."""

    @property
    @override
    def comm(self) -> Comm:
        return TorchDistributedComm() if dist.is_available() and dist.is_initialized() else LocalComm()
