"""The one way a schedule enters fts_dist: read or generate it, check it, resolve it against parameter names.

The callback (on rank 0) and ``fts-dist schedule validate | show`` both call :func:`load_schedule`, so a schedule
file gets the same checks, and each fault the same message, wherever it is read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fts_dist.schedule.implicit import generate_implicit_schedule
from fts_dist.schedule.io import dump_schedule, load_schedule_file, schedule_file_name
from fts_dist.schedule.model import Schedule
from fts_dist.schedule.reinit import apply_implicit_reinit
from fts_dist.schedule.resolve import ResolvedSchedule, resolve_schedule

ScheduleSource = str | os.PathLike[str] | Mapping[Any, Any] | None


def load_schedule(
    source: ScheduleSource,
    param_names: Sequence[str],
    *,
    epoch_transitions_only: bool = False,
    reinit_optim_cfg: Mapping[str, Any] | None = None,
    reinit_lr_cfg: Mapping[str, Any] | None = None,
) -> ResolvedSchedule:
    """Read ``source`` (a YAML path or a mapping in finetuning-scheduler's format; ``None`` generates the implicit
    schedule), check its structure and resolve its names and patterns against ``param_names``.
    ``reinit_optim_cfg`` / ``reinit_lr_cfg`` (the callback's) become every later phase's ``new_optimizer`` /
    ``new_lr_scheduler``.

    Raises:
        FTSConfigError: naming the file, phase, key or pattern at fault and what to do.

    Example::

        >>> resolved = load_schedule({0: {"params": ["head.*"]}, 1: {"params": ["body.*"]}}, ["body.w", "head.w"])
        >>> resolved.schedule[1].params
        ('body.w',)
    """
    if source is None:
        raw: Any = generate_implicit_schedule(param_names).to_dict()
    else:
        raw = source if isinstance(source, Mapping) else load_schedule_file(source)
    if (reinit_optim_cfg or reinit_lr_cfg) and isinstance(raw, Mapping):
        raw = apply_implicit_reinit(raw, reinit_optim_cfg, reinit_lr_cfg, explicit=source is not None)
    schedule = Schedule.from_dict(raw, epoch_transitions_only=epoch_transitions_only)
    return resolve_schedule(schedule, param_names)


def write_schedule_file(resolved: ResolvedSchedule, generated: bool, directory: Path, module_name: str) -> Path:
    """Write what a run executes where the original project does: a generated schedule as
    ``<Module>_ft_schedule.yaml`` (for editing, in the generator's order, as the original writes it), a given one,
    resolved to exact names, as ``<Module>_ft_schedule_resolved.yaml``."""
    name = schedule_file_name(module_name)
    if generated:
        return dump_schedule(resolved.given, directory / name)
    return dump_schedule(resolved.schedule, directory / name.replace(".yaml", "_resolved.yaml"))
