"""One rank raising or killed, or the launcher killed, ends every rank of a 2-rank job, never a hang, and the output
names the failing rank. Elastic restarts resume at the right phase. Every wait is bounded by a condition and a
deadline (a job that hangs fails the test at the deadline), never a wall-time assertion."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import torch

from tests.reliability.driver import command, final_weights, finished, start

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(300)]
ENDS_WITHIN_S = 150  # without fts_dist's handling a dead peer leaves the others waiting 30 minutes


# Every pair of launcher, rank and failure runs (an orthogonal array of four), and under Lightning's launcher both
# kills, since each takes its own path: the launcher (rank 0) names a dead rank 1; rank 1 notices it is orphaned.
FAILURES = [
    ("torchrun", 0, "raise"),
    ("torchrun", 1, "kill"),
    ("lightning", 1, "raise"),
    ("lightning", 0, "kill"),
    ("lightning", 1, "kill"),
]


@pytest.mark.parametrize(("launcher", "rank", "how"), FAILURES, ids=["-".join(map(str, f)) for f in FAILURES])
def test_a_failing_rank_ends_the_job_and_is_named(tmp_path: Path, launcher: str, rank: int, how: str) -> None:
    args = ("--die-at-epoch", "2", "--rank", str(rank), "--how", how)
    attempt = start(tmp_path, 2, *args, launcher=launcher, timeout_s=ENDS_WITHIN_S)  # raises if it does not end
    assert attempt.returncode != 0 and not finished(tmp_path)
    output = attempt.output
    if how == "raise":
        named = f"fts_dist: rank {rank} failed at epoch 2, phase 0: RuntimeError: planted failure on rank {rank}"
        assert named in output
    elif launcher == "torchrun":
        assert re.search(rf"rank\s*:\s*{rank} \(local_rank: {rank}\)", output), output[-3000:]
        assert "Signal 9 (SIGKILL)" in output
    else:  # the survivor names the dead rank, or (rank 0 was the launcher) notices it is orphaned
        named = f"rank(s) [{rank}] on this host are no longer running" in output
        orphaned = rank == 0 and "fts_dist: rank 1: its launcher" in output
        assert named or orphaned, output[-3000:]
    assert wait_for(lambda: not leftover_processes(tmp_path), 30), leftover_processes(tmp_path)


def leftover_processes(tmp_path: Path) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]


def wait_for(condition: Callable[[], bool], deadline_s: float) -> bool:
    """Poll ``condition`` until it holds or ``deadline_s`` passes; whether it held."""
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_a_killed_torchrun_agent_ends_its_workers(tmp_path: Path) -> None:
    """torchrun starts workers in sessions of their own: without fts_dist's watch they would wait 30 min."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    agent = subprocess.Popen(
        command(tmp_path, 2),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    training = wait_for(lambda: (tmp_path / "resume" / "last.ckpt").exists() or agent.poll() is not None, 90)
    assert training and agent.poll() is None  # a checkpoint is out: training is under way on both ranks
    workers = psutil.Process(agent.pid).children(recursive=True)
    agent.kill()  # the agent only, not its workers
    _, alive = psutil.wait_procs(workers, timeout=10)
    output, _ = agent.communicate(timeout=30)
    assert not alive, f"workers still running 10 s after their agent died:\n{output[-3000:]}"
    assert "fts_dist: rank 0: its launcher" in output and "fts_dist: rank 1: its launcher" in output


def test_elastic_restart_resumes_at_the_right_phase_with_the_same_result(tmp_path: Path, tmp_path_factory) -> None:
    reference_dir = tmp_path_factory.mktemp("reference")
    assert start(reference_dir, 2).returncode == 0
    attempt = start(tmp_path, 2, "--die-at-epoch", "4", "--rank", "1", "--how", "kill", max_restarts=1)
    assert attempt.returncode == 0, attempt.output[-3000:]
    assert "fts_dist: resumed at phase 1 of 2." in attempt.output  # killed in phase 1 (epochs 3-4)
    saved = torch.load(tmp_path / "final-rank0.pt", weights_only=False)
    assert saved["depth"] == 2
    for name, value in final_weights(reference_dir).items():
        torch.testing.assert_close(final_weights(tmp_path)[name], value, rtol=0, atol=1e-6)
        torch.testing.assert_close(final_weights(tmp_path, 1)[name], value, rtol=0, atol=1e-6)
