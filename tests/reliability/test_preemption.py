"""A signal stops a 2-rank run at a step boundary, and the same command resumes it to the uninterrupted run's
weights bit for bit, under DDP, FSDP2 and ZeRO-2, on a model with dropout and Python / numpy noise in every step;
and the same holds for two nodes without a shared filesystem.

Each campaign sends SIGUSR1 to one rank only: at a random training step, during a validation, during a
transition, during a save, and twice in one stop (the second during the stop's own save). Several stops share one
campaign, so each strategy's 2-rank jobs check several of them. The uninterrupted run of each strategy is shared by
both tests."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from tests.reliability.driver import Attempt, can_give_a_process_its_own_mounts, finished, start, start_two_nodes

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(600)]

PREEMPTIBLE = Path(__file__).parent / "workers" / "preemptible.py"
STEP = random.randint(0, 11)  # epochs 0 and 1 (6 steps an epoch); each run of the suite stops at another step

CAMPAIGNS = {
    "ddp": [[f"step:{STEP}:1"], ["validation:2:0"], ["transition:1:1"], ["save:4:0"]],
    "fsdp2": [["step:9:1", "save:1:1"], ["transition:2:0"]],  # the second signal arrives during the stop's save
    "zero2": [["validation:2:1"], ["transition:1:0"]],
}


def run(out: Path, strategy: str, *stops: str) -> Attempt:
    stop_args = [arg for stop in stops for arg in ("--stop-at", stop)]
    return start(out, 2, "--strategy", strategy, *stop_args, worker=PREEMPTIBLE)


def final(out: Path, rank: int) -> dict:
    return torch.load(out / f"final-rank{rank}.pt", weights_only=False)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Each strategy's uninterrupted 2-rank run (one node): rank 0's final weights and depth, run once."""
    runs: dict[str, dict] = {}

    def of(strategy: str) -> dict:
        if strategy not in runs:
            out = tmp_path_factory.mktemp(f"uninterrupted-{strategy}")
            attempt = run(out, strategy)
            assert attempt.returncode == 0, attempt.output[-3000:]
            runs[strategy] = final(out, 0)
            assert runs[strategy]["depth"] == 2  # the schedule's two transitions both ran
        return runs[strategy]

    return of


def assert_final_weights(out: Path, expected: dict, context: str) -> None:
    for rank in (0, 1):
        got = final(out, rank)
        assert got["depth"] == expected["depth"]
        assert got["final"].keys() == expected["final"].keys()
        for name, value in expected["final"].items():
            assert torch.equal(got["final"][name], value), f"rank {rank}, {name}, {context}"


@pytest.mark.parametrize("strategy", sorted(CAMPAIGNS))
def test_signals_stop_every_rank_together_and_the_same_command_resumes_bit_for_bit(
    tmp_path: Path, strategy: str, uninterrupted
) -> None:
    expected = uninterrupted(strategy)
    out = tmp_path / "stopped"
    for nth, stops in enumerate(CAMPAIGNS[strategy]):
        stopped = run(out, strategy, *stops)
        where = f"{stops} (campaign {CAMPAIGNS[strategy]})"
        assert stopped.returncode != 0 and not finished(out), f"{where}:\n{stopped.output[-3000:]}"
        assert stopped.resumed == (nth > 0), where
        for stop in stops:
            place, at, rank = stop.split(":")
            assert f"rank {rank} signals itself in {place} {at}" in stopped.output, where
        assert "exitcode  : 85" in stopped.output, f"{where}:\n{stopped.output[-3000:]}"  # torchrun's summary
        assert "fts_dist: stopped at step " in stopped.output and "saved" in stopped.output, where
        if len(stops) > 1:
            assert "again: already stopping" in stopped.output, where
    resumed = run(out, strategy)
    assert resumed.returncode == 0 and resumed.resumed, resumed.output[-3000:]
    assert_final_weights(out, expected, f"after {CAMPAIGNS[strategy]}")


@pytest.mark.skipif(not can_give_a_process_its_own_mounts(), reason="needs `unshare -m` and mount (root)")
@pytest.mark.parametrize("strategy", sorted(CAMPAIGNS))
def test_two_nodes_without_a_shared_filesystem_restore_stop_and_resume_to_the_same_weights(
    tmp_path: Path, strategy: str, uninterrupted
) -> None:
    """Two torchrun agents, the second in a mount namespace where the checkpoint directory is a disk of its own:
    both transitions restore the best checkpoint (restore_best), a signal stops the run after the first, and the
    same command resumes it; the final weights equal the one-node run's, bit for bit."""
    expected = uninterrupted(strategy)
    checkpoints, node1 = tmp_path / "checkpoints", tmp_path / "node1"
    stopped = start_two_nodes(tmp_path, checkpoints, PREEMPTIBLE, "--strategy", strategy, "--stop-at", "validation:3:1")
    assert stopped.returncode != 0 and not finished(tmp_path), stopped.output[-3000:]
    assert "is not shared (ranks [0] see one copy; ranks [1] see another)" in stopped.output
    assert "phase 1 of 2 begins at epoch 3" in stopped.output and "fts_dist: stopped at step " in stopped.output
    assert stopped.output.count("to the views that lack them") == 1, stopped.output[-3000:]  # phase 1's restore

    resumed = start_two_nodes(tmp_path, checkpoints, PREEMPTIBLE, "--strategy", strategy)
    assert resumed.returncode == 0 and resumed.resumed, resumed.output[-3000:]
    assert resumed.output.count("to the views that lack them") == 2  # the resume, and phase 2's restore
    if strategy == "ddp":  # node 1 never sees rank 0's last.ckpt: Lightning finds nothing there to resume from
        assert "every rank resumes from rank 0's" in resumed.output and "(rank 1 had found None)" in resumed.output
    assert_final_weights(tmp_path, expected, "two nodes without a shared filesystem")
    left = {p.name for p in (node1 / "best").iterdir()} - {p.name for p in (checkpoints / "best").iterdir()}
    assert not left, f"node 1 kept checkpoints rank 0 removed: {left}"
