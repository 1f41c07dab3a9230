"""The coordinated stop's parts (``fts_dist.runtime.preemption``): which signals, handlers that only set a flag,
the SLURM requeue, and what torchrun's agent must forward."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fts_dist.errors import FTSConfigError
from fts_dist.runtime.launcher import agent_environment
from fts_dist.runtime.preemption import StopRequest, any_rank, requeue_slurm_job, signal_names


def test_signal_names_come_from_the_argument_else_the_environment() -> None:
    assert signal_names(["usr1", "SIGTERM", "SIGUSR1"]) == ("SIGUSR1", "SIGTERM")
    assert signal_names(None, {"FTS_DIST_STOP_SIGNALS": "SIGUSR1, HUP"}) == ("SIGUSR1", "SIGHUP")
    assert signal_names(None, {}) == ()
    with pytest.raises(ValueError, match=r"unknown signal\(s\) \['SIGNOPE'\]"):
        signal_names("SIGNOPE")


def test_a_bad_signal_name_is_refused_when_the_callback_is_built() -> None:
    from fts_dist import FinetuningScheduler

    with pytest.raises(FTSConfigError, match="`stop_signals`: unknown signal"):
        FinetuningScheduler(stop_signals=["SIGWHATEVER"])


def test_a_handled_signal_only_sets_the_flag_and_the_old_handler_comes_back(capsys) -> None:
    request = StopRequest(["SIGUSR1", "SIGHUP"])
    before = signal.getsignal(signal.SIGUSR1)
    assert request.install()
    os.kill(os.getpid(), signal.SIGUSR1)  # would end the process with the default handler
    os.kill(os.getpid(), signal.SIGHUP)  # a second one: the first is kept
    assert request.received == "SIGUSR1"
    said = capsys.readouterr().err
    assert "received SIGUSR1: stopping at the next step boundary" in said
    assert "received SIGHUP again: already stopping" in said
    request.uninstall()
    assert signal.getsignal(signal.SIGUSR1) == before
    assert any_rank(True) and not any_rank(False)  # one process: the flag itself


def test_slurm_jobs_are_requeued_once_by_id_and_failures_are_said() -> None:
    calls: list[list[str]] = []

    def scontrol(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(args)
        return subprocess.CompletedProcess(args, 0 if args[-1] != "13" else 1, "", "Invalid job id")

    assert requeue_slurm_job({}, run=scontrol) is None and calls == []  # not under SLURM
    assert "requeued SLURM job 12" in (requeue_slurm_job({"SLURM_JOB_ID": "12"}, run=scontrol) or "")
    assert calls == [["scontrol", "requeue", "12"]]
    array = {"SLURM_JOB_ID": "99", "SLURM_ARRAY_JOB_ID": "40", "SLURM_ARRAY_TASK_ID": "3"}
    requeue_slurm_job(array, run=scontrol)
    assert calls[-1] == ["scontrol", "requeue", "40_3"]  # an array task by its own id
    assert "failed: Invalid job id" in (requeue_slurm_job({"SLURM_JOB_ID": "13"}, run=scontrol) or "")


def test_torchruns_agent_forwards_the_stop_signals_on_top_of_its_own() -> None:
    assert agent_environment({}) == {}
    assert agent_environment({"FTS_DIST_STOP_SIGNALS": "SIGUSR1,SIGTERM"}) == {
        "TORCHELASTIC_SIGNALS_TO_HANDLE": "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
    }
    assert agent_environment({"FTS_DIST_STOP_SIGNALS": "SIGUSR1", "TORCHELASTIC_SIGNALS_TO_HANDLE": "SIGTERM"}) == {}


def test_the_gloo_process_group_is_destroyed_at_exit_before_interpreter_teardown(tmp_path) -> None:
    """An atexit hook registered first runs last: it sees the group already gone, and the exit code is the run's."""
    script = tmp_path / "exit.py"
    script.write_text(
        "import atexit, sys, torch.distributed as dist\n"
        "from fts_dist.runtime.clean_exit import leave_process_group_at_exit\n"
        "atexit.register(lambda: print('up at teardown:', dist.is_initialized(), flush=True))\n"
        "dist.init_process_group('gloo', init_method=f'file://{sys.argv[1]}', rank=0, world_size=1)\n"
        "leave_process_group_at_exit()\n"
        "leave_process_group_at_exit()  # once per process however often it is asked\n"
        "raise SystemExit(85)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "rendezvous")],
        capture_output=True, text=True, timeout=120, env=env, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert done.returncode == 85, done.stderr[-2000:]
    assert "up at teardown: False" in done.stdout, done.stdout + done.stderr[-2000:]
