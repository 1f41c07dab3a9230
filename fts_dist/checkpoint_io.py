"""Checkpoint files that are either whole or absent: write beside the target, fsync, then rename over it.

Lightning's default writer stages the checkpoint in memory and, for local paths, in the system temp directory,
then moves it into place; when the temp directory is on another filesystem (tmpfs, a node-local disk under a shared
checkpoint directory) the move is a copy, and a kill during it leaves a truncated ``last.ckpt`` or best checkpoint.
:class:`AtomicCheckpointIO` streams into a hidden file in the target's own directory and renames it, so a reader
sees the old file or the new one, never a part; a kill leaves only the hidden partial file, removed by the next
save of the same checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.utilities.cloud_io import get_filesystem
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.strategies import Strategy
from typing_extensions import override

_PARTIAL_MARK = ".partial-"


def _partial_path(target: Path) -> Path:
    return target.with_name(f".{target.name}{_PARTIAL_MARK}{os.getpid()}")


def _stale_partials(target: Path) -> list[Path]:
    """Partial files of ``target`` that killed writers left behind."""
    return sorted(target.parent.glob(f".{target.name}{_PARTIAL_MARK}*"))


def atomic_torch_save(obj: Any, target: str | os.PathLike[str]) -> None:
    """``torch.save`` that replaces ``target`` atomically (same directory, fsync, ``os.replace``)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in _stale_partials(target):
        stale.unlink(missing_ok=True)
    partial = _partial_path(target)
    try:
        with open(partial, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a crash of the node
    finally:
        os.close(directory)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO with atomic local writes; remote paths (``s3://`` ...) go the default way."""

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or get_filesystem(path).protocol not in ("file", ("file", "local")):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, path)


def install_atomic_checkpoint_io(strategy: Strategy) -> bool:
    """Give ``strategy`` atomic checkpoint writes unless the user chose a checkpoint IO; True if installed."""
    if type(strategy.checkpoint_io) is not TorchCheckpointIO:
        return False
    strategy.checkpoint_io = AtomicCheckpointIO()
    return True
