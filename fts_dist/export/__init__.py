"""From a checkpoint to a usable model: export (:func:`export_checkpoint`), inspection (:func:`inspect_checkpoint`)."""

from __future__ import annotations

from fts_dist.export.inspect import Summary, inspect_checkpoint
from fts_dist.export.writer import Export, export_checkpoint

__all__ = ["Export", "Summary", "export_checkpoint", "inspect_checkpoint"]
