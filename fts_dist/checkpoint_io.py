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
never a part. Both write a manifest (:mod:`fts_dist.checkpoint_manifest`) that loads check first.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.utilities.cloud_io import get_filesystem
from lightning_utilities.core.apply_func import apply_to_collection
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.strategies import Strategy
from typing_extensions import override

from fts_dist.checkpoint_manifest import sidecar_path, write_file_manifest

_PARTIAL_MARK = ".partial-"


def _partial_path(target: Path) -> Path:
    return target.with_name(f".{target.name}{_PARTIAL_MARK}{os.getpid()}")


def _stale_partials(target: Path) -> list[Path]:
    """Partial files of ``target`` that killed writers left behind."""
    return sorted(target.parent.glob(f".{target.name}{_PARTIAL_MARK}*"))


def atomic_torch_save(
    obj: Any, target: str | os.PathLike[str], before_replace: Callable[[Path], None] | None = None
) -> None:
    """``torch.save`` that replaces ``target`` atomically (same directory, fsync, ``os.replace``);
    ``before_replace(written)`` runs on the finished file just before it is renamed into place."""
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
        if before_replace is not None:
            before_replace(partial)
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    _fsync_directory(target.parent)  # the rename itself survives a crash of the node


_STAGING_MARK = ".fts-staging"
_RETIRED_MARK = ".fts-retired"
_RENAME_EXCHANGE = 2  # renameat2(2) flag: swap two paths atomically (Linux >= 3.15)
_AT_FDCWD = -100


def staging_path(target: Path) -> Path:
    """Where a checkpoint for ``target`` is written before :func:`publish` moves it into place (every rank agrees)."""
    return target.with_name(f".{target.name}{_STAGING_MARK}")


def publish(staging: Path, target: Path) -> None:
    """Put the finished ``staging`` file or directory at ``target`` atomically, then drop what ``target`` held.

    Where the filesystem cannot exchange two paths atomically (``renameat2`` is Linux-only, and NFS refuses it), the
    old checkpoint moves aside to a hidden ``.NAME.fts-retired`` first; a crash between the two renames leaves it
    there, and :func:`tidy_checkpoint_directory` moves it back.
    """
    _fsync_tree(staging)
    if not target.exists() and not target.is_symlink():
        os.replace(staging, target)
    elif staging.is_dir() and _exchange(staging, target):
        remove_path(staging)  # now the old checkpoint
    elif not staging.is_dir() and not target.is_dir():
        os.replace(staging, target)
    else:
        retired = _retired_path(target)
        remove_path(retired)
        os.replace(target, retired)
        os.replace(staging, target)
        remove_path(retired)
    _fsync_directory(target.parent)


def tidy_checkpoint_directory(directory: Path) -> None:
    """Remove what killed writers left in ``directory`` (staging copies) and put back a checkpoint a crash left
    moved aside (``.NAME.fts-retired`` when ``NAME`` is missing)."""
    for staging in directory.glob(f".*{_STAGING_MARK}"):
        remove_path(staging)
    for retired in directory.glob(f".*{_RETIRED_MARK}"):
        original = retired.with_name(retired.name[1 : -len(_RETIRED_MARK)])
        if original.exists():
            remove_path(retired)
        else:
            os.replace(retired, original)


def remove_path(path: Path) -> None:
    """Remove a file, link or directory tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _retired_path(target: Path) -> Path:
    return target.with_name(f".{target.name}{_RETIRED_MARK}")


def _fsync_tree(path: Path) -> None:
    """Flush ``path`` (a file, or a directory's files and the directory itself) to stable storage."""
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    for file in files:
        handle = os.open(file, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)
    if path.is_dir():
        _fsync_directory(path)


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
    """Lightning's torch checkpoint IO with atomic local writes and memory-mapped local reads; remote paths
    (``s3://`` ...) go the default way.

    A mapped read (``torch.load(mmap=True)``) leaves the weights (``state_dict``) in the page cache, shared by every
    rank on a node, instead of a private copy per rank: a restore copies them from the mapping into the module. The
    rest (optimizer state above all) is copied out of the mapping at once: an optimizer keeps the state tensors it is
    given, and a tensor still mapped would fault (SIGBUS) the moment anyone truncated the file.
    """

    @override
    def load_checkpoint(
        self, path: Any, map_location: Any = lambda storage, loc: storage, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if not isinstance(path, (str, Path)) or get_filesystem(path).protocol not in ("file", ("file", "local")):
            return super().load_checkpoint(path, map_location, weights_only)
        if not Path(path).is_file():
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        try:
            checkpoint = torch.load(path, map_location=map_location, weights_only=weights_only, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):  # a file in torch's legacy format cannot be mapped: read it whole
                raise
            return super().load_checkpoint(path, map_location, weights_only)
        return {
            key: value if key == "state_dict" else apply_to_collection(value, torch.Tensor, torch.clone)
            for key, value in checkpoint.items()
        }

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or get_filesystem(path).protocol not in ("file", ("file", "local")):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, path, before_replace=lambda written: write_file_manifest(written, Path(path)))

    @override
    def remove_checkpoint(self, path: Any) -> None:
        super().remove_checkpoint(path)
        if isinstance(path, (str, Path)) and get_filesystem(path).protocol in ("file", ("file", "local")):
            sidecar_path(Path(path)).unlink(missing_ok=True)


def install_atomic_checkpoint_io(strategy: Strategy) -> bool:
    """Give ``strategy`` atomic checkpoint writes unless the user chose a checkpoint IO; True if installed."""
    if type(strategy.checkpoint_io) is not TorchCheckpointIO:
        return False
    strategy.checkpoint_io = AtomicCheckpointIO()
    return True
