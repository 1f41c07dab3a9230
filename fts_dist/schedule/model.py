"""The schedule as plain, validated data: phases of parameter names, transition epochs and learning rates."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fts_dist.errors import FTSConfigError
from fts_dist.schedule.numbers import non_negative_number
from fts_dist.schedule.reinit import OptimizerReinit, SchedulerReinit

_PHASE_KEYS = ("params", "max_transition_epoch", "lr", "new_optimizer", "new_lr_scheduler", "freeze", "scale_lrs")


@dataclass(frozen=True)
class Phase:
    """One fine-tuning phase: what thaws, until which epoch at most, at which learning rate.

    ``params`` holds exact parameter names or regular expressions until the schedule is resolved against a
    model (see :func:`fts_dist.schedule.resolve_schedule`), exact names after. ``max_transition_epoch`` of -1
    leaves the transition to early stopping; ``lr`` of ``None`` means "use ``base_max_lr``" (phase 0 takes its
    learning rate from the optimizer the module configures). ``new_optimizer`` and ``new_lr_scheduler`` re-initialise
    the optimizer or the LR scheduler as the phase begins (finetuning-scheduler 2.x's keys; see
    :mod:`fts_dist.schedule.reinit`).

    Two keys are fts_dist's own (finetuning-scheduler refuses a schedule that uses them): ``freeze`` names (or
    patterns) of parameters earlier phases thawed that this phase freezes again, their optimizer groups left as
    they are; ``scale_lrs`` multiplies the learning rate of every earlier phase's group when this phase starts.
    """

    params: tuple[str, ...]
    max_transition_epoch: int = -1
    lr: float | None = None
    freeze: tuple[str, ...] = ()
    scale_lrs: float | None = None
    new_optimizer: OptimizerReinit | None = None
    new_lr_scheduler: SchedulerReinit | None = None


@dataclass(frozen=True)
class Schedule:
    """An ordered tuple of phases, phase ``i`` at index ``i``."""

    phases: tuple[Phase, ...]

    def __len__(self) -> int:
        return len(self.phases)

    def __getitem__(self, depth: int) -> Phase:
        return self.phases[depth]

    @property
    def final_depth(self) -> int:
        return len(self.phases) - 1

    def trainable_at(self, depth: int) -> tuple[str, ...]:
        """What trains at ``depth`` of a resolved schedule: phases 0..depth's parameters less those they froze."""
        phases = self.phases[: depth + 1]
        frozen = {name for phase in phases for name in phase.freeze}
        return tuple(name for phase in phases for name in phase.params if name not in frozen)

    @classmethod
    def from_dict(cls, raw: Any, *, epoch_transitions_only: bool = False) -> Schedule:
        """Build a schedule from the original project's format, checking its structure.

        Args:
            raw: ``{0: {"params": [...], "max_transition_epoch": 3, "lr": 1e-4}, 1: {...}}``; phase keys are
                integers (or strings of digits), contiguous from 0.
            epoch_transitions_only: also require a ``max_transition_epoch`` in every phase.

        Raises:
            FTSConfigError: naming the phase and key at fault.

        Example::

            >>> Schedule.from_dict({0: {"params": ["head.weight"]}, 1: {"params": ["body.*"], "lr": 1e-4}})[1].lr
            0.0001
        """
        if not isinstance(raw, Mapping) or not raw:
            raise FTSConfigError(
                f"A fine-tuning schedule must be a non-empty mapping of phase numbers to phases, got "
                f"{type(raw).__name__} {raw!r:.80}. Write it as `0: {{params: [...]}}`, `1: {{...}}`."
            )
        by_depth = {_phase_key(key): value for key, value in raw.items()}
        if len(by_depth) != len(raw):  # 1 and "1" (a Hydra config's string keys beside integers) name one phase
            keys = sorted(map(str, raw))
            raise FTSConfigError(f"Schedule phase keys {keys} name one phase twice; keep one of each.", key="phase")
        depths = sorted(by_depth)
        if depths != list(range(len(depths))):
            raise FTSConfigError(
                f"Schedule phase keys must be contiguous integers from 0, got {depths}. Renumber the phases "
                f"0..{len(depths) - 1} in the order they should run.",
                key="phase",
            )
        phases = tuple(_parse_phase(depth, by_depth[depth]) for depth in depths)
        _check_transition_epochs(phases, epoch_transitions_only)
        return cls(phases)

    def to_dict(self) -> dict[int, dict[str, Any]]:
        """The schedule in the original project's format, ready for ``yaml.safe_dump``."""
        out: dict[int, dict[str, Any]] = {}
        for depth, phase in enumerate(self.phases):
            entry: dict[str, Any] = {"params": list(phase.params)}
            if phase.max_transition_epoch >= 0:
                entry["max_transition_epoch"] = phase.max_transition_epoch
            if phase.lr is not None:
                entry["lr"] = phase.lr
            if phase.new_optimizer is not None:
                entry["new_optimizer"] = phase.new_optimizer.to_config()
            if phase.new_lr_scheduler is not None:
                entry["new_lr_scheduler"] = phase.new_lr_scheduler.to_config()
            if phase.freeze:
                entry["freeze"] = list(phase.freeze)
            if phase.scale_lrs is not None:
                entry["scale_lrs"] = phase.scale_lrs
            out[depth] = entry
        return out


def _phase_key(key: Any) -> int:
    if isinstance(key, int) and not isinstance(key, bool):
        return key
    if isinstance(key, str) and key.strip().isascii() and key.strip().isdigit():  # not '²', which int() refuses
        return int(key)
    raise FTSConfigError(
        f"Schedule phase key {key!r} is not an integer. Number the phases 0, 1, 2, ... in the order they run.",
        key="phase",
    )


