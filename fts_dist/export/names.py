"""The names a checkpoint of a module must hold: every parameter and every persistent buffer.

:class:`~fts_dist.callbacks.FinetuningScheduler` records them in each checkpoint (its state's ``model_names``), so
an export can check that it wrote every one of them, frozen the whole run or thawed late, without building the
model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

_WRAPPER_SEGMENTS = (
    "_fsdp_wrapped_module.",
    "_checkpoint_wrapped_module.",
    "_orig_mod.",
)  # FSDP1, checkpointing, compile


def clean_name(name: str) -> str:
    """``name`` without the segments that wrappers insert (FSDP1, activation checkpointing, ``torch.compile``)."""
    for segment in _WRAPPER_SEGMENTS:
        name = name.replace(segment, "")
    return name


def persistent_buffers(submodule: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``submodule``'s own buffers that ``state_dict()`` holds (not those registered with ``persistent=False``)."""
    return [
        (name, buffer)
        for name, buffer in submodule.named_buffers(recurse=False)
        if buffer is not None and name not in submodule._non_persistent_buffers_set
    ]


def persistent_buffer_names(module: torch.nn.Module) -> list[str]:
    """The buffers ``module.state_dict()`` holds, by their full names (wrappers removed)."""
    return [
        clean_name(f"{prefix}.{name}" if prefix else name)
        for prefix, submodule in module.named_modules()
        for name, _ in persistent_buffers(submodule)
    ]


def model_names(parameter_names: Iterable[str], module: torch.nn.Module) -> dict[str, list[str]]:
    """What :class:`~fts_dist.callbacks.FinetuningScheduler` saves: the parameters (by the names a schedule uses)
    and the persistent buffers."""
    return {"parameters": [clean_name(n) for n in parameter_names], "buffers": persistent_buffer_names(module)}


def recorded_model_names(metadata: Mapping[str, Any]) -> dict[str, list[str]] | None:
    """The names a checkpoint's scheduler state recorded, if any (``metadata``: the checkpoint without tensors)."""
    state = scheduler_state(metadata)
    return dict(state["model_names"]) if state is not None and "model_names" in state else None


def scheduler_state(metadata: Mapping[str, Any]) -> dict[str, Any] | None:
    """The FinetuningScheduler's saved state (depth, schedule, optimizer groups), if the checkpoint has one."""
    for key, state in (metadata.get("callbacks") or {}).items():
        if "FinetuningScheduler" in str(key) and isinstance(state, dict):
            return dict(state)
    return None
