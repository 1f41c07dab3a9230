"""Per-phase optimizer and LR-scheduler re-initialisation: the ``new_optimizer`` and ``new_lr_scheduler`` phase keys
(and the callback's ``reinit_optim_cfg`` / ``reinit_lr_cfg``), in finetuning-scheduler 2.x's format, as plain data.

Only the structure is checked here; importing the classes and trying their arguments happens where torch is at hand
(:mod:`fts_dist.optim.reinit`), still before step 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fts_dist.errors import FTSConfigError
from fts_dist.schedule.numbers import non_negative_number

_OPTIMIZER_KEYS = ("optimizer_init",)
_SCHEDULER_KEYS = ("lr_scheduler_init", "pl_lrs_cfg", "use_current_optimizer_pg_lrs", "init_pg_lrs")
_INIT_KEYS = ("class_path", "init_args")


@dataclass(frozen=True)
class _ClassToBuild:
    """A class by import path and the keyword arguments to build it with."""

    class_path: str
    init_args: dict[str, Any] = field(default_factory=dict)

    @property
    def class_name(self) -> str:
        return self.class_path.rsplit(".", 1)[-1]

    def init_config(self) -> dict[str, Any]:
        return {"class_path": self.class_path, "init_args": dict(self.init_args)}


@dataclass(frozen=True)
class OptimizerReinit(_ClassToBuild):
    """A phase's new optimizer: ``class_path`` built with ``init_args`` over every trainable parameter.

    Example::

        >>> config = {"optimizer_init": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.001}}}
        >>> OptimizerReinit.from_config(config, phase=1)
        OptimizerReinit(class_path='torch.optim.AdamW', init_args={'lr': 0.001})
    """

    @classmethod
    def from_config(cls, config: Any, phase: int | None = None) -> OptimizerReinit:
        where = _where(phase, "new_optimizer")
        _check_mapping(config, where, _OPTIMIZER_KEYS, phase, "new_optimizer")
        class_path, init_args = _parse_init(config, "optimizer_init", where, phase, "new_optimizer")
        return cls(class_path, init_args)

    def to_config(self) -> dict[str, Any]:
        return {"optimizer_init": self.init_config()}


@dataclass(frozen=True)
class SchedulerReinit(_ClassToBuild):
    """A phase's new LR scheduler, built over the optimizer once the phase's group is added.

    Before it is built, every group's ``lr`` is set to ``init_pg_lrs`` (which also become the groups'
    ``initial_lr``), else to the group's current ``lr`` with ``use_current_optimizer_pg_lrs``, else to its
    ``initial_lr``. ``pl_lrs_cfg`` holds Lightning's scheduler settings (``interval``, ``frequency``, ``monitor``...).
    """

    pl_lrs_cfg: dict[str, Any] = field(default_factory=dict)
    use_current_optimizer_pg_lrs: bool = False
    init_pg_lrs: tuple[float, ...] | None = None

    @classmethod
    def from_config(cls, config: Any, phase: int | None = None) -> SchedulerReinit:
        where = _where(phase, "new_lr_scheduler")
        key = "new_lr_scheduler" if phase is not None else "reinit_lr_cfg"
        _check_mapping(config, where, _SCHEDULER_KEYS, phase, key)
        class_path, init_args = _parse_init(config, "lr_scheduler_init", where, phase, key)
        pl_lrs_cfg = config.get("pl_lrs_cfg") or {}
        if not isinstance(pl_lrs_cfg, Mapping):
            raise FTSConfigError(
                f"{where}: `pl_lrs_cfg` must be a mapping, got {pl_lrs_cfg!r:.80}.", phase=phase, key=key
            )
        if pl_lrs_cfg.get("interval", "epoch") not in ("step", "epoch"):
            raise FTSConfigError(
                f"{where}: `pl_lrs_cfg.interval` must be 'step' or 'epoch', got {pl_lrs_cfg['interval']!r}.",
                phase=phase,
                key=key,
            )
        current = config.get("use_current_optimizer_pg_lrs", False)
        if not isinstance(current, bool):
            raise FTSConfigError(
                f"{where}: `use_current_optimizer_pg_lrs` must be true or false, got {current!r}.", phase=phase, key=key
            )
        return cls(class_path, init_args, dict(pl_lrs_cfg), current, _parse_init_pg_lrs(config, where, phase, key))

    def to_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"lr_scheduler_init": self.init_config()}
        if self.pl_lrs_cfg:
            config["pl_lrs_cfg"] = dict(self.pl_lrs_cfg)
        if self.use_current_optimizer_pg_lrs:
            config["use_current_optimizer_pg_lrs"] = True
        if self.init_pg_lrs is not None:
            config["init_pg_lrs"] = list(self.init_pg_lrs)
        return config


def apply_implicit_reinit(
    raw: Mapping[Any, Any], reinit_optim_cfg: Any, reinit_lr_cfg: Any, explicit: bool
) -> dict[Any, Any]:
    """The schedule ``raw`` with the callback's ``reinit_optim_cfg`` / ``reinit_lr_cfg`` set on every phase after 0,
    as finetuning-scheduler applies them (``reinit_optim_cfg`` wins over a phase's own ``new_optimizer``).

    Raises:
        FTSConfigError: ``reinit_lr_cfg`` with an explicit schedule, or ``init_pg_lrs`` in it (one configuration
            re-initialised at every phase cannot know each phase's group count).
    """
    if reinit_lr_cfg and explicit:
        raise FTSConfigError(
            "`reinit_lr_cfg` re-initialises the LR scheduler at every phase of the implicit schedule, but an explicit "
            "`ft_schedule` was given. Put the scheduler configuration in the phases that need it, under "
            "`new_lr_scheduler`, instead.",
            key="reinit_lr_cfg",
        )
    if reinit_lr_cfg and isinstance(reinit_lr_cfg, Mapping) and "init_pg_lrs" in reinit_lr_cfg:
        raise FTSConfigError(
            "`reinit_lr_cfg` cannot hold `init_pg_lrs`: the same configuration is applied at every phase, each with a "
            "different number of parameter groups. Drop `init_pg_lrs`, or write an explicit schedule with "
            "`new_lr_scheduler` per phase.",
            key="reinit_lr_cfg",
        )
    if reinit_optim_cfg:
        OptimizerReinit.from_config(reinit_optim_cfg)  # its own errors, naming `reinit_optim_cfg`
    if reinit_lr_cfg:
        SchedulerReinit.from_config(reinit_lr_cfg)
    out = {key: dict(value) if isinstance(value, Mapping) else value for key, value in raw.items()}
    for key, phase in out.items():
        if not isinstance(phase, dict) or str(key).strip().lstrip("0") == "":  # phase 0 (also "00")
            continue
        if reinit_optim_cfg:
            phase["new_optimizer"] = reinit_optim_cfg
        if reinit_lr_cfg:
            phase["new_lr_scheduler"] = reinit_lr_cfg
    return out


def _where(phase: int | None, key: str) -> str:
    if phase is None:
        return "`reinit_optim_cfg`" if key == "new_optimizer" else "`reinit_lr_cfg`"
    return f"Phase {phase} `{key}`"


def _check_mapping(config: Any, where: str, allowed: tuple[str, ...], phase: int | None, key: str) -> None:
    if not isinstance(config, Mapping):
        raise FTSConfigError(
            f"{where} must be a mapping, got {type(config).__name__} {config!r:.80}.", phase=phase, key=key
        )
    unknown = sorted(str(k) for k in config if k not in allowed)
    if unknown:
        raise FTSConfigError(
            f"{where} has unknown key(s) {unknown}; it may hold {list(allowed)}.", phase=phase, key=key
        )


def _parse_init(config: Mapping[str, Any], init_key: str, where: str, phase: int | None, key: str) -> tuple[str, dict]:
    init = config.get(init_key)
    if not isinstance(init, Mapping) or not isinstance(init.get("class_path"), str) or not init["class_path"].strip():
        example = "torch.optim.AdamW" if init_key == "optimizer_init" else "torch.optim.lr_scheduler.StepLR"
        raise FTSConfigError(
            f"{where} needs `{init_key}` with a `class_path` (e.g. `{init_key}: {{class_path: {example}, init_args: "
            f"{{...}}}}`), got {init!r:.80}.",
            phase=phase,
            key=key,
        )
    unknown = sorted(str(k) for k in init if k not in _INIT_KEYS)
    init_args = init.get("init_args") or {}
    if unknown or not isinstance(init_args, Mapping):
        raise FTSConfigError(
            f"{where} `{init_key}` may hold only `class_path` and a mapping `init_args`, got {dict(init)!r:.120}.",
            phase=phase,
            key=key,
        )
    return init["class_path"].strip(), dict(init_args)


def _parse_init_pg_lrs(config: Mapping[str, Any], where: str, phase: int | None, key: str) -> tuple[float, ...] | None:
    lrs = config.get("init_pg_lrs")
    if lrs is None:
        return None
    rates = [non_negative_number(lr) for lr in lrs] if isinstance(lrs, list | tuple) else [None]
    checked = tuple(rate for rate in rates if rate is not None)
    if len(checked) != len(rates):
        raise FTSConfigError(
            f"{where} `init_pg_lrs` must be a list of non-negative numbers, one per parameter group, got {lrs!r}.",
            phase=phase,
            key=key,
        )
    return checked
