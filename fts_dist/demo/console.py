"""What the demo's console shows: the phases, the progress and the table, not notices a user can do nothing about.

Hidden: Lightning's tips for its cloud products and its TPU line, a deprecation warning that Lightning's own pytree
helper raises on new torch versions, and the weight-loading progress bar of transformers.
"""

from __future__ import annotations

import logging
import warnings

from typing_extensions import override

_HIDDEN_LINES = ("💡 Tip:", "TPU available:")
_HIDDEN_WARNINGS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated",)


class _HideNotices(logging.Filter):
    @override
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(_HIDDEN_LINES)


def quiet_console() -> None:
    """Hide the notices above for the rest of this process (idempotent)."""
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _HideNotices) for f in logger.filters):
            logger.addFilter(_HideNotices())
    for message in _HIDDEN_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
