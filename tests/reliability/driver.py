"""Start the resumable worker again and again, killing it as told, until it finishes; every start is bounded."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch

from tests.distributed.launch import free_port

WORKER = Path(__file__).parent / "workers" / "resumable.py"
START_TIMEOUT_S = 120


@dataclass
class Attempt:
    returncode: int
    output: str
    seconds: float
    killed: bool


@dataclass
class Campaign:
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def kills(self) -> int:
        return sum(a.killed for a in self.attempts)


def command(out: Path, world: int, *args: str, launcher: str = "torchrun", max_restarts: int = 0) -> list[str]:
    worker = [str(WORKER), "--out", str(out), "--world", str(world), *args]
    if world == 1 or launcher == "lightning":
        return [sys.executable, *worker]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(world),
        "--max-restarts",
        str(max_restarts),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{free_port()}",
        *worker,
    ]


def start(out: Path, world: int, *args: str, kill_after: float | None = None, **kwargs: Any) -> Attempt:
    """One start of the job; with ``kill_after`` it and all its descendants are SIGKILLed then (a preemption)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    started = time.monotonic()
    proc = subprocess.Popen(
        command(out, world, *args, **kwargs),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    killed = False
    try:
        output, _ = proc.communicate(timeout=kill_after if kill_after is not None else START_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        output, _ = proc.communicate()
        killed = kill_after is not None
        if not killed:
            raise AssertionError(f"the job did not end within {START_TIMEOUT_S} s:\n{output[-3000:]}") from None
    return Attempt(proc.returncode, output, time.monotonic() - started, killed)


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants, as a node preemption does (torchrun's workers run in sessions
    of their own, so the process group alone would miss them)."""
    for _ in range(5):  # again, in case a launcher was spawning while we killed
        try:
            root = psutil.Process(pid)
            victims = [*root.children(recursive=True), root]
        except psutil.NoSuchProcess:
            return
        for victim in victims:
            with contextlib.suppress(psutil.NoSuchProcess):
                victim.send_signal(signal.SIGKILL)
        psutil.wait_procs(victims, timeout=5)
        if not root.is_running() or root.status() == psutil.STATUS_ZOMBIE:
            return


def finished(out: Path) -> bool:
    return (out / "final-rank0.pt").exists()


def run_with_random_kills(out: Path, world: int, seed: int, run_seconds: float, kills: int = 3) -> Campaign:
    """SIGKILL the job up to ``kills`` times at random moments within an uninterrupted run's length (startup,
    mid-epoch, transitions and checkpoint writes alike), resuming each time, then let the last start finish."""
    rng = random.Random(seed)
    campaign = Campaign()
    for _ in range(kills):
        attempt = start(out, world, kill_after=rng.uniform(0.3, 0.85) * run_seconds)
        campaign.attempts.append(attempt)
        if finished(out):  # a resumed start has less to do, and can end before its kill
            break
    if not finished(out):
        campaign.attempts.append(start(out, world))
    assert finished(out), campaign.attempts[-1].output[-3000:]
    return campaign


def final_weights(out: Path, rank: int = 0) -> dict[str, torch.Tensor]:
    return torch.load(out / f"final-rank{rank}.pt", weights_only=False)["final"]


def every_checkpoint_loads(out: Path) -> list[Path]:
    """All checkpoint files under ``out`` (raises if any is truncated or corrupt)."""
    files = sorted(out.rglob("*.ckpt"))
    for path in files:
        torch.load(path, weights_only=False)
    return files
