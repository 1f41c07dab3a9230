"""A rank that stops making progress ends the job within ``stall_timeout`` seconds, and every rank says which one.

Without this, a rank hung in a collective (ours, DDP's, DeepSpeed's) or stuck in user code holds every other rank
in its next collective until the process-group timeout (30 minutes under Lightning), and the error names no rank.

The training thread marks its progress (:func:`mark`: a counter and where it is, no I/O). A daemon thread on every
rank publishes that mark to the process group's store each interval and reads every rank's; :class:`StallJudge`
(pure, tested alone) tells, by the watching rank's own clock, which rank has not moved for ``stall_timeout``. Then
the thread writes a report naming the rank that is behind (the fewest marks: a rank blocked in a collective has
passed the mark its stuck peer has not reached) and ends its process with :data:`STALL_EXIT_CODE`; the launcher
ends the rest.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

STALL_EXIT_CODE = 76
_KEY = "fts_dist/progress/{rank}"


@dataclass
class Progress:
    """One rank's last mark: how many marks so far, the step and phase, and where it was."""

    count: int = 0
    step: int = 0
    phase: int = 0
    where: str = "setup"
    done: bool = False

    def describe(self) -> str:
        return f"step {self.step}, phase {self.phase}, {self.where}"


@dataclass
class StallJudge:
    """Which ranks have made no progress for ``timeout`` seconds, by the watcher's own monotonic clock."""

    timeout: float
    _seen: dict[int, tuple[int, float]] = field(default_factory=dict)  # rank -> (count, when it last changed)

    def observe(self, progress: dict[int, Progress], now: float) -> list[int]:
        """Record every rank's progress at ``now``; the ranks not done whose count has not changed for ``timeout``."""
        stalled = []
        for rank, seen in sorted(progress.items()):
            count, since = self._seen.get(rank, (-1, now))
            if seen.count != count:
                self._seen[rank] = (seen.count, now)
            elif not seen.done and now - since >= self.timeout:
                stalled.append(rank)
        return stalled

    def report(self, progress: dict[int, Progress], now: float) -> str:
        """Every rank's last progress, and the rank (or ranks) behind: the fewest marks among those not done."""
        running = {rank: p for rank, p in progress.items() if not p.done}
        fewest = min((p.count for p in running.values()), default=0)
        behind = [rank for rank, p in sorted(running.items()) if p.count == fewest]
        lines = [
            f"fts_dist: stall: no progress for {self.timeout:g} s; rank(s) {behind} behind "
            f"(last at {running[behind[0]].describe()})"
            if behind
            else "fts_dist: stall"
        ]
        for rank, p in sorted(progress.items()):
            idle = now - self._seen.get(rank, (p.count, now))[1]
            state = "done" if p.done else f"{p.count} marks, no change for {idle:.0f} s"
            lines.append(f"fts_dist: stall:   rank {rank}: {p.describe()} ({state})")
        return "\n".join(lines)


class _Beacon:
    """This process's progress, written by the training thread and read by the watchdog."""

    def __init__(self) -> None:
        self.progress = Progress()
        self.lock = threading.Lock()

    def mark(self, where: str, step: int | None = None, phase: int | None = None, done: bool = False) -> None:
        with self.lock:
            current = self.progress
            self.progress = Progress(
                current.count + 1,
                current.step if step is None else step,
                current.phase if phase is None else phase,
                where,
                done,
            )


_BEACON = _Beacon()


def mark(where: str, step: int | None = None, phase: int | None = None) -> None:
    """Note that this rank made progress (cheap; a no-op unless a watchdog runs in this process)."""
    if _WATCHDOG is not None:
        _BEACON.mark(where, step, phase)


class StallWatchdog:
    """Publishes this rank's progress to ``store`` and ends the process when any rank stalls (see the module)."""

    def __init__(self, store: Any, rank: int, world_size: int, timeout: float) -> None:
        self.store, self.rank, self.world_size = store, rank, world_size
        self.judge = StallJudge(timeout)
        self.interval = max(0.2, min(2.0, timeout / 10))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fts-dist-stall-watchdog", daemon=True)

    def start(self) -> None:
        global _WATCHDOG
        _WATCHDOG = self
        _BEACON.mark("training starts")
        self._publish()
        self._thread.start()

    def stop(self) -> None:
        """This rank is done (its peers no longer wait for its marks): the thread ends first, so no older mark can
        overwrite the last one."""
        global _WATCHDOG
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        _BEACON.mark("done", done=True)
        self._publish()
        _WATCHDOG = None

    def _publish(self) -> None:
        with _BEACON.lock:
            progress = _BEACON.progress
        self.store.set(_KEY.format(rank=self.rank), json.dumps(progress.__dict__))

    def _read(self) -> dict[int, Progress]:
        keys = [_KEY.format(rank=rank) for rank in range(self.world_size)]
        present = [key for key in keys if self.store.check([key])]
        return {keys.index(key): Progress(**json.loads(self.store.get(key))) for key in present}

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._publish()
                progress = self._read()
            except Exception as err:  # the store's host (rank 0 under Lightning's launcher or srun) ended
                if not self._stop.is_set():
                    self._end(f"fts_dist: stall: the progress store is gone ({type(err).__name__}): a peer ended.")
                return
            now = time.monotonic()
            if self.judge.observe(progress, now) and not self._stop.is_set():
                self._end(self.judge.report(progress, now))

    def _end(self, report: str) -> None:
        os.write(
            2, (report + f"\nfts_dist: stall: rank {self.rank} ends.\n").encode()
        )  # no lock the stuck thread holds
        os._exit(STALL_EXIT_CODE)


_WATCHDOG: StallWatchdog | None = None


class LocalStore:
    """The store of a single process (no process group): a dict."""

    def __init__(self) -> None:
        self._values: dict[str, str] = {}

    def set(self, key: str, value: str) -> None:
        self._values[key] = value

    def check(self, keys: list[str]) -> bool:
        return all(key in self._values for key in keys)

    def get(self, key: str) -> str:
        return self._values[key]


def process_group_store() -> Any:
    """The default process group's store (every rank reaches it), or a :class:`LocalStore` on one process."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return LocalStore()
    return dist.distributed_c10d._get_default_store()
