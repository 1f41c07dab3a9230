"""A signal stops a 2-rank run at a step boundary, and the same command resumes it to the uninterrupted run's
weights bit for bit, under DDP, FSDP2 and ZeRO-2, on a model with dropout and Python / numpy noise in every step.

Each campaign sends SIGUSR1 to one rank only: at a random training step, during a validation, during a
transition, during a save, and twice in one stop (the second during the stop's own save). Several stops share one
campaign, so each strategy's 2-rank jobs check several of them."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from tests.reliability.driver import Attempt, finished, start

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


@pytest.mark.parametrize("strategy", sorted(CAMPAIGNS))
def test_signals_stop_every_rank_together_and_the_same_command_resumes_bit_for_bit(
    tmp_path: Path, strategy: str
) -> None:
    uninterrupted = run(tmp_path / "uninterrupted", strategy)
    assert uninterrupted.returncode == 0, uninterrupted.output[-3000:]
    expected = final(tmp_path / "uninterrupted", 0)
    assert expected["depth"] == 2  # the schedule's two transitions both ran

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

    for rank in (0, 1):
        got = final(out, rank)
        assert got["depth"] == expected["depth"]
        assert got["final"].keys() == expected["final"].keys()
        for name, value in expected["final"].items():
            assert torch.equal(got["final"][name], value), f"rank {rank}, {name}, after {CAMPAIGNS[strategy]}"