def _parse_phase(depth: int, value: Any) -> Phase:
    if not isinstance(value, Mapping):
        raise FTSConfigError(
            f"Phase {depth} must be a mapping with a `params` list, got {type(value).__name__} {value!r:.80}.",
            phase=depth,
        )
    unknown = sorted(str(k) for k in value if k not in _PHASE_KEYS)
    if unknown:
        raise FTSConfigError(
            f"Phase {depth} has unsupported key(s) {unknown}; a phase may hold only {list(_PHASE_KEYS)}. "
            "Remove them, or check their spelling.",
            phase=depth,
            key=unknown[0],
        )
    return Phase(
        params=_parse_params(depth, value.get("params")),
        max_transition_epoch=_parse_epoch(depth, value.get("max_transition_epoch", -1)),
        lr=_parse_lr(depth, value.get("lr")),
        freeze=_parse_freeze(depth, value.get("freeze")),
        scale_lrs=_parse_scale(depth, value.get("scale_lrs")),
        new_optimizer=_parse_reinit(depth, value.get("new_optimizer"), OptimizerReinit),
        new_lr_scheduler=_parse_reinit(depth, value.get("new_lr_scheduler"), SchedulerReinit),
    )


def _parse_reinit(depth: int, config: Any, kind: type[Any]) -> Any:
    if config is None:
        return None
    if depth == 0:
        key = "new_optimizer" if kind is OptimizerReinit else "new_lr_scheduler"
        raise FTSConfigError(
            f"Phase 0 has `{key}`, but phase 0 trains with what `configure_optimizers` returns. Configure the initial "
            "optimizer and LR scheduler there, and re-initialise them in a later phase.",
            phase=0,
            key=key,
        )
    return kind.from_config(config, depth)


def _parse_params(depth: int, params: Any, key: str = "params") -> tuple[str, ...]:
    if isinstance(params, str):
        params = [params]
    if not isinstance(params, list | tuple) or not params:
        raise FTSConfigError(
            f"Phase {depth} needs `{key}`: a non-empty list of parameter names or regular expressions, got "
            f"{params!r:.80}.",
            phase=depth,
            key=key,
        )
    for entry in params:
        if not isinstance(entry, str) or not entry:
            raise FTSConfigError(
                f"Phase {depth} `{key}` entry {entry!r} is not a parameter name or regular expression (a "
                "non-empty string).",
                phase=depth,
                key=key,
            )
    return tuple(params)


def _parse_freeze(depth: int, freeze: Any) -> tuple[str, ...]:
    if freeze is None:
        return ()
    if depth == 0:
        raise FTSConfigError(
            "Phase 0 has `freeze`, but nothing has thawed before it: only a later phase can freeze parameters "
            "again. Leave them out of phase 0's `params` instead.",
            phase=0,
            key="freeze",
        )
    return _parse_params(depth, freeze, key="freeze")


def _parse_scale(depth: int, scale: Any) -> float | None:
    if scale is None:
        return None
    if depth == 0:
        raise FTSConfigError(
            "Phase 0 has `scale_lrs`, but it starts with the optimizer: there are no earlier groups to scale. Set the "
            "learning rate in `configure_optimizers` instead.",
            phase=0,
            key="scale_lrs",
        )
    value = _parse_lr(depth, scale, key="scale_lrs")
    if not value:
        raise FTSConfigError(
            f"Phase {depth} `scale_lrs` must be a positive factor, got {scale!r}. To stop earlier groups training, "
            "`freeze` their parameters.",
            phase=depth,
            key="scale_lrs",
        )
    return value


def _parse_epoch(depth: int, epoch: Any) -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < -1:
        raise FTSConfigError(
            f"Phase {depth} `max_transition_epoch` must be an integer >= 0 (or -1 to leave the transition to "
            f"early stopping), got {epoch!r}.",
            phase=depth,
            key="max_transition_epoch",
        )
    return epoch


def _parse_lr(depth: int, lr: Any, key: str = "lr") -> float | None:
    if lr is None:
        return None
    value = non_negative_number(lr)
    if value is None:
        raise FTSConfigError(
            f"Phase {depth} `{key}` must be a non-negative number, got {lr!r}. Write it as e.g. `{key}: 1.0e-05` "
            "(YAML reads `1e-5` as a string, which fts_dist also accepts).",
            phase=depth,
            key=key,
        )
    return value


def _check_transition_epochs(phases: tuple[Phase, ...], epoch_transitions_only: bool) -> None:
    if epoch_transitions_only:
        missing = [d for d, p in enumerate(phases) if p.max_transition_epoch < 0]
        if missing:
            raise FTSConfigError(
                f"`epoch_transitions_only=True` needs a `max_transition_epoch` in every phase; phase(s) {missing} "
                "have none. Add one to each, or set `epoch_transitions_only=False` to let early stopping end them.",
                phase=missing[0],
                key="max_transition_epoch",
            )
    previous: tuple[int, int] | None = None
    for depth, phase in enumerate(phases):
        if phase.max_transition_epoch < 0:
            continue
        if previous is not None and phase.max_transition_epoch < previous[1]:
            raise FTSConfigError(
                f"`max_transition_epoch` of phase {depth} ({phase.max_transition_epoch}) is lower than phase "
                f"{previous[0]}'s ({previous[1]}): phases run in order, so a later phase cannot end earlier. Raise "
                f"it to at least {previous[1]}.",
                phase=depth,
                key="max_transition_epoch",
            )
        previous = (depth, phase.max_transition_epoch)
