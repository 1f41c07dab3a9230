"""Sharded data parallelism: FSDP2 (``fully_shard``) and FSDP1, over what both share (staged, agreed checkpoints)."""

from fts_dist.adapters.sharded.fsdp1 import FSDP1Adapter
from fts_dist.adapters.sharded.fsdp2 import FSDP2Adapter

__all__ = ["FSDP1Adapter", "FSDP2Adapter"]
