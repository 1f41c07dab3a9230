"""DeepSpeed ZeRO 1/2/3: the adapter, and the rebuild of a live engine's ZeRO optimizer at each transition."""

from fts_dist.adapters.deepspeed.adapter import DeepSpeedAdapter

__all__ = ["DeepSpeedAdapter"]
