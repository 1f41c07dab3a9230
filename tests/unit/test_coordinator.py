from __future__ import annotations

from typing import Any

import pytest

from fts_dist.coordinator import CheckpointRef, ScheduleCoordinator, TransitionSignals, should_transition
from fts_dist.schedule import Schedule

SCHEDULE = Schedule.from_dict(
    {
        0: {"params": ["a"], "max_transition_epoch": 2},
        1: {"params": ["b"], "lr": 0.5},
        2: {"params": ["c"], "max_transition_epoch": 6},
    }
)


@pytest.mark.parametrize(
    ("depth", "epoch", "es_done", "epoch_only", "expected"),
    [
        (0, 1, False, False, False),  # before phase 0's epoch
        (0, 2, False, False, True),  # at its epoch
        (0, 1, True, False, True),  # early stopping ends it first
        (0, 1, True, True, False),  # ... unless transitions are epoch-only
        (1, 9, False, False, False),  # phase 1 has no epoch: early stopping only
        (1, 9, True, False, True),
        (2, 9, True, False, False),  # the final phase never transitions
    ],
)
def test_transition_rule(depth: int, epoch: int, es_done: bool, epoch_only: bool, expected: bool) -> None:
    signals = TransitionSignals(epoch=epoch, es_phase_complete=es_done)
    assert should_transition(SCHEDULE, depth, -1, signals, epoch_only) is expected


def test_max_depth_makes_an_earlier_phase_final() -> None:
    assert not should_transition(SCHEDULE, 1, 1, TransitionSignals(9, True), False)


class FakeComm:
    """Rank 1 of two: sees rank 0's broadcast, never its own decision."""

    rank, world_size = 1, 2

    def __init__(self, rank0_value: Any) -> None:
        self.rank0_value = rank0_value

    def broadcast(self, obj: Any) -> Any:
        return self.rank0_value

    def all_gather(self, obj: Any) -> list[Any]:
        return [obj, obj]

    def barrier(self) -> None:
        pass


def test_plans_carry_lrs_and_restore_and_advance_state() -> None:
    coordinator = ScheduleCoordinator(SCHEDULE, base_max_lr=1e-3)
    coordinator.bind_phase0_lr(0.1)
    best = CheckpointRef("best.ckpt", 0)
    assert coordinator.decide(TransitionSignals(1), best) is None
    plan = coordinator.decide(TransitionSignals(2), best)
    assert plan is not None
    assert (plan.depth, plan.epoch, plan.restore) == (1, 2, best)
    assert plan.phase_params == (("a",), ("b",)) and plan.phase_lrs == (0.1, 0.5)
    assert coordinator.state.phase_start_epochs == [0, 2]
    assert coordinator.decide(TransitionSignals(3, True), None).phase_lrs == (0.1, 0.5, 1e-3)  # base_max_lr
    assert coordinator.depth_remaining == 0


def test_base_max_lr_none_is_a_tenth_of_phase_zero() -> None:
    coordinator = ScheduleCoordinator(SCHEDULE, base_max_lr=None)
    coordinator.bind_phase0_lr(0.1)
    assert coordinator.phase_lrs[2] == pytest.approx(0.01)


def test_non_zero_ranks_follow_rank_zero_not_their_own_signals() -> None:
    rank0_plan = ScheduleCoordinator(SCHEDULE)
    rank0_plan.bind_phase0_lr(0.1)
    plan = rank0_plan.decide(TransitionSignals(2), None)
    follower = ScheduleCoordinator(SCHEDULE, comm=FakeComm(plan))
    assert follower.decide(TransitionSignals(0), None) == plan  # its own view says "not yet"
    assert follower.depth == 1
    stay = ScheduleCoordinator(SCHEDULE, comm=FakeComm(None))
    assert stay.decide(TransitionSignals(5, True), None) is None and stay.depth == 0


def test_state_round_trips() -> None:
    coordinator = ScheduleCoordinator(SCHEDULE)
    coordinator.bind_phase0_lr(0.1)
    coordinator.decide(TransitionSignals(2), None)
    restored = ScheduleCoordinator(SCHEDULE)
    restored.load_state_dict(coordinator.state_dict())
    assert restored.state == coordinator.state
