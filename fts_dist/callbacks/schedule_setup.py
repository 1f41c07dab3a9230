"""Loading or generating the run's schedule on rank 0 and handing every rank the same result."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.utilities import rank_zero_info

from fts_dist.coordinator import Comm
from fts_dist.errors import FTSConfigError
from fts_dist.schedule import (
    ResolvedSchedule,
    Schedule,
    dump_schedule,
    generate_implicit_schedule,
    load_schedule_file,
    resolve_schedule,
    schedule_file_name,
)


def build_schedule(
    ft_schedule: str | os.PathLike[str] | Mapping[Any, Any] | None,
    module: torch.nn.Module,
    log_dir: Path,
    comm: Comm,
    epoch_transitions_only: bool,
) -> ResolvedSchedule:
    """Collective: rank 0 loads (or generates), validates, resolves and writes the schedule; all ranks get it.

    A configuration error found on rank 0 is raised on every rank, so no rank waits for a peer that gave up.
    """
    outcome: ResolvedSchedule | FTSConfigError | None = None
    if comm.rank == 0:
        try:
            outcome = _build_on_rank_zero(ft_schedule, module, log_dir, epoch_transitions_only)
        except FTSConfigError as err:
            outcome = err
    outcome = comm.broadcast(outcome)
    if isinstance(outcome, FTSConfigError):
        raise FTSConfigError(str(outcome), phase=outcome.phase, key=outcome.key)
    assert outcome is not None
    return outcome


def _build_on_rank_zero(
    ft_schedule: str | os.PathLike[str] | Mapping[Any, Any] | None,
    module: torch.nn.Module,
    log_dir: Path,
    epoch_transitions_only: bool,
) -> ResolvedSchedule:
    names = [name for name, _ in module.named_parameters()]
    if ft_schedule is None:
        schedule = generate_implicit_schedule(names)
        path = dump_schedule(schedule, log_dir / schedule_file_name(type(module).__name__))
        rank_zero_info(f"fts_dist: generated the implicit schedule ({len(schedule)} phases) at {path}.")
        if epoch_transitions_only:
            schedule = Schedule.from_dict(schedule.to_dict(), epoch_transitions_only=True)
    else:
        raw = ft_schedule if isinstance(ft_schedule, Mapping) else load_schedule_file(ft_schedule)
        schedule = Schedule.from_dict(raw, epoch_transitions_only=epoch_transitions_only)
    resolved = resolve_schedule(schedule, names)
    if ft_schedule is not None:
        resolved_name = schedule_file_name(type(module).__name__).replace(".yaml", "_resolved.yaml")
        dump_schedule(resolved.schedule, log_dir / resolved_name)
    return resolved
