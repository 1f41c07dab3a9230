"""Expanding a schedule's names and regular expressions against a model's parameter names."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from fts_dist.errors import FTSConfigError
from fts_dist.schedule.model import Schedule


@dataclass(frozen=True)
class ResolvedSchedule:
    """A schedule whose phases list exact parameter names, the parameters no phase thaws, and the schedule as it
    was given (names and patterns)."""

    schedule: Schedule
    unscheduled: tuple[str, ...]
    given: Schedule


def resolve_schedule(schedule: Schedule, param_names: Sequence[str]) -> ResolvedSchedule:
    """Expand each phase's entries to exact parameter names, in ``param_names`` order.

    An entry that is a parameter name stands for itself; any other entry is a regular expression matched from
    the start of each name (``re.match``, as the original project does).

    Raises:
        FTSConfigError: an entry matches nothing or is not a valid regular expression, or a parameter falls in
            two phases; the message names the phase, the entry and what to do.

    Example::

        >>> s = Schedule.from_dict({0: {"params": ["head.*"]}, 1: {"params": ["body.0.weight"]}})
        >>> resolve_schedule(s, ["body.0.weight", "body.0.bias", "head.weight"]).unscheduled
        ('body.0.bias',)
    """
    known = set(param_names)
    owner: dict[str, int] = {}
    phases = []
    for depth, phase in enumerate(schedule.phases):
        selected: set[str] = set()
        for entry in phase.params:
            matched = {entry} if entry in known else _match_pattern(depth, entry, param_names)
            for name in matched:
                if name in owner and owner[name] != depth:
                    raise FTSConfigError(
                        f"Parameter '{name}' is in phase {owner[name]} and again in phase {depth} "
                        f"(via `params` entry '{entry}'). "
                        "Each parameter thaws once: remove it from one phase or narrow the pattern.",
                        phase=depth,
                        key="params",
                    )
                owner[name] = depth
            selected |= matched
        ordered = tuple(n for n in param_names if n in selected)
        phases.append(replace(phase, params=ordered))
    frozen_at: dict[str, int] = {}
    for depth, phase in enumerate(schedule.phases):
        frozen = _resolve_freeze(depth, phase.freeze, param_names, owner, frozen_at)
        phases[depth] = replace(phases[depth], freeze=tuple(n for n in param_names if n in frozen))
    unscheduled = tuple(n for n in param_names if n not in owner)
    return ResolvedSchedule(Schedule(tuple(phases)), unscheduled, schedule)


def _resolve_freeze(
    depth: int, entries: Sequence[str], param_names: Sequence[str], owner: dict[str, int], frozen_at: dict[str, int]
) -> set[str]:
    """Phase ``depth``'s ``freeze`` entries as exact names; each must name parameters an earlier phase thawed and
    no phase froze yet (``frozen_at`` records them)."""
    known = set(param_names)
    selected: set[str] = set()
    for entry in entries:
        matched = {entry} if entry in known else _match_pattern(depth, entry, param_names, key="freeze")
        for name in (n for n in param_names if n in matched):
            thawed = owner.get(name)
            if thawed is None or thawed >= depth:
                when, fix = (
                    ("no phase thaws it", "Narrow the entry")
                    if thawed is None
                    else (f"phase {thawed} thaws it", f"Narrow the entry, or move it to a phase after {thawed}")
                )
                raise FTSConfigError(
                    f"Phase {depth} `freeze` entry '{entry}' names '{name}', but {when}: a phase can freeze again only "
                    f"what an earlier phase thawed. {fix}.",
                    phase=depth,
                    key="freeze",
                )
            if name in frozen_at:
                raise FTSConfigError(
                    f"Phase {depth} `freeze` entry '{entry}' names '{name}', which phase {frozen_at[name]} froze "
                    "already. Freeze each parameter once.",
                    phase=depth,
                    key="freeze",
                )
        selected |= matched
    frozen_at.update(dict.fromkeys(selected, depth))
    return selected


def _match_pattern(depth: int, pattern: str, param_names: Sequence[str], key: str = "params") -> set[str]:
    try:
        compiled = re.compile(pattern)
    except re.error as err:
        raise FTSConfigError(
            f"Phase {depth} `{key}` entry '{pattern}' is neither a parameter name nor a valid regular expression "
            f"({err}).",
            phase=depth,
            key=key,
        ) from err
    matched = {name for name in param_names if compiled.match(name)}
    if not matched:
        hint = ", ".join(list(param_names)[:3])
        raise FTSConfigError(
            f"Phase {depth} `{key}` entry '{pattern}' matches no parameter of the model. Names look like: {hint}, ... "
            "(see `fts-dist schedule show` or `model.named_parameters()`).",
            phase=depth,
            key=key,
        )
    return matched
