from __future__ import annotations

import pytest
from pytorch_lightning.strategies import DDPStrategy, ModelParallelStrategy, SingleDeviceStrategy

from fts_dist import FTSConfigError
from fts_dist.adapters import DDPAdapter, StrategyAdapter, register_adapter, resolve_adapter


def test_known_strategies_and_their_subclasses_get_their_adapter() -> None:
    class MyDDP(DDPStrategy):
        pass

    assert type(resolve_adapter(SingleDeviceStrategy("cpu"))) is StrategyAdapter
    assert type(resolve_adapter(DDPStrategy())) is DDPAdapter
    assert type(resolve_adapter(MyDDP())) is DDPAdapter


def test_a_strategy_without_adapter_is_refused_with_the_supported_list() -> None:
    with pytest.raises(FTSConfigError, match=r"no adapter for strategy ModelParallelStrategy; supported: DDPStrategy"):
        resolve_adapter(ModelParallelStrategy())
    with pytest.warns(UserWarning, match="untested"):
        adapter = resolve_adapter(ModelParallelStrategy(), allow_untested=True)
    assert isinstance(adapter, StrategyAdapter) and adapter.comm.world_size == 1


def test_users_can_register_adapters() -> None:
    class Custom(ModelParallelStrategy):
        pass

    class CustomAdapter(StrategyAdapter):
        pass

    register_adapter(Custom, CustomAdapter)
    assert type(resolve_adapter(Custom())) is CustomAdapter
