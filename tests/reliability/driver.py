"""Start the resumable worker again and again, killing it as told, until it finishes; every start is bounded."""

from __future__ import annotations

import contextlib
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch

WORKER = Path(__file__).parent / "workers" / "resumable.py"
START_TIMEOUT_S = 120


RESUMED_MARK = "fts_dist test: resuming from "  # the worker prints it when it starts from a checkpoint


@dataclass
class Attempt:
    returncode: int
    output: str
    seconds: float
    killed: bool
    resumed: bool


@dataclass
class Campaign:
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def kills(self) -> int:
        return sum(a.killed for a in self.attempts)

    @property
    def resumes(self) -> int:
        return sum(a.resumed for a in self.attempts)


def command(
    out: Path, world: int, *args: str, launcher: str = "torchrun", max_restarts: int = 0, worker: Path = WORKER
) -> list[str]:
    """The job's command line: ``worker`` (by default the resumable one, which takes ``--world``) on ``world``
    ranks."""
    worker_args = ["--world", str(world)] if worker == WORKER else []
    line = [str(worker), "--out", str(out), *worker_args, *args]
    if world == 1 or launcher == "lightning":
        return [sys.executable, *line]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(world),
        "--max-restarts",
        str(max_restarts),
        "--standalone",  # the agent's store binds port 0: no port picked, released, then raced for
        *line,
    ]


