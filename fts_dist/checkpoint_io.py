"""Checkpoint files that are either whole or absent: write beside the target, fsync, then rename over it.

Lightning's default writer stages the checkpoint in memory and, for local paths, in the system temp directory,
then moves it into place; when the temp directory is on another filesystem (tmpfs, a node-local disk under a shared
checkpoint directory) the move is a copy, and a kill during it leaves a truncated ``last.ckpt`` or best checkpoint.
:class:`AtomicCheckpointIO` streams into a hidden file in the target's own directory and renames it, so a reader
sees the old file or the new one, never a part; a kill leaves only the hidden partial file, removed by the next
save of the same checkpoint.

Sharded checkpoints are directories that every rank writes into. :func:`publish` moves a finished staging directory
(written under :func:`staging_path`, a hidden name Lightning's ``ckpt_path="last"`` never picks) into place with
one atomic rename, or an atomic exchange when the target exists, so a resume sees the old directory or the new one,
never a part.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
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
    _fsync_directory(target.parent)  # the rename itself survives a crash of the node


_STAGING_MARK = ".fts-staging"
_RENAME_EXCHANGE = 2  # renameat2(2) flag: swap two paths atomically (Linux >= 3.15)
_AT_FDCWD = -100


def staging_path(target: Path) -> Path:
    """Where a checkpoint for ``target`` is written before :func:`publish` moves it into place (every rank agrees)."""
    return target.with_name(f".{target.name}{_STAGING_MARK}")


def publish(staging: Path, target: Path) -> None:
    """Put the finished ``staging`` file or directory at ``target`` atomically, then drop what ``target`` held."""
    if not staging.is_dir() or not target.exists():
        if target.is_dir():
            shutil.rmtree(target)  # a directory replaced by a file (the strategy's state-dict type changed)
        os.replace(staging, target)
    elif _exchange(staging, target):
        shutil.rmtree(staging)  # now the old checkpoint
    else:  # no renameat2 (not Linux): a crash between the renames leaves the old checkpoint under a hidden name
        retired = target.with_name(f".{target.name}.fts-retired")
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(target, retired)
        os.replace(staging, target)
        shutil.rmtree(retired)
    _fsync_directory(target.parent)


def _exchange(first: Path, second: Path) -> bool:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    status = renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    return bool(status == 0)


def _fsync_directory(directory: Path) -> None:
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


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
