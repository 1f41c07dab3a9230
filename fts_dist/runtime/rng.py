"""Every random-number generator a training step may draw from, captured and set back on one rank.

Dropout draws from torch's generator (CPU, and the rank's CUDA device on GPUs); data augmentation often draws from
Python's ``random`` or numpy's global generator. A resumed run reproduces the uninterrupted one bit for bit only
when each rank gets back the states its own generators had when the checkpoint was saved
(:class:`fts_dist.callbacks.rank_states.RankStates` stores them per rank).
"""

from __future__ import annotations

import random
from typing import Any

import torch


def capture_rng() -> dict[str, Any]:
    """This process's generator states: ``torch`` (CPU), ``cuda`` (the current device, when CUDA is initialised),
    ``python`` and ``numpy`` (when installed)."""
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    try:
        import numpy
    except ImportError:
        return states
    states["numpy"] = numpy.random.get_state()
    return states


def restore_rng(states: dict[str, Any]) -> list[str]:
    """Set back what :func:`capture_rng` captured; the generators it could not set (a CUDA state on a process
    without CUDA, numpy state without numpy)."""
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    missed = []
    if "cuda" in states:
        if torch.cuda.is_available():
            torch.cuda.set_rng_state(states["cuda"])
        else:
            missed.append("cuda")
    if "numpy" in states:
        try:
            import numpy
        except ImportError:
            missed.append("numpy")
        else:
            numpy.random.set_state(states["numpy"])
    return missed
