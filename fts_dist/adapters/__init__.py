"""Per-rank strategy adapters: validate, freeze, apply phase plans, restore checkpoints, check replicas."""

from fts_dist.adapters.base import CheckpointRestoreError, ReplicaMismatchError, StrategyAdapter
from fts_dist.adapters.ddp import DDPAdapter
from fts_dist.adapters.registry import adapter_class_for, register_adapter, resolve_adapter, supported_strategies

__all__ = [
    "CheckpointRestoreError",
    "DDPAdapter",
    "ReplicaMismatchError",
    "StrategyAdapter",
    "adapter_class_for",
    "register_adapter",
    "resolve_adapter",
    "supported_strategies",
]
