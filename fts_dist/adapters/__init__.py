"""Per-rank strategy adapters: validate, freeze, apply phase plans, restore checkpoints, check replicas."""

from fts_dist.adapters.base import CheckpointRestoreError, ReplicaMismatchError, StrategyAdapter
from fts_dist.adapters.ddp import DDPAdapter
from fts_dist.adapters.deepspeed.adapter import DeepSpeedAdapter
from fts_dist.adapters.registry import (
    adapter_class_for,
    check_strategy_supported,
    register_adapter,
    resolve_adapter,
    strategy_class,
    strategy_needs_gpu,
    supported_strategies,
)
from fts_dist.adapters.replicas import ReplicaView
from fts_dist.adapters.sharded.fsdp1 import FSDP1Adapter
from fts_dist.adapters.sharded.fsdp2 import FSDP2Adapter

__all__ = [
    "CheckpointRestoreError",
    "DDPAdapter",
    "DeepSpeedAdapter",
    "FSDP1Adapter",
    "FSDP2Adapter",
    "ReplicaMismatchError",
    "ReplicaView",
    "StrategyAdapter",
    "adapter_class_for",
    "check_strategy_supported",
    "register_adapter",
    "resolve_adapter",
    "strategy_class",
    "strategy_needs_gpu",
    "supported_strategies",
]
