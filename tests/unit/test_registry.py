from __future__ import annotations

import pytest
from pytorch_lightning.strategies import (
    DDPStrategy,
    DeepSpeedStrategy,
    FSDPStrategy,
    ModelParallelStrategy,
    SingleDeviceStrategy,
    XLAStrategy,
)

import fts_dist
from fts_dist import FTSConfigError
from fts_dist.adapters import (
    DDPAdapter,
    DeepSpeedAdapter,
    FSDP1Adapter,
    FSDP2Adapter,
    StrategyAdapter,
    adapter_class_for,
    check_strategy_supported,
    register_adapter,
    resolve_adapter,
)

pytestmark = pytest.mark.usefixtures("adapter_registry")


def test_known_strategies_and_their_subclasses_get_their_adapter() -> None:
    class MyDDP(DDPStrategy):
        pass

    assert type(resolve_adapter(SingleDeviceStrategy("cpu"))) is StrategyAdapter
    assert type(resolve_adapter(DDPStrategy())) is DDPAdapter
    assert type(resolve_adapter(MyDDP())) is DDPAdapter
    assert type(resolve_adapter(ModelParallelStrategy())) is FSDP2Adapter
    assert adapter_class_for(FSDPStrategy) is adapter_class_for(fts_dist.FSDPStrategy) is FSDP1Adapter


def test_subclasses_of_ddp_that_are_not_ddp_do_not_fall_through_to_its_adapter() -> None:
    assert adapter_class_for(DeepSpeedStrategy) is adapter_class_for(fts_dist.DeepSpeedStrategy) is DeepSpeedAdapter
    assert adapter_class_for(XLAStrategy) is None


def test_a_strategy_without_adapter_is_refused_with_the_supported_list() -> None:
    class Exotic(SingleDeviceStrategy):
        pass

    register_adapter(Exotic, None)
    supported = (
        "DDPStrategy, DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy, SingleDeviceStrategy, "
        "fts_dist.DeepSpeedStrategy, fts_dist.FSDPStrategy."
    )
    with pytest.raises(FTSConfigError, match=f"no adapter for strategy Exotic; supported: {supported} Pick"):
        resolve_adapter(Exotic("cpu"))
    with pytest.raises(FTSConfigError, match="no adapter for strategy XLAStrategy"):
        check_strategy_supported("xla")
    with pytest.warns(UserWarning, match="untested"):
        adapter = resolve_adapter(Exotic("cpu"), allow_untested=True)
    assert isinstance(adapter, StrategyAdapter) and adapter.comm.world_size == 1


def test_users_can_register_adapters() -> None:
    class Custom(ModelParallelStrategy):
        pass

    class CustomAdapter(StrategyAdapter):
        pass

    register_adapter(Custom, CustomAdapter)
    assert type(resolve_adapter(Custom())) is CustomAdapter


def test_fsdp1_without_original_parameters_is_refused() -> None:
    with pytest.raises(FTSConfigError, match=r"use_orig_params=False\) flattens .* Pass use_orig_params=True"):
        FSDP1Adapter(FSDPStrategy(use_orig_params=False)).validate_strategy(None)  # type: ignore[arg-type]
    FSDP1Adapter(fts_dist.FSDPStrategy()).validate_strategy(None)  # type: ignore[arg-type]
