"""Before any collective load touches a checkpoint, every rank checks its part of it, and the ranks agree.

A collective load that one rank cannot finish leaves the others inside the collective: under ZeRO-3 a truncated
partition on one rank aborted gloo (``Received data size doesn't match expected size``) and reset the other
rank's connection, with no fts_dist error. :func:`verify_before_load` runs first, at a phase transition's restore
and at a resume, under every strategy; a bad, missing or foreign file on any rank ends every rank with
:class:`~fts_dist.errors.CheckpointRestoreError`, naming the rank and the file, and nothing is loaded.
"""

from __future__ import annotations

from pathlib import Path

from lightning_fabric.utilities.cloud_io import get_filesystem

from fts_dist.checkpoint_manifest import problems_before_load
from fts_dist.coordinator import Comm
from fts_dist.errors import CheckpointRestoreError

_SHOWN = 3


def verify_before_load(comm: Comm, path: str, purpose: str) -> None:
    """Collective: each rank checks ``path`` as it sees it (:func:`fts_dist.checkpoint_manifest.problems_before_load`),
    then all agree; raise :class:`CheckpointRestoreError` on every rank if any rank found a problem. Remote paths
    (``s3://``...) are left to their loader."""
    problems: list[str] = []
    if get_filesystem(path).protocol in ("file", ("file", "local")):
        try:
            problems = problems_before_load(Path(path), comm.rank, comm.world_size)
        except OSError as err:
            problems = [f"{path}: {err}"]
    found = [(rank, problem) for rank, ranks in enumerate(comm.all_gather(problems)) for problem in ranks]
    if not found:
        return
    shown = "; ".join(f"rank {rank}: {problem}" for rank, problem in found[:_SHOWN])
    more = f" (and {len(found) - _SHOWN} more)" if len(found) > _SHOWN else ""
    raise CheckpointRestoreError(
        f"Cannot {purpose} '{path}': it failed its checks before loading ({shown}{more}). Nothing was loaded and the "
        "checkpoint is left as it is: resume from another checkpoint, or set `restore_best=False`."
    )
