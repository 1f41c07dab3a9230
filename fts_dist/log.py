"""fts_dist's messages: the ``fts_dist`` logger, written on rank 0 only.

Like Lightning's own logger, it prints to stderr by itself unless the application has configured logging (a root
handler), in which case records propagate there. ``FinetuningScheduler(logging_level=...)`` sets its level.
"""

from __future__ import annotations

import logging

from pytorch_lightning.utilities import rank_zero_only

logger = logging.getLogger("fts_dist")
if not logging.getLogger().hasHandlers():
    logger.setLevel(logging.INFO)
    logger.addHandler(logging.StreamHandler())
    logger.propagate = False


def rank_zero_info(message: str) -> None:
    """Log ``message`` at INFO on global rank 0."""
    if getattr(rank_zero_only, "rank", 0) == 0:
        logger.info(message)