def start(
    out: Path,
    world: int,
    *args: str,
    kill_after_epoch: tuple[int, float] | None = None,
    signal_after_publish: tuple[int | None, signal.Signals] | None = None,
    timeout_s: float = START_TIMEOUT_S,
    **kwargs: Any,
) -> Attempt:
    """One start of the job, bounded by ``timeout_s`` (a job still running then fails the test). With
    ``kill_after_epoch=(epoch, seconds)``, it and all its descendants are SIGKILLed (a preemption) that many seconds
    after this start published a checkpoint to resume from (``resume/last.ckpt`` replaced) of that epoch or a later
    one. With ``signal_after_publish=(rank, signal)``, that rank alone (the launcher, for None) gets the signal once
    this start published its first checkpoint, and the start runs on to its end."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    for leaked in ("MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "RANK", "WORLD_SIZE"):
        env.pop(leaked, None)  # an in-process Lightning run set them; torchrun binds port 0
    log = out / f"attempt-{time.monotonic_ns()}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    last, before = out / "resume" / "last.ckpt", _version(out / "resume" / "last.ckpt")
    started = time.monotonic()
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            command(out, world, *args, **kwargs), env=env, stdout=sink, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        killed, seen = False, before
        deadline = started + timeout_s
        while proc.poll() is None and time.monotonic() < deadline:
            version = _version(last)
            published = version not in (None, before)
            if kill_after_epoch is not None and published and version != seen:
                seen = version
                if _epoch(last) >= kill_after_epoch[0]:
                    time.sleep(kill_after_epoch[1])
                    killed = proc.poll() is None
                    break
            if signal_after_publish is not None and published:
                signal_rank(proc.pid, *signal_after_publish)
                signal_after_publish = None
            time.sleep(0.05)
        if proc.poll() is None and not killed:
            kill_tree(proc.pid)
            raise AssertionError(f"the job did not end within {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")
        if killed:
            kill_tree(proc.pid)
        proc.wait()
    output = log.read_text()
    return Attempt(proc.returncode, output, time.monotonic() - started, killed, RESUMED_MARK in output)


def start_two_nodes(
    out: Path, checkpoints: Path, worker: Path, *args: str, timeout_s: float = START_TIMEOUT_S
) -> Attempt:
    """One start of ``worker`` as two torchrun agents of one rank each on this host, like two nodes without a shared
    filesystem: the second runs in a mount namespace of its own where ``checkpoints`` is ``out/node1`` (bind-mounted,
    so it outlives the start, like a node's local disk), while the first sees the real directory. Root only."""
    node1 = out / "node1"
    for directory in (checkpoints, node1):
        directory.mkdir(parents=True, exist_ok=True)
    with socket.socket() as probe:  # the store's port: picked, released, then bound by node 0's agent
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for leaked in ("MASTER_PORT", "MASTER_ADDR", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "RANK", "WORLD_SIZE"):
        env.pop(leaked, None)
    agent = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"]
    agent += ["--master-addr", "127.0.0.1", "--master-port", str(port)]
    line = [str(worker), "--out", str(out), "--checkpoints", str(checkpoints), *args]
    own_disk = f"mount --bind {shlex.quote(str(node1))} {shlex.quote(str(checkpoints))} && exec "
    commands = [
        [*agent, "--node-rank", "0", *line],
        ["unshare", "-m", "sh", "-c", own_disk + shlex.join([*agent, "--node-rank", "1", *line])],
    ]
    started = time.monotonic()
    logs = [out / f"node{n}-{time.monotonic_ns()}.log" for n in (0, 1)]
    procs = []
    for command_line, log in zip(commands, logs, strict=True):
        with open(log, "w") as sink:
            procs.append(subprocess.Popen(command_line, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                          start_new_session=True))  # fmt: skip
    deadline = started + timeout_s
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    hung = [p for p in procs if p.poll() is None]
    for proc in hung:
        kill_tree(proc.pid)
    for proc in procs:
        proc.wait()
    output = "".join(f"--- node {n} ---\n{log.read_text()}" for n, log in enumerate(logs))
    if hung:
        raise AssertionError(f"the two-node job did not end within {timeout_s:.0f} s:\n{output[-3000:]}")
    code = next((p.returncode for p in procs if p.returncode), 0)
    return Attempt(code, output, time.monotonic() - started, False, RESUMED_MARK in output)


def can_give_a_process_its_own_mounts() -> bool:
    """Whether ``unshare -m`` with a bind mount works here (root, or CAP_SYS_ADMIN)."""
    try:
        done = subprocess.run(["unshare", "-m", "sh", "-c", "mount --bind / /mnt"], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def signal_rank(root: int, rank: int | None, number: signal.Signals) -> None:
    """Send ``number`` to the worker of global rank ``rank`` among ``root``'s descendants; to ``root`` itself (the
    launcher, e.g. torchrun's agent) when ``rank`` is None."""
    if rank is None:
        os.kill(root, number)
        return
    for child in psutil.Process(root).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.environ().get("RANK") == str(rank) and "--out" in child.cmdline():
                child.send_signal(number)
                return
    raise AssertionError(f"no worker of rank {rank} under pid {root}")


def _version(path: Path) -> tuple[int, int] | None:
    """What identifies one published checkpoint file: its inode and modification time."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def _epoch(path: Path) -> int:
    """The epoch a published checkpoint was saved in (published by an atomic rename: never read half-written)."""
    return int(torch.load(path, map_location="cpu", weights_only=False)["epoch"])


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


def run_with_random_kills(out: Path, world: int, seed: int, kills: int = 3, epochs: int = 8) -> Campaign:
    """SIGKILL the job ``kills`` times, resuming each time, then let the last start finish. Each kill lands at a
    random moment within one epoch's time (0.6 s) after the job published the checkpoint of a randomly drawn epoch
    (mid-epoch, in a transition or in the next checkpoint write); the drawn epochs grow and leave the last two of
    ``epochs`` alone, so every kill lands before the run's end however fast this machine is."""
    rng = random.Random(seed)
    campaign = Campaign()
    for epoch in sorted(rng.sample(range(epochs - 2), kills)):
        campaign.attempts.append(start(out, world, kill_after_epoch=(epoch, rng.uniform(0.0, 0.6))))
        if finished(out):  # only where a machine runs an epoch in under the drawn moment; the test then fails
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
