"""Elastic restarts under torchrun (``--max-restarts``): a fresh rendezvous namespace for every attempt.

torchrun's agent keeps one TCP store for the whole job, and a restarted worker group finds the previous attempt's
keys in it: gloo then connects to the dead workers' addresses (measured with torch 2.13: ``Gloo connectFullMesh
failed ... Connection refused`` or a hang at start). :func:`init_process_group_for_attempt` initialises the
default process group under a store prefix named after ``TORCHELASTIC_RESTART_COUNT``; Lightning then finds it
initialised and uses it. Call it before building the Trainer; it does nothing outside torchrun.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

_DEFAULT_TIMEOUT = timedelta(minutes=30)


def init_process_group_for_attempt(backend: str | None = None, timeout: timedelta = _DEFAULT_TIMEOUT) -> bool:
    """Initialise the default process group for this torchrun attempt; False (nothing done) outside torchrun or
    when a process group already exists."""
    if "TORCHELASTIC_RESTART_COUNT" not in os.environ or dist.is_initialized():
        return False
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    agent_hosts_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world_size=None if agent_hosts_store else world_size,
        is_master=not agent_hosts_store and rank == 0,
        timeout=timeout,
    )
    attempt_store = dist.PrefixStore(f"fts_dist/attempt-{os.environ['TORCHELASTIC_RESTART_COUNT']}", store)
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    dist.init_process_group(backend, store=attempt_store, rank=rank, world_size=world_size, timeout=timeout)
    return True
