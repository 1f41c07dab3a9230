"""The schedule as plain, validated data: phases of parameter names, transition epochs and learning rates."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fts_dist.errors import FTSConfigError

_PHASE_KEYS = ("params", "max_transition_epoch", "lr")


@dataclass(frozen=True)
class Phase:
    """One fine-tuning phase: what thaws, until which epoch at most, at which learning rate.

    ``params`` holds exact parameter names or regular expressions until the schedule is resolved against a
    model (see :func:`fts_dist.schedule.resolve_schedule`), exact names after. ``max_transition_epoch`` of -1
    leaves the transition to early stopping; ``lr`` of ``None`` means "use ``base_max_lr``" (phase 0 takes its
    learning rate from the optimizer the module configures).
    """

    params: tuple[str, ...]
    max_transition_epoch: int = -1
    lr: float | None = None


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
            "Remove them (optimizer or LR-scheduler re-initialisation per phase is not supported).",
            phase=depth,
            key=unknown[0],
        )
    return Phase(
        params=_parse_params(depth, value.get("params")),
        max_transition_epoch=_parse_epoch(depth, value.get("max_transition_epoch", -1)),
        lr=_parse_lr(depth, value.get("lr")),
    )


def _parse_params(depth: int, params: Any) -> tuple[str, ...]:
    if isinstance(params, str):
        params = [params]
    if not isinstance(params, list | tuple) or not params:
        raise FTSConfigError(
            f"Phase {depth} needs `params`: a non-empty list of parameter names or regular expressions, got "
            f"{params!r:.80}.",
            phase=depth,
            key="params",
        )
    for entry in params:
        if not isinstance(entry, str) or not entry:
            raise FTSConfigError(
                f"Phase {depth} `params` entry {entry!r} is not a parameter name or regular expression (a "
                "non-empty string).",
                phase=depth,
                key="params",
            )
    return tuple(params)


def _parse_epoch(depth: int, epoch: Any) -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < -1:
        raise FTSConfigError(
            f"Phase {depth} `max_transition_epoch` must be an integer >= 0 (or -1 to leave the transition to "
            f"early stopping), got {epoch!r}.",
            phase=depth,
            key="max_transition_epoch",
        )
    return epoch


def _parse_lr(depth: int, lr: Any) -> float | None:
    if lr is None:
        return None
    try:
        value = float(lr) if not isinstance(lr, bool) else math.nan
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise FTSConfigError(
            f"Phase {depth} `lr` must be a non-negative number, got {lr!r}. Write it as e.g. `lr: 1.0e-05` "
            "(YAML reads `1e-5` as a string, which fts_dist also accepts).",
            phase=depth,
            key="lr",
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
