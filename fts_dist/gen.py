"""gen_ft_schedule and gen_block_schedule: write a module's schedule for the user to edit."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from fts_dist.schedule import (
    Schedule,
    dump_schedule,
    generate_block_schedule,
    generate_implicit_schedule,
    schedule_file_name,
)


def gen_ft_schedule(module: torch.nn.Module, dump_dir: str | os.PathLike[str], file_name: str | None = None) -> Path:
    """Write ``module``'s implicit schedule to ``dump_dir/<ModuleClass>_ft_schedule.yaml`` (or ``file_name``) and
    return the path.

    Example::

        >>> import torch
        >>> path = gen_ft_schedule(torch.nn.Linear(2, 2), "/tmp/fts_gen_example")
        >>> path.name
        'Linear_ft_schedule.yaml'
    """
    names = [name for name, _ in module.named_parameters()]
    return _dump(generate_implicit_schedule(names), module, dump_dir, file_name)


def gen_block_schedule(
    module: torch.nn.Module,
    dump_dir: str | os.PathLike[str],
    file_name: str | None = None,
    *,
    blocks_per_phase: int = 1,
    lr: float | None = None,
    lr_decay: float = 1.0,
    epochs_per_phase: int | None = None,
) -> Path:
    """Write ``module``'s block-wise schedule (see :func:`fts_dist.schedule.generate_block_schedule`: the head, then
    its repeated blocks from the top, then the stem, with layer-wise learning-rate decay) where
    :func:`gen_ft_schedule` writes, and return the path.

    Example::

        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
        >>> gen_block_schedule(net, "/tmp/fts_gen_example", lr=1e-4, lr_decay=0.5).name
        'Sequential_ft_schedule.yaml'
    """
    names = [name for name, _ in module.named_parameters()]
    schedule = generate_block_schedule(
        names, blocks_per_phase=blocks_per_phase, lr=lr, lr_decay=lr_decay, epochs_per_phase=epochs_per_phase
    )
    return _dump(schedule, module, dump_dir, file_name)


def _dump(schedule: Schedule, module: torch.nn.Module, dump_dir: str | os.PathLike[str], file_name: str | None) -> Path:
    return dump_schedule(schedule, Path(dump_dir) / (file_name or schedule_file_name(type(module).__name__)))
