"""A rank whose launcher died must end, not wait in a collective until the process-group timeout (30 min).

torchrun starts each worker in a session of its own, so a SIGKILL of the agent (an OOM kill, a preemption that
hits the agent first) leaves the workers running; Lightning's own launcher leaves its child ranks behind the same
way when rank 0 dies. :func:`_watch_launcher` starts a daemon thread that ends this process with
``_ORPHANED_EXIT_CODE`` within about a second of its parent's death, naming the rank. :class:`RankLiveness`
remembers where every rank runs, so a failing rank can name the peers that are gone.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time

from fts_dist.coordinator import Comm

_ORPHANED_EXIT_CODE = 75
_watching: set[int] = set()


def _launched_by_a_launcher(local_rank: int) -> bool:
    """True for torchrun workers and for the child ranks Lightning's launcher starts (not for a user's main
    process, which may legitimately outlive its shell under nohup)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or local_rank > 0


def _watch_launcher(rank: int, interval_s: float = 0.5) -> bool:
    """Start watching this process's parent (once per process); True if a watch runs."""
    if os.getpid() in _watching:
        return True
    parent = os.getppid()
    if parent <= 1:
        return False
    _watching.add(os.getpid())

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent:
                sys.stderr.write(
                    f"fts_dist: rank {rank}: its launcher (pid {parent}) is gone; ending this rank instead of "
                    "waiting in a collective for the process-group timeout.\n"
                )
                sys.stderr.flush()
                os._exit(_ORPHANED_EXIT_CODE)

    threading.Thread(target=watch, name="fts-dist-launcher-watch", daemon=True).start()
    return True


def _process_is_gone(pid: int) -> bool:
    """True when ``pid`` has exited (a zombie awaiting its parent counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
    except OSError:  # no procfs: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def _gone_ranks(locations: list[tuple[str, int]], host: str) -> list[int]:
    """Ranks on ``host`` (from ``(host, pid)`` per rank) whose process has exited."""
    return [rank for rank, (where, pid) in enumerate(locations) if where == host and _process_is_gone(pid)]


class RankLiveness:
    """Where every rank of a multi-process run lives, learned once at setup (a collective), and who is gone."""

    def __init__(self) -> None:
        self.locations: list[tuple[str, int]] = []  # (host, pid) per global rank

    def start(self, comm: Comm, local_rank: int) -> str | None:
        """Collective: watch the launcher (launched ranks) and learn every rank's host and pid. Returns the line
        that maps ranks to processes (launchers report a dead worker by pid or local rank), or None on one
        process."""
        if comm.world_size <= 1:
            return None
        if _launched_by_a_launcher(local_rank):
            _watch_launcher(comm.rank)
        self.locations = [(str(host), int(pid)) for host, pid in comm.all_gather((socket.gethostname(), os.getpid()))]
        return "fts_dist: ranks: " + ", ".join(f"rank {r} = {h} pid {p}" for r, (h, p) in enumerate(self.locations))

    def describe_failure(self) -> str | None:
        """After an exception: which ranks on this host are no longer running, or None."""
        gone = _gone_ranks(self.locations, socket.gethostname())
        return f"rank(s) {gone} on this host are no longer running" if gone else None
