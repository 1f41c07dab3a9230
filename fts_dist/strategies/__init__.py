"""Lightning strategies that also run on a CPU accelerator (gloo), so a config can be debugged on a laptop and CI
can test every strategy family."""

from fts_dist.strategies.deepspeed import DeepSpeedStrategy
from fts_dist.strategies.fsdp import FSDPStrategy

__all__ = ["DeepSpeedStrategy", "FSDPStrategy"]
