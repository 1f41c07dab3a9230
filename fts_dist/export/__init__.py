"""From a checkpoint to a usable model and back: export (:func:`export_checkpoint`), inspection
(:func:`inspect_checkpoint`), and pretrained weights into a sharded model (:func:`load_pretrained`)."""

from __future__ import annotations

from fts_dist.export.inspect import Summary, inspect_checkpoint
from fts_dist.export.pretrained import Loaded, load_pretrained
from fts_dist.export.writer import Export, export_checkpoint

__all__ = ["Export", "Loaded", "Summary", "export_checkpoint", "inspect_checkpoint", "load_pretrained"]
