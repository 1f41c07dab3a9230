"""A preemption or time-limit signal stops the run at the next step boundary, on every rank together.

Lightning's SLURM handler saves inside the signal handler, at whatever bytecode the main thread was running: under
DDP, FSDP or DeepSpeed that save is collective, and one rank may be inside another collective (Lightning issue
21406). Here a signal only sets a flag (:class:`StopRequest`); at the next step boundary the ranks agree
(:func:`any_rank`) and save one checkpoint together, then the run ends with :data:`PREEMPTED_EXIT_CODE`. Under
SLURM, rank 0 requeues the job (:func:`requeue_slurm_job`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import Any

PREEMPTED_EXIT_CODE = 85
SIGNALS_ENV = "FTS_DIST_STOP_SIGNALS"


class PreemptedStop(SystemExit):
    """Ends ``trainer.fit`` after the coordinated save; the process exits with :data:`PREEMPTED_EXIT_CODE`."""

    def __init__(self, message: str) -> None:
        super().__init__(PREEMPTED_EXIT_CODE)
        self.message = message


def signal_names(requested: Sequence[str] | str | None, env: Mapping[str, str] = os.environ) -> tuple[str, ...]:
    """The signals to stop on: ``requested`` (names like ``SIGUSR1``), else ``$FTS_DIST_STOP_SIGNALS``
    (comma-separated), else none. Raises ``ValueError`` naming an unknown signal."""
    if requested is None:
        requested = env.get(SIGNALS_ENV, "")
    names = [n.strip().upper() for n in (requested.split(",") if isinstance(requested, str) else requested)]
    names = [n if n.startswith("SIG") else f"SIG{n}" for n in names if n]
    unknown = [n for n in names if not isinstance(getattr(signal, n, None), signal.Signals)]
    if unknown:
        raise ValueError(f"unknown signal(s) {unknown}; name them like SIGUSR1, SIGTERM, SIGHUP")
    return tuple(dict.fromkeys(names))


class StopRequest:
    """Handlers that only record which signal arrived; :meth:`uninstall` puts the previous handlers back."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self.received: str | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def install(self) -> bool:
        """Install the handlers (only the main thread may); False where that is not possible."""
        if threading.current_thread() is not threading.main_thread():
            return False
        for name in self.names:
            number = signal.Signals[name]
            self._previous[number] = signal.signal(number, self._handle)
        return True

    def uninstall(self) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous.clear()

    def _handle(self, number: int, frame: FrameType | None) -> None:
        name = signal.Signals(number).name
        if self.received is None:
            self.received = name
            sys.stderr.write(f"fts_dist: received {name}: stopping at the next step boundary.\n")
        else:
            sys.stderr.write(f"fts_dist: received {name} again: already stopping at the next step boundary.\n")


def any_rank(flag: bool) -> bool:
    """Collective: whether ``flag`` is set on any rank (one small all-reduce; the flag alone on one process)."""
    import torch
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def requeue_slurm_job(env: Mapping[str, str] = os.environ, run: Callable[..., Any] = subprocess.run) -> str | None:
    """Under SLURM, ``scontrol requeue`` this job (call on one rank); a line saying what happened, or None outside
    SLURM."""
    job = env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID")
    job_id = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}" if job else env.get("SLURM_JOB_ID")
    if not job_id:
        return None
    try:
        result = run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as err:
        return f"fts_dist: could not requeue SLURM job {job_id}: {err}"
    if result.returncode != 0:
        return f"fts_dist: `scontrol requeue {job_id}` failed: {result.stderr.strip()}"
    return f"fts_dist: requeued SLURM job {job_id}; the same command resumes from the checkpoint."
