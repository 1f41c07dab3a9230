"""Pure coordination logic: scheduler state, transition decisions, phase plans."""

from fts_dist.coordinator.comm import Comm, LocalComm
from fts_dist.coordinator.coordinator import ScheduleCoordinator, SchedulerState
from fts_dist.coordinator.decisions import PhasePlan, TransitionSignals, should_transition

__all__ = [
    "Comm",
    "LocalComm",
    "PhasePlan",
    "ScheduleCoordinator",
    "SchedulerState",
    "TransitionSignals",
    "should_transition",
]
