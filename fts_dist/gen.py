"""gen_ft_schedule: write a module's implicit schedule for the user to edit."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from fts_dist.schedule import dump_schedule, generate_implicit_schedule, schedule_file_name


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
    path = Path(dump_dir) / (file_name or schedule_file_name(type(module).__name__))
    return dump_schedule(generate_implicit_schedule(names), path)
