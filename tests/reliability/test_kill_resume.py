"""SIGKILL at random moments, mid-write and mid-restore; every resume ends where the uninterrupted run does."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from tests.reliability.driver import (
    every_checkpoint_loads,
    final_weights,
    finished,
    run_with_random_kills,
    start,
)

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[int, dict[str, torch.Tensor]]:
    """Final weights of a run that is never killed, on 1 process and on 2 ranks."""
    runs = {}
    for world in (1, 2):
        out = tmp_path_factory.mktemp(f"uninterrupted{world}")
        attempt = start(out, world)
        assert attempt.returncode == 0, attempt.output[-3000:]
        runs[world] = final_weights(out)
    return runs


def assert_same_weights(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize(("world", "seed"), [(1, 0), (1, 1), (2, 3)])
def test_random_sigkills_then_resume_end_with_the_uninterrupted_weights(
    tmp_path: Path, uninterrupted, world: int, seed: int
) -> None:
    """Every kill lands after that start published a checkpoint, so every start after the first resumes from one;
    an attempt that was not killed must have ended cleanly."""
    expected = uninterrupted[world]
    campaign = run_with_random_kills(tmp_path, world, seed)
    attempts = campaign.attempts
    assert campaign.kills >= 2, [(a.killed, a.returncode) for a in attempts]
    assert [a.resumed for a in attempts] == [False] + [True] * (len(attempts) - 1)
    assert all(a.returncode == 0 for a in attempts if not a.killed), [a.output[-2000:] for a in attempts]
    print(f"kills: {campaign.kills}, starts: {len(attempts)}, resumed: {campaign.resumes}")
    assert_same_weights(final_weights(tmp_path), expected)
    if world == 2:
        assert_same_weights(final_weights(tmp_path, rank=1), expected)
    every_checkpoint_loads(tmp_path)


@pytest.mark.parametrize("nth_save", [2, 5, 9])
def test_a_kill_while_a_checkpoint_is_written_leaves_every_checkpoint_whole(
    tmp_path: Path, uninterrupted, nth_save: int
) -> None:
    killed = start(tmp_path, 1, "--kill-on-save", str(nth_save))
    assert killed.returncode == -9 and not finished(tmp_path)
    partials = sorted(tmp_path.rglob(".*.partial-*"))
    assert len(partials) == 1, "the kill must land inside a checkpoint write"
    assert every_checkpoint_loads(tmp_path), "the checkpoints written before the kill are still there, and whole"
    resumed = start(tmp_path, 1)
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert_same_weights(final_weights(tmp_path), uninterrupted[1])
    assert not partials[0].exists() or partials[0].parent.name != "resume"  # a later save of it cleaned it up


@pytest.mark.parametrize("nth_restore", [1, 2])
def test_a_kill_inside_a_transition_restore_resumes_and_replays_the_transition(
    tmp_path: Path, uninterrupted, nth_restore: int
) -> None:
    killed = start(tmp_path, 1, "--kill-on-restore", str(nth_restore))
    assert killed.returncode == -9 and not finished(tmp_path)
    resumed = start(tmp_path, 1)
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert f"phase {nth_restore} of 2 begins" in resumed.output  # replayed, from the last epoch-end checkpoint
    assert_same_weights(final_weights(tmp_path), uninterrupted[1])


def test_sigterm_to_torchruns_agent_reaches_every_rank_which_stop_together_and_the_same_command_resumes(
    tmp_path: Path, uninterrupted
) -> None:
    """SIGTERM to the launcher (as a scheduler's time limit sends it): torchrun's agent forwards it to both ranks,
    which save one last.ckpt at the next step boundary, well within the agent's grace period before its SIGKILL,
    and exit 85 (the agent itself ends with its SignalException). The same command then resumes from it (a stateful
    loader, so a mid-epoch stop resumes at the next batch) and ends with the uninterrupted run's weights on both
    ranks. (tests/reliability/test_preemption.py signals one rank at chosen places, under every strategy.)"""
    stopped = start(tmp_path, 2, "--stop-signals", "SIGTERM", "--stateful", signal_after_publish=(None, signal.SIGTERM))
    assert stopped.returncode != 0 and not finished(tmp_path)  # the agent re-raises the signal it got
    assert "Sending process" in stopped.output and "closing signal SIGTERM" in stopped.output  # the agent forwards
    assert stopped.output.count("fts_dist: received SIGTERM: stopping at the next step boundary.") == 2
    assert " on SIGTERM; saved " in stopped.output, stopped.output[-3000:]  # rank 0's report of the saved stop
    resumed = start(tmp_path, 2, "--stop-signals", "SIGTERM", "--stateful")
    assert resumed.returncode == 0 and resumed.resumed, resumed.output[-3000:]
    assert_same_weights(final_weights(tmp_path), uninterrupted[2])
    assert_same_weights(final_weights(tmp_path, rank=1), uninterrupted[2])
