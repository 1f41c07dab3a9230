"""The schedule coordinator: rank 0 decides every transition, every rank receives the same plan."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fts_dist.coordinator.comm import Comm, LocalComm
from fts_dist.coordinator.decisions import (
    CheckpointRef,
    PhasePlan,
    TransitionSignals,
    build_plan,
    effective_max_depth,
    phase_learning_rates,
    should_transition,
)
from fts_dist.schedule import Schedule


@dataclass
class SchedulerState:
    """What must survive a restart: the current depth and the epoch at which each phase began."""

    depth: int = 0
    phase_start_epochs: list[int] = field(default_factory=lambda: [0])

    def state_dict(self) -> dict[str, Any]:
        return {"depth": self.depth, "phase_start_epochs": list(self.phase_start_epochs)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> SchedulerState:
        return cls(depth=int(state["depth"]), phase_start_epochs=[int(e) for e in state["phase_start_epochs"]])


class ScheduleCoordinator:
    """Owns the schedule and the scheduler state; turns reduced signals into :class:`PhasePlan` s.

    Only rank 0's view counts: :meth:`decide` evaluates the transition rule on rank 0 and broadcasts the result,
    so ranks whose local metrics differ still move together.

    Args:
        schedule: the resolved schedule (exact parameter names), identical on every rank.
        max_depth: the last depth to run, -1 for the whole schedule.
        base_max_lr: learning rate of phases whose ``lr`` is unset (``None``: phase 0's lr / 10).
        epoch_transitions_only: ignore early stopping when deciding transitions.
        restore_best: ask adapters to restore the best checkpoint at each transition.
        comm: the process-group view; :class:`LocalComm` on one process.
    """

    def __init__(
        self,
        schedule: Schedule,
        *,
        max_depth: int = -1,
        base_max_lr: float | None = 1e-5,
        epoch_transitions_only: bool = False,
        restore_best: bool = True,
        comm: Comm | None = None,
    ) -> None:
        self.schedule = schedule
        self.max_depth = effective_max_depth(schedule, max_depth)
        self.base_max_lr = base_max_lr
        self.epoch_transitions_only = epoch_transitions_only
        self.restore_best = restore_best
        self.comm: Comm = comm or LocalComm()
        self.state = SchedulerState()
        self._lrs: tuple[float, ...] | None = None

    @property
    def depth(self) -> int:
        return self.state.depth

    @property
    def depth_remaining(self) -> int:
        return max(self.max_depth - self.state.depth, 0)

    @property
    def in_final_phase(self) -> bool:
        return self.state.depth >= self.max_depth

    def bind_phase0_lr(self, phase0_lr: float) -> None:
        """Fix every phase's group learning rate once the optimizer (and so phase 0's lr) is known."""
        self._lrs = phase_learning_rates(self.schedule, self.base_max_lr, phase0_lr)

    @property
    def phase_lrs(self) -> tuple[float, ...]:
        if self._lrs is None:
            raise RuntimeError("bind_phase0_lr() must be called before phase learning rates are used")
        return self._lrs

    def decide(
        self, signals: TransitionSignals, best_checkpoint: CheckpointRef | None, *, force: bool = False
    ) -> PhasePlan | None:
        """Collective: rank 0 decides from its signals; every rank returns the same plan (and advances) or None.

        ``best_checkpoint`` is restored first when ``restore_best`` is set. ``force`` moves to the next phase
        regardless of the signals (never past ``max_depth``).
        """
        plan = None
        due = force and not self.in_final_phase
        if self.comm.rank == 0 and (
            due
            or should_transition(self.schedule, self.state.depth, self.max_depth, signals, self.epoch_transitions_only)
        ):
            restore = best_checkpoint if self.restore_best else None
            plan = build_plan(self.schedule, self.state.depth + 1, signals.epoch, self.phase_lrs, restore)
        plan = self.comm.broadcast(plan)
        if plan is not None:
            self.state.depth = plan.depth
            self.state.phase_start_epochs.append(plan.epoch)
        return plan

    def jump(self, epoch: int, depth: int) -> PhasePlan:
        """Move to ``depth`` now (every rank calls it with the same arguments), each phase skipped starting at
        ``epoch``; the plan that brings the trainable set and optimizer groups there."""
        for _ in range(self.state.depth, depth):
            self.state.phase_start_epochs.append(epoch)
        self.state.depth = max(self.state.depth, depth)
        return build_plan(self.schedule, depth, epoch, self.phase_lrs, None)

    def resume_plan(self, epoch: int, depth: int | None = None, restore: CheckpointRef | None = None) -> PhasePlan:
        """The plan that rebuilds the trainable set and optimizer groups of ``depth`` (default: the current one),
        e.g. after a restart, restoring ``restore`` first if given."""
        return build_plan(self.schedule, self.state.depth if depth is None else depth, epoch, self.phase_lrs, restore)

    def state_dict(self) -> dict[str, Any]:
        return {**self.state.state_dict(), "schedule": self.schedule.to_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = SchedulerState.from_state_dict(state)
