"""Checkpoints on nodes without a shared filesystem: probe who sees what, and send each node what it lacks.

:class:`CheckpointViews` probes a checkpoint directory the first time it is used (every rank writes
``.fts-view-probe-TOKEN-RANK`` into it and looks for the others') and keeps its
:class:`~fts_dist.checkpoint_views.Views`. Where every rank sees one copy (a shared filesystem, one node), nothing
else happens. Otherwise :func:`sync_checkpoint`, run before each load (a transition's restore, a resume), sends each
view the files of the checkpoint it lacks, from the rank that wrote them, point to point over the process group
in 64 MiB pieces; each view's leader writes them (atomically, keeping the source's modification time, so a second
sync of an unchanged file sends nothing). A whole-file checkpoint (DDP, one device) goes to every other view; a
directory (DCP shards, DeepSpeed partitions) sends each view the other views' files, since DCP and DeepSpeed may
read any of them (DeepSpeed reads every rank's optimizer partition at a load).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

import torch.distributed as dist
from lightning_fabric.utilities.cloud_io import get_filesystem

from fts_dist.checkpoint_manifest import owner_of, sidecar_path
from fts_dist.checkpoint_views import Listing, Transfer, Views, plan_transfers, transfer_bytes, views_from_sightings
from fts_dist.coordinator import Comm
from fts_dist.errors import CheckpointRestoreError
from fts_dist.log import rank_zero_info

_PROBE = ".fts-view-probe-{token}-{rank}"
_PIECE = 64 << 20


class CheckpointViews:
    """The views of each checkpoint directory, probed once per directory; a collective call the first time."""

    def __init__(self, comm: Comm) -> None:
        self.comm = comm
        self._known: dict[str, Views] = {}

    def of(self, directory: Path) -> Views:
        if not _several_processes(self.comm) or not _is_local(str(directory)):
            return Views((0,) * self.comm.world_size)  # one process sees one copy
        key = os.path.abspath(directory)
        if key not in self._known:
            self._known[key] = probe_views(self.comm, Path(key))
            if not self._known[key].shared:
                rank_zero_info(
                    f"fts_dist: the checkpoint directory '{key}' is not shared ({self._known[key].describe()}): "
                    "each view keeps its own copy, and before each restore or resume fts_dist sends every view "
                    "the files it lacks."
                )
        return self._known[key]

    def known(self, directory: Path) -> Views | None:
        """The views of ``directory`` if already probed (no collective)."""
        return self._known.get(os.path.abspath(directory))


def probe_views(comm: Comm, directory: Path) -> Views:
    """Collective: which ranks see the same copy of ``directory`` (created if missing)."""
    token = comm.broadcast(uuid.uuid4().hex[:12])
    mine = directory / _PROBE.format(token=token, rank=comm.rank)
    _all_or_none(comm, lambda: _write_probe(mine), f"write '{mine}'")
    seen = [rank for rank in range(comm.world_size) if (directory / _PROBE.format(token=token, rank=rank)).exists()]
    comm.barrier()  # everyone looked before anyone removes its probe
    mine.unlink(missing_ok=True)
    return views_from_sightings(comm.all_gather(seen))


def sync_checkpoint(comm: Comm, views: CheckpointViews, path: str, purpose: str) -> None:
    """Collective: give every view the files of the checkpoint at ``path`` (a file or a directory) it lacks.
    Raises :class:`CheckpointRestoreError` on every rank when a transfer failed on any."""
    if not _several_processes(comm) or not _is_local(path):
        return
    checkpoint = Path(os.path.abspath(path))
    layout = views.of(checkpoint.parent)
    if layout.shared:
        return
    listings: list[Listing] = comm.all_gather(listing(checkpoint))
    if not any(listings):
        return  # nobody has it: the checks before the load say so
    directory_checkpoint = any(f"{checkpoint.name}/" in name for held in listings for name in held)
    transfers = plan_transfers(listings, layout, lambda relative: _owner(relative, directory_checkpoint, comm))
    rank_zero_info(
        f"fts_dist: sending {len(transfers)} file(s) of '{checkpoint}' ({transfer_bytes(transfers, listings)} bytes) "
        "to the views that lack them."
    )
    problem = None
    for transfer in transfers:
        problem = _take_part(transfer, checkpoint.parent, comm.rank, listings) or problem
    failed = [(rank, message) for rank, message in enumerate(comm.all_gather(problem)) if message]
    if failed:
        rank, message = failed[0]
        raise CheckpointRestoreError(
            f"Cannot {purpose} '{checkpoint}': copying it to the nodes without it failed (rank {rank}: {message}). "
            "Nothing was loaded; put the checkpoint directory on a filesystem every node shares, or free space "
            "on the node that failed."
        )


def listing(checkpoint: Path) -> dict[str, tuple[int, int]]:
    """The files of ``checkpoint`` (with a whole file's manifest beside it) as this rank sees them, by path
    relative to its parent: size and modification time."""
    if checkpoint.is_dir():
        files = [p for p in sorted(checkpoint.rglob("*")) if p.is_file() and ".partial-" not in p.name]
    else:
        files = [p for p in (checkpoint, sidecar_path(checkpoint)) if p.is_file()]
    states = {}
    for file in files:
        stat = file.stat()
        states[file.relative_to(checkpoint.parent).as_posix()] = (stat.st_size, stat.st_mtime_ns)
    return states


def _owner(relative: str, directory_checkpoint: bool, comm: Comm) -> int:
    """The rank that wrote a file: named in a directory's file names, else rank 0."""
    return owner_of(relative, comm.world_size) if directory_checkpoint else 0


def _take_part(transfer: Transfer, parent: Path, rank: int, listings: list[Listing]) -> str | None:
    """This rank's part of one transfer: send it, receive it, or nothing. The problem it met, if any."""
    path = parent / transfer.relative
    if rank == transfer.source:
        for receiver in transfer.receivers:
            _send(path, receiver)
        return None
    if rank in transfer.receivers:
        return _receive(path, transfer.source, listings[transfer.source][transfer.relative])
    return None


def _send(path: Path, destination: int) -> None:
    try:
        handle = open(path, "rb")  # noqa: SIM115 (the error, if any, is sent too)
    except OSError as err:
        dist.send_object_list([f"{path}: {err}"], dst=destination)
        return
    with handle:
        dist.send_object_list([os.fstat(handle.fileno()).st_size], dst=destination)
        while piece := handle.read(_PIECE):
            dist.send_object_list([piece], dst=destination)


def _receive(path: Path, source: int, state: tuple[int, int]) -> str | None:
    """Receive every piece (even after a local failure, so the sender is never left waiting) into a hidden file
    beside ``path``, renamed over it once whole."""
    box: list[object] = [None]
    dist.recv_object_list(box, src=source)
    if isinstance(box[0], str):
        return f"rank {source} could not read it: {box[0]}"
    size, received, problem = int(box[0]), 0, None  # type: ignore[call-overload]
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    handle = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(partial, "wb")  # noqa: SIM115 (closed below, after every piece arrived)
    except OSError as err:
        problem = f"{partial}: {err}"
    while received < size:
        dist.recv_object_list(box, src=source)
        piece = box[0]
        assert isinstance(piece, bytes)
        received += len(piece)
        if handle is not None and problem is None:
            try:
                handle.write(piece)
            except OSError as err:
                problem = f"{partial}: {err}"
    if handle is not None:
        handle.close()
    if problem is None:
        try:
            os.utime(partial, ns=(state[1], state[1]))
            os.replace(partial, path)
        except OSError as err:
            problem = f"{path}: {err}"
    if problem is not None:
        partial.unlink(missing_ok=True)
    return problem


def _write_probe(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        os.fsync(handle.fileno())


def _all_or_none(comm: Comm, work: Callable[[], object], what: str) -> None:
    """Collective: run ``work`` on every rank; raise on every rank if it failed on any."""
    problem = None
    try:
        work()
    except OSError as err:
        problem = f"{type(err).__name__}: {err}"
    failed = [(rank, message) for rank, message in enumerate(comm.all_gather(problem)) if message]
    if failed:
        raise OSError(
            f"fts_dist: probing the checkpoint directory failed on rank {failed[0][0]} ({what}): {failed[0][1]}"
        )


def _several_processes(comm: Comm) -> bool:
    """Whether the ranks are processes of a real process group (what the probe and the transfers need)."""
    return comm.world_size > 1 and dist.is_initialized() and dist.get_world_size() > 1


def _is_local(path: str) -> bool:
    return get_filesystem(path).protocol in ("file", ("file", "local"))
