"""Pure coordination logic: scheduler state, transition decisions, phase plans."""

from fts_dist.coordinator.comm import Comm, LocalComm
from fts_dist.coordinator.coordinator import ScheduleCoordinator, SchedulerState
from fts_dist.coordinator.decisions import (
    CheckpointRef,
    PhasePlan,
    TransitionSignals,
    describe_stop,
    should_transition,
)
from fts_dist.coordinator.rank_zero import run_on_rank_zero

__all__ = [
    "CheckpointRef",
    "Comm",
    "LocalComm",
    "PhasePlan",
    "ScheduleCoordinator",
    "SchedulerState",
    "TransitionSignals",
    "describe_stop",
    "run_on_rank_zero",
    "should_transition",
]
