"""Pure transition logic: from schedule, depth and this epoch's signals to a phase plan or nothing."""

from __future__ import annotations

from dataclasses import dataclass

from fts_dist.schedule import Schedule
from fts_dist.schedule.reinit import OptimizerReinit, SchedulerReinit


@dataclass(frozen=True)
class TransitionSignals:
    """What the Lightning hooks observed, reduced to rank 0, at the start of a training epoch."""

    epoch: int
    es_phase_complete: bool = False


@dataclass(frozen=True)
class CheckpointRef:
    """A checkpoint to restore and the depth at which it was written (which decides its optimizer groups)."""

    path: str
    depth: int


@dataclass(frozen=True)
class PhasePlan:
    """Everything every rank needs to enter phase ``depth``; small and picklable so rank 0 can broadcast it.

    ``phase_params[d]`` and ``phase_lrs[d]`` describe phase ``d`` for ``d`` in ``0..depth``; adapters thaw the
    phases not yet thawed and add an optimizer group for each phase the optimizer lacks. ``phase_lrs[0]`` is
    unused: phase 0's groups come from the module's own ``configure_optimizers``. ``phase_freeze[d]`` names what
    phase ``d`` freezes again and ``phase_lr_scales[d]`` the factor on earlier groups' learning rates as it starts
    (both empty: none). ``phase_optimizers[d]`` and ``phase_lr_schedulers[d]`` are phase ``d``'s ``new_optimizer`` and
    ``new_lr_scheduler`` (empty: no phase has one). ``restore`` names the checkpoint to load first, if any.
    """

    depth: int
    epoch: int
    phase_params: tuple[tuple[str, ...], ...]
    phase_lrs: tuple[float, ...]
    restore: CheckpointRef | None = None
    phase_freeze: tuple[tuple[str, ...], ...] = ()
    phase_lr_scales: tuple[float, ...] = ()
    phase_optimizers: tuple[OptimizerReinit | None, ...] = ()
    phase_lr_schedulers: tuple[SchedulerReinit | None, ...] = ()

    @property
    def trainable(self) -> tuple[str, ...]:
        """Every parameter that trains at ``depth``."""
        return tuple(name for phase in self.trainable_phases(self.depth) for name in phase)

    def trainable_phases(self, depth: int) -> tuple[tuple[str, ...], ...]:
        """Each phase's parameters that train at ``depth`` (what earlier phases thawed less what they froze again),
        phase 0 to ``depth``."""
        frozen = {name for phase in self.phase_freeze[: depth + 1] for name in phase}
        return tuple(tuple(n for n in phase if n not in frozen) for phase in self.phase_params[: depth + 1])

    def optimizer_phase(self, depth: int) -> int:
        """The phase whose optimizer trains at ``depth``: the last one up to ``depth`` with ``new_optimizer`` (0: the
        optimizer from ``configure_optimizers``)."""
        return _last_with(self.phase_optimizers, depth)

    def lr_scheduler_phase(self, depth: int) -> int:
        """The phase whose LR scheduler runs at ``depth``: the last one up to ``depth`` with ``new_lr_scheduler``."""
        return _last_with(self.phase_lr_schedulers, depth)

    def lr_scale(self, depth: int) -> float:
        """The factor phase ``depth`` applies to the learning rates of the groups before its own."""
        return self.phase_lr_scales[depth] if depth < len(self.phase_lr_scales) else 1.0


def _last_with(specs: tuple[object | None, ...], depth: int) -> int:
    return max((d for d, spec in enumerate(specs[: depth + 1]) if spec is not None), default=0)


def effective_max_depth(schedule: Schedule, max_depth: int) -> int:
    """``max_depth`` of -1, or beyond the schedule, means the whole schedule."""
    return schedule.final_depth if max_depth < 0 or max_depth > schedule.final_depth else max_depth


def should_transition(
    schedule: Schedule, depth: int, max_depth: int, signals: TransitionSignals, epoch_transitions_only: bool
) -> bool:
    """Whether the phase at ``depth`` ends before the epoch in ``signals`` starts.

    Phase ``depth`` ends when its ``max_transition_epoch`` is reached (``0 <= max_transition_epoch <= epoch``)
    or, unless ``epoch_transitions_only``, when early stopping judged it complete. The last phase never
    transitions: early stopping or ``max_epochs`` end the run there.
    """
    if depth >= effective_max_depth(schedule, max_depth):
        return False
    epoch_due = 0 <= schedule[depth].max_transition_epoch <= signals.epoch
    if epoch_transitions_only:
        return epoch_due
    return epoch_due or signals.es_phase_complete


def phase_learning_rates(schedule: Schedule, base_max_lr: float | None, phase0_lr: float) -> tuple[float, ...]:
    """Initial learning rate of each phase's new optimizer group: the schedule's ``lr``, else ``base_max_lr``,
    else (``base_max_lr=None``) a tenth of phase 0's optimizer learning rate, as in the original project."""
    default = base_max_lr if base_max_lr is not None else phase0_lr * 0.1
    return tuple(
        phase0_lr if d == 0 else (p.lr if p.lr is not None else default) for d, p in enumerate(schedule.phases)
    )


def build_plan(
    schedule: Schedule, depth: int, epoch: int, lrs: tuple[float, ...], restore: CheckpointRef | None
) -> PhasePlan:
    """The plan that brings any rank to ``depth`` (from any lower depth)."""
    phases = schedule.phases[: depth + 1]
    return PhasePlan(
        depth=depth,
        epoch=epoch,
        phase_params=tuple(p.params for p in phases),
        phase_lrs=lrs[: depth + 1],
        restore=restore,
        phase_freeze=tuple(p.freeze for p in phases) if any(p.freeze for p in phases) else (),
        phase_lr_scales=tuple(p.scale_lrs or 1.0 for p in phases) if any(p.scale_lrs for p in phases) else (),
        phase_optimizers=tuple(p.new_optimizer for p in phases) if any(p.new_optimizer for p in phases) else (),
        phase_lr_schedulers=(
            tuple(p.new_lr_scheduler for p in phases) if any(p.new_lr_scheduler for p in phases) else ()
        ),
    )


def describe_stop(
    *,
    depth: int,
    max_depth: int,
    final_depth: int,
    epoch: int,
    max_epochs: int | None,
    early_stop: tuple[int, str] | None,
) -> str:
    """Why training stopped at ``epoch`` in phase ``depth``: early stopping (its epoch and message) in the last phase
    to run, ``max_epochs``, or something else; and whether ``max_depth`` left phases of the schedule unrun.

    Example::

        >>> describe_stop(depth=1, max_depth=1, final_depth=2, epoch=5, max_epochs=5, early_stop=None)
        'max_depth (1) was reached (1 phase(s) of the schedule not run) and max_epochs (5) came'
    """
    unrun = final_depth - max_depth
    prefix = (
        f"max_depth ({max_depth}) was reached ({unrun} phase(s) of the schedule not run) and "
        if (depth >= max_depth and unrun > 0)
        else ""
    )
    if early_stop is not None:
        stopped_epoch, message = early_stop
        return f"{prefix}early stopping ended the last phase at epoch {stopped_epoch}: {message.rstrip('.')}"
    if max_epochs is not None and max_epochs >= 0 and epoch >= max_epochs:
        return f"{prefix}max_epochs ({max_epochs}) came" + ("" if depth >= max_depth else ", before the last phase")
    return f"{prefix}training stopped at epoch {epoch} (another callback, or an interruption)"
