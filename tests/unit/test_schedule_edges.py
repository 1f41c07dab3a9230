"""The edges of schedule parsing, validation, resolution, generation and files that test_schedule.py leaves open.

Errors are checked by their whole message, phase and key: the message is what a user reads, and a check on a
fragment of it would pass with the rest garbled. Found by mutation testing (mutmut) of ``fts_dist.schedule``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from fts_dist import FTSConfigError
from fts_dist.schedule import (
    Phase,
    Schedule,
    dump_schedule,
    find_blocks,
    generate_block_schedule,
    generate_implicit_schedule,
    load_schedule,
    load_schedule_file,
    resolve_schedule,
    write_schedule_file,
)
from fts_dist.schedule.numbers import non_negative_number
from fts_dist.schedule.reinit import OptimizerReinit, SchedulerReinit, apply_implicit_reinit

X = {"params": ["x"]}
Y = {"params": ["y"]}
SCHEDULER = {"lr_scheduler_init": {"class_path": "S"}}
OPTIMIZER = {"optimizer_init": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}}}
NAMES = ["head.w", "head.w_extra", "body.0.w", "body.1.w", "tail.w"]
BLOCK_NAMES = ["emb.w", "layer.0.w", "layer.1.w", "layer.2.w", "head.w"]

FIX_LR = "Write it as e.g. `lr: 1.0e-05` (YAML reads `1e-5` as a string, which fts_dist also accepts)."
PHASE_KEYS = "['params', 'max_transition_epoch', 'lr', 'new_optimizer', 'new_lr_scheduler', 'freeze', 'scale_lrs']"
PHASE0_REINIT = (
    "but phase 0 trains with what `configure_optimizers` returns. Configure the initial optimizer and LR "
    "scheduler there, and re-initialise them in a later phase."
)
NOT_A_NAME = "is not a parameter name or regular expression (a non-empty string)."
OPTIMIZER_EXAMPLE = "(e.g. `optimizer_init: {class_path: torch.optim.AdamW, init_args: {...}}`)"
SCHEDULER_EXAMPLE = "(e.g. `lr_scheduler_init: {class_path: torch.optim.lr_scheduler.StepLR, init_args: {...}}`)"
SCHEDULER_KEYS = "['lr_scheduler_init', 'pl_lrs_cfg', 'use_current_optimizer_pg_lrs', 'init_pg_lrs']"


def raised(call: Callable[[], Any]) -> FTSConfigError:
    with pytest.raises(FTSConfigError) as err:
        call()
    return err.value


@pytest.mark.parametrize(
    ("raw", "message", "phase", "key"),
    [
        (
            [1, 2],
            "A fine-tuning schedule must be a non-empty mapping of phase numbers to phases, got list [1, 2]. "
            "Write it as `0: {params: [...]}`, `1: {...}`.",
            None,
            None,
        ),
        (
            {},
            "A fine-tuning schedule must be a non-empty mapping of phase numbers to phases, got dict {}. "
            "Write it as `0: {params: [...]}`, `1: {...}`.",
            None,
            None,
        ),
        ({0: X, "0": X}, "Schedule phase keys ['0', '0'] name one phase twice; keep one of each.", None, "phase"),
        (
            {0: X, 1: X, 3: X},
            "Schedule phase keys must be contiguous integers from 0, got [0, 1, 3]. Renumber the phases 0..2 in the "
            "order they should run.",
            None,
            "phase",
        ),
        (
            {"a": X},
            "Schedule phase key 'a' is not an integer. Number the phases 0, 1, 2, ... in the order they run.",
            None,
            "phase",
        ),
        ({0: ["x"]}, "Phase 0 must be a mapping with a `params` list, got list ['x'].", 0, None),
        (
            {0: X, 1: {"params": ["y"], "zeta": 1, "alpha": 2}},
            f"Phase 1 has unsupported key(s) ['alpha', 'zeta']; a phase may hold only {PHASE_KEYS}. Remove them, or "
            "check their spelling.",
            1,
            "alpha",
        ),
        ({0: {**X, "new_optimizer": {}}}, f"Phase 0 has `new_optimizer`, {PHASE0_REINIT}", 0, "new_optimizer"),
        (
            {0: {**X, "new_lr_scheduler": {}}},
            f"Phase 0 has `new_lr_scheduler`, {PHASE0_REINIT}",
            0,
            "new_lr_scheduler",
        ),
        (
            {0: X, 1: {"lr": 1}},
            "Phase 1 needs `params`: a non-empty list of parameter names or regular expressions, got None.",
            1,
            "params",
        ),
        ({0: X, 1: {"params": ["y", 3]}}, f"Phase 1 `params` entry 3 {NOT_A_NAME}", 1, "params"),
        ({0: X, 1: {**Y, "freeze": [""]}}, f"Phase 1 `freeze` entry '' {NOT_A_NAME}", 1, "freeze"),
        (
            {0: {**X, "freeze": ["x"]}},
            "Phase 0 has `freeze`, but nothing has thawed before it: only a later phase can freeze parameters "
            "again. Leave them out of phase 0's `params` instead.",
            0,
            "freeze",
        ),
        (
            {0: {**X, "scale_lrs": 0.5}},
            "Phase 0 has `scale_lrs`, but it starts with the optimizer: there are no earlier groups to scale. Set "
            "the learning rate in `configure_optimizers` instead.",
            0,
            "scale_lrs",
        ),
        (
            {0: X, 1: {**Y, "scale_lrs": 0}},
            "Phase 1 `scale_lrs` must be a positive factor, got 0. To stop earlier groups training, `freeze` their "
            "parameters.",
            1,
            "scale_lrs",
        ),
        (
            {0: X, 1: {**Y, "scale_lrs": "half"}},
            "Phase 1 `scale_lrs` must be a non-negative number, got 'half'. Write it as e.g. `scale_lrs: 1.0e-05` "
            "(YAML reads `1e-5` as a string, which fts_dist also accepts).",
            1,
            "scale_lrs",
        ),
        (
            {0: X, 1: {**Y, "max_transition_epoch": -2}},
            "Phase 1 `max_transition_epoch` must be an integer >= 0 (or -1 to leave the transition to early "
            "stopping), got -2.",
            1,
            "max_transition_epoch",
        ),
        ({0: X, 1: {**Y, "lr": -1}}, f"Phase 1 `lr` must be a non-negative number, got -1. {FIX_LR}", 1, "lr"),
        ({0: X, 1: {**Y, "lr": math.inf}}, f"Phase 1 `lr` must be a non-negative number, got inf. {FIX_LR}", 1, "lr"),
        (
            {0: {**X, "max_transition_epoch": 5}, 1: Y, 2: {"params": ["z"], "max_transition_epoch": 3}},
            "`max_transition_epoch` of phase 2 (3) is lower than phase 0's (5): phases run in order, so a later "
            "phase cannot end earlier. Raise it to at least 5.",
            2,
            "max_transition_epoch",
        ),
        (
            {0: {**X, "max_transition_epoch": 3}, 1: {**Y, "max_transition_epoch": 0}},
            "`max_transition_epoch` of phase 1 (0) is lower than phase 0's (3): phases run in order, so a later "
            "phase cannot end earlier. Raise it to at least 3.",
            1,
            "max_transition_epoch",
        ),
    ],
)
def test_each_structure_error_reads_in_full_and_names_its_phase_and_key(
    raw: Any, message: str, phase: int | None, key: str | None
) -> None:
    err = raised(lambda: Schedule.from_dict(raw))
    assert (str(err), err.phase, err.key) == (message, phase, key)


def test_epoch_transitions_only_lists_every_phase_without_an_epoch() -> None:
    raw = {0: {**X, "max_transition_epoch": 1}, 1: Y, 2: {"params": ["z"]}}
    err = raised(lambda: Schedule.from_dict(raw, epoch_transitions_only=True))
    assert str(err) == (
        "`epoch_transitions_only=True` needs a `max_transition_epoch` in every phase; phase(s) [1, 2] have none. "
        "Add one to each, or set `epoch_transitions_only=False` to let early stopping end them."
    )
    assert (err.phase, err.key) == (1, "max_transition_epoch")


def test_epoch_zero_is_a_transition_epoch_that_phases_may_share_and_that_round_trips() -> None:
    raw = {0: {"params": ["x"], "max_transition_epoch": 0}, 1: {"params": ["y"], "max_transition_epoch": 0}}
    schedule = Schedule.from_dict(raw, epoch_transitions_only=True)
    assert [p.max_transition_epoch for p in schedule.phases] == [0, 0]
    assert schedule.to_dict() == raw


@pytest.mark.parametrize("epoch", [True, 2.0, "3"])
def test_a_transition_epoch_that_is_not_an_integer_is_refused(epoch: object) -> None:
    err = raised(lambda: Schedule.from_dict({0: {**X, "max_transition_epoch": epoch}}))
    assert (err.phase, err.key) == (0, "max_transition_epoch")


def test_a_single_string_stands_for_a_one_entry_list() -> None:
    schedule = Schedule.from_dict({0: {"params": "head.w"}, 1: {"params": "tail.w", "freeze": "head.w"}})
    assert schedule[0].params == ("head.w",)
    assert schedule[1].freeze == ("head.w",)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1e-5", 1e-5), (0, 0.0), (3, 3.0), (-1, None), (-0.5, None), (math.inf, None), (math.nan, None), (True, None)],
)
def test_rates_are_finite_non_negative_numbers(value: object, expected: float | None) -> None:
    assert non_negative_number(value) == expected


def test_reinit_keys_round_trip_through_to_dict_with_only_the_keys_set() -> None:
    scheduler = {
        "lr_scheduler_init": {"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 2}},
        "pl_lrs_cfg": {"interval": "step", "frequency": 2},
        "use_current_optimizer_pg_lrs": True,
        "init_pg_lrs": [0.1, 0.01],
    }
    raw = {
        0: {"params": ["x"]},
        1: {"params": ["y"], "new_optimizer": OPTIMIZER, "new_lr_scheduler": scheduler},
        2: {"params": ["z"], "new_lr_scheduler": {"lr_scheduler_init": {"class_path": "S", "init_args": {}}}},
    }
    schedule = Schedule.from_dict(raw)
    assert schedule[1].new_optimizer == OptimizerReinit("torch.optim.SGD", {"lr": 0.1})
    assert schedule[2].new_lr_scheduler == SchedulerReinit("S")
    assert schedule.to_dict() == raw


def test_a_scheduler_reinit_reads_every_key() -> None:
    config = {
        **SCHEDULER,
        "pl_lrs_cfg": {"interval": "step"},
        "use_current_optimizer_pg_lrs": True,
        "init_pg_lrs": ["1e-3", 0.1],
    }
    assert SchedulerReinit.from_config(config, 3) == SchedulerReinit("S", {}, {"interval": "step"}, True, (1e-3, 0.1))
    assert SchedulerReinit.from_config({**SCHEDULER, "pl_lrs_cfg": None}) == SchedulerReinit("S", {}, {}, False, None)


def test_an_optimizer_reinit_strips_its_class_path_and_defaults_its_arguments() -> None:
    reinit = OptimizerReinit.from_config({"optimizer_init": {"class_path": " torch.optim.SGD ", "init_args": None}}, 1)
    assert reinit == OptimizerReinit("torch.optim.SGD", {})
    assert reinit.class_name == "SGD"
    assert reinit.to_config() == {"optimizer_init": {"class_path": "torch.optim.SGD", "init_args": {}}}


@pytest.mark.parametrize(
    ("call", "message", "phase", "key"),
    [
        (
            lambda: OptimizerReinit.from_config("adam", 1),
            "Phase 1 `new_optimizer` must be a mapping, got str 'adam'.",
            1,
            "new_optimizer",
        ),
        (
            lambda: OptimizerReinit.from_config({**OPTIMIZER, "lr": 1, "b": 2}, 1),
            "Phase 1 `new_optimizer` has unknown key(s) ['b', 'lr']; it may hold ['optimizer_init'].",
            1,
            "new_optimizer",
        ),
        (
            lambda: OptimizerReinit.from_config({"optimizer_init": {"init_args": {}}}, 2),
            f"Phase 2 `new_optimizer` needs `optimizer_init` with a `class_path` {OPTIMIZER_EXAMPLE}, got "
            "{'init_args': {}}.",
            2,
            "new_optimizer",
        ),
        (
            lambda: OptimizerReinit.from_config({"optimizer_init": {"class_path": " "}}, 2),
            f"Phase 2 `new_optimizer` needs `optimizer_init` with a `class_path` {OPTIMIZER_EXAMPLE}, got "
            "{'class_path': ' '}.",
            2,
            "new_optimizer",
        ),
        (
            lambda: OptimizerReinit.from_config({"optimizer_init": {"class_path": "A", "lr": 1}}, 2),
            "Phase 2 `new_optimizer` `optimizer_init` may hold only `class_path` and a mapping `init_args`, got "
            "{'class_path': 'A', 'lr': 1}.",
            2,
            "new_optimizer",
        ),
        (
            lambda: OptimizerReinit.from_config({"optimizer_init": {"class_path": "A", "init_args": [1]}}, 2),
            "Phase 2 `new_optimizer` `optimizer_init` may hold only `class_path` and a mapping `init_args`, got "
            "{'class_path': 'A', 'init_args': [1]}.",
            2,
            "new_optimizer",
        ),
        (
            lambda: SchedulerReinit.from_config(3, 2),
            "Phase 2 `new_lr_scheduler` must be a mapping, got int 3.",
            2,
            "new_lr_scheduler",
        ),
        (
            lambda: SchedulerReinit.from_config(3),
            "`reinit_lr_cfg` must be a mapping, got int 3.",
            None,
            "reinit_lr_cfg",
        ),
        (
            lambda: SchedulerReinit.from_config({}, 2),
            f"Phase 2 `new_lr_scheduler` needs `lr_scheduler_init` with a `class_path` {SCHEDULER_EXAMPLE}, got None.",
            2,
            "new_lr_scheduler",
        ),
        (
            lambda: SchedulerReinit.from_config({"lr_scheduler_init": {}}),
            f"`reinit_lr_cfg` needs `lr_scheduler_init` with a `class_path` {SCHEDULER_EXAMPLE}, got {{}}.",
            None,
            "reinit_lr_cfg",
        ),
        (
            lambda: SchedulerReinit.from_config({"lr_scheduler_init": {"class_path": "S", "init_args": 1}}, 2),
            "Phase 2 `new_lr_scheduler` `lr_scheduler_init` may hold only `class_path` and a mapping `init_args`, "
            "got {'class_path': 'S', 'init_args': 1}.",
            2,
            "new_lr_scheduler",
        ),
        (
            lambda: SchedulerReinit.from_config({**SCHEDULER, "interval": "step"}),
            f"`reinit_lr_cfg` has unknown key(s) ['interval']; it may hold {SCHEDULER_KEYS}.",
            None,
            "reinit_lr_cfg",
        ),
        (
            lambda: SchedulerReinit.from_config({**SCHEDULER, "pl_lrs_cfg": ["step"]}, 2),
            "Phase 2 `new_lr_scheduler`: `pl_lrs_cfg` must be a mapping, got ['step'].",
            2,
            "new_lr_scheduler",
        ),
        (
            lambda: SchedulerReinit.from_config({**SCHEDULER, "pl_lrs_cfg": {"interval": "hour"}}),
            "`reinit_lr_cfg`: `pl_lrs_cfg.interval` must be 'step' or 'epoch', got 'hour'.",
            None,
            "reinit_lr_cfg",
        ),
        (
            lambda: SchedulerReinit.from_config({**SCHEDULER, "pl_lrs_cfg": {"interval": 1}}, 2),
            "Phase 2 `new_lr_scheduler`: `pl_lrs_cfg.interval` must be 'step' or 'epoch', got 1.",
            2,
            "new_lr_scheduler",
        ),
        (
            lambda: SchedulerReinit.from_config({**SCHEDULER, "use_current_optimizer_pg_lrs": "yes"}, 2),
            "Phase 2 `new_lr_scheduler`: `use_current_optimizer_pg_lrs` must be true or false, got 'yes'.",
            2,
            "new_lr_scheduler",
        ),
        (
            lambda: SchedulerReinit.from_config({**SCHEDULER, "init_pg_lrs": 0.1}, 2),
            "Phase 2 `new_lr_scheduler` `init_pg_lrs` must be a list of non-negative numbers, one per parameter "
            "group, got 0.1.",
            2,
            "new_lr_scheduler",
        ),
        (
            lambda: SchedulerReinit.from_config({**SCHEDULER, "init_pg_lrs": [0.1, -1]}),
            "`reinit_lr_cfg` `init_pg_lrs` must be a list of non-negative numbers, one per parameter group, got "
            "[0.1, -1].",
            None,
            "reinit_lr_cfg",
        ),
    ],
)
def test_each_reinit_error_reads_in_full_and_names_its_phase_and_key(
    call: Callable[[], Any], message: str, phase: int | None, key: str
) -> None:
    err = raised(call)
    assert (str(err), err.phase, err.key) == (message, phase, key)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (["x"], "`reinit_optim_cfg` must be a mapping, got list ['x']."),
        (
            {"optimizer_init": {}},
            f"`reinit_optim_cfg` needs `optimizer_init` with a `class_path` {OPTIMIZER_EXAMPLE}, got {{}}.",
        ),
    ],
)
def test_a_callback_optimizer_config_error_names_reinit_optim_cfg(config: Any, message: str) -> None:
    err = raised(lambda: apply_implicit_reinit({0: X}, config, None, explicit=False))
    assert (str(err), err.phase) == (message, None)


def test_callback_reinit_configs_become_every_later_phase_keys_but_never_phase_zeros() -> None:
    own = {"optimizer_init": {"class_path": "torch.optim.Adam"}}
    raw = {"00": dict(X), " 0 ": dict(X), 1: {**Y, "new_optimizer": own}, "2": {"params": ["z"]}, 3: ["w"]}
    out = apply_implicit_reinit(raw, OPTIMIZER, SCHEDULER, explicit=False)
    assert out["00"] == X and out[" 0 "] == X
    assert out[1] == {**Y, "new_optimizer": OPTIMIZER, "new_lr_scheduler": SCHEDULER}  # the callback's wins
    assert out["2"] == {"params": ["z"], "new_optimizer": OPTIMIZER, "new_lr_scheduler": SCHEDULER}
    assert out[3] == ["w"]  # not a phase: left for Schedule.from_dict to refuse
    assert raw[1] == {**Y, "new_optimizer": own} and raw["2"] == {"params": ["z"]}  # the caller's data is untouched


def test_only_the_callback_config_given_is_set() -> None:
    scheduler_only = apply_implicit_reinit({0: X, 1: Y}, None, SCHEDULER, explicit=False)
    assert scheduler_only[1] == {**Y, "new_lr_scheduler": SCHEDULER}
    optimizer_only = apply_implicit_reinit({0: X, 1: Y}, OPTIMIZER, None, explicit=True)  # explicit: allowed
    assert optimizer_only[1] == {**Y, "new_optimizer": OPTIMIZER}


@pytest.mark.parametrize(
    ("optimizer", "scheduler", "explicit", "message"),
    [
        (
            None,
            SCHEDULER,
            True,
            "`reinit_lr_cfg` re-initialises the LR scheduler at every phase of the implicit schedule, but an explicit "
            "`ft_schedule` was given. Put the scheduler configuration in the phases that need it, under "
            "`new_lr_scheduler`, instead.",
        ),
        (
            None,
            {**SCHEDULER, "init_pg_lrs": [1]},
            False,
            "`reinit_lr_cfg` cannot hold `init_pg_lrs`: the same configuration is applied at every phase, each with a "
            "different number of parameter groups. Drop `init_pg_lrs`, or write an explicit schedule with "
            "`new_lr_scheduler` per phase.",
        ),
        (None, ["init_pg_lrs"], False, "`reinit_lr_cfg` must be a mapping, got list ['init_pg_lrs']."),
    ],
)
def test_callback_scheduler_configs_that_cannot_apply_to_every_phase_are_refused(
    optimizer: Any, scheduler: Any, explicit: bool, message: str
) -> None:
    err = raised(lambda: apply_implicit_reinit({0: X, 1: Y}, optimizer, scheduler, explicit=explicit))
    assert (str(err), err.phase, err.key) == (message, None, "reinit_lr_cfg")


def test_load_schedule_without_a_source_resolves_the_implicit_schedule_and_keeps_it_as_given() -> None:
    resolved = load_schedule(None, ["a.w", "a.b", "b.w"], reinit_lr_cfg=SCHEDULER)
    assert [p.params for p in resolved.schedule.phases] == [("a.b", "b.w"), ("a.w",)]  # parameter order
    given = {0: {"params": ["b.w", "a.b"]}, 1: {"params": ["a.w"], "new_lr_scheduler": SCHEDULER}}
    assert resolved.given == Schedule.from_dict(given)  # the generator's order, top first
    assert resolved.schedule[1].new_lr_scheduler == SchedulerReinit("S")
    assert resolved.schedule[0].new_lr_scheduler is None


def test_load_schedule_applies_callback_configs_to_a_given_mapping_or_file(tmp_path: Path) -> None:
    names = ["x", "y"]
    from_mapping = load_schedule({0: X, 1: Y}, names, reinit_optim_cfg=OPTIMIZER)
    assert from_mapping.schedule[1].new_optimizer == OptimizerReinit("torch.optim.SGD", {"lr": 0.1})
    path = tmp_path / "s.yaml"
    path.write_text("0: {params: [x], max_transition_epoch: 1}\n1: {params: [y], max_transition_epoch: 2}\n")
    from_file = load_schedule(path, names, epoch_transitions_only=True, reinit_optim_cfg=OPTIMIZER)
    assert from_file.schedule[1].new_optimizer == from_mapping.schedule[1].new_optimizer
    assert [p.max_transition_epoch for p in from_file.schedule.phases] == [1, 2]


def test_load_schedule_refuses_what_the_schedule_and_callback_configs_cannot_make(tmp_path: Path) -> None:
    err = raised(lambda: load_schedule({0: X, 1: Y}, ["x", "y"], reinit_lr_cfg=SCHEDULER))
    assert err.key == "reinit_lr_cfg"  # an explicit schedule takes its scheduler configuration per phase
    err = raised(lambda: load_schedule({0: X, 1: Y}, ["x", "y"], epoch_transitions_only=True))
    assert (err.phase, err.key) == (0, "max_transition_epoch")
    listed = tmp_path / "list.yaml"
    listed.write_text("- params: [x]\n")
    err = raised(lambda: load_schedule(listed, ["x"], reinit_optim_cfg=OPTIMIZER))
    assert str(err).startswith("A fine-tuning schedule must be a non-empty mapping of phase numbers to phases")


def test_write_schedule_file_writes_a_generated_schedule_as_given_and_a_given_one_resolved(tmp_path: Path) -> None:
    resolved = load_schedule({0: {"params": ["b.*"]}, 1: {"params": ["a.w"]}}, ["a.w", "b.w", "b.b"])
    generated = write_schedule_file(resolved, True, tmp_path, "MyModule")
    assert generated == tmp_path / "MyModule_ft_schedule.yaml"
    assert load_schedule_file(generated) == {0: {"params": ["b.*"]}, 1: {"params": ["a.w"]}}
    given = write_schedule_file(resolved, False, tmp_path, "MyModule")
    assert given == tmp_path / "MyModule_ft_schedule_resolved.yaml"
    assert load_schedule_file(given) == {0: {"params": ["b.w", "b.b"]}, 1: {"params": ["a.w"]}}


def test_dump_schedule_creates_missing_directories_and_keeps_the_original_key_order(tmp_path: Path) -> None:
    schedule = Schedule.from_dict({0: {"params": ["x"], "max_transition_epoch": 1, "lr": 0.5}, 1: Y})
    path = dump_schedule(schedule, tmp_path / "a" / "b" / "s.yaml")
    assert path.read_text() == "0:\n  params:\n  - x\n  max_transition_epoch: 1\n  lr: 0.5\n1:\n  params:\n  - y\n"


def test_a_dump_that_fails_leaves_the_previous_file_and_no_temporary_file(tmp_path: Path) -> None:
    path = dump_schedule(Schedule.from_dict({0: X}), tmp_path / "s.yaml")
    before = path.read_text()
    unwritable = Schedule((Phase(params=("x",), lr=object()),))  # type: ignore[arg-type]
    with pytest.raises(yaml.representer.RepresenterError):
        dump_schedule(unwritable, path)
    assert [p.name for p in tmp_path.iterdir()] == ["s.yaml"]
    assert path.read_text() == before


def test_an_unreadable_schedule_file_is_named_with_the_reason(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    err = raised(lambda: load_schedule_file(missing))
    assert str(err) == (
        f"Cannot read fine-tuning schedule file '{missing}': No such file or directory. Check the `ft_schedule` path."
    )
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"0: {params: [x]}\n\xff")
    err = raised(lambda: load_schedule_file(binary))
    assert str(err) == f"Fine-tuning schedule file '{binary}' is not UTF-8 text (byte 17): is it the schedule YAML?"


def test_a_key_repeated_in_a_file_is_named_by_the_error_key(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("0:\n  params: [a]\n  lr: 1\n  lr: 2\n")
    err = raised(lambda: load_schedule_file(path))
    assert str(err) == f"Fine-tuning schedule file '{path}': Key 'lr' appears twice (line 4); keep one."
    assert err.key == "lr"


def test_a_utf8_schedule_file_with_non_ascii_names_loads(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_bytes("0: {params: [köpf.w]}\n".encode())
    assert load_schedule_file(path) == {0: {"params": ["köpf.w"]}}


def test_an_exact_parameter_name_stands_only_for_itself_though_as_a_pattern_it_matches_more() -> None:
    raw = {0: {"params": ["head.w"]}, 1: {"params": ["head.w_extra"]}, 2: {"params": ["tail.w"], "freeze": ["head.w"]}}
    schedule = Schedule.from_dict(raw)
    resolved = resolve_schedule(schedule, NAMES)
    assert [p.params for p in resolved.schedule.phases] == [("head.w",), ("head.w_extra",), ("tail.w",)]
    assert resolved.schedule[2].freeze == ("head.w",)
    assert resolved.given is schedule


@pytest.mark.parametrize(
    ("raw", "message", "phase", "key"),
    [
        (
            {0: {"params": ["head.*"]}, 1: {"params": ["head.w"]}},
            "Parameter 'head.w' is in phase 0 and again in phase 1 (via `params` entry 'head.w'). Each parameter "
            "thaws once: remove it from one phase or narrow the pattern.",
            1,
            "params",
        ),
        (
            {0: {"params": ["nope"]}},
            "Phase 0 `params` entry 'nope' matches no parameter of the model. Names look like: head.w, head.w_extra, "
            "body.0.w, ... (see `fts-dist schedule show` or `model.named_parameters()`).",
            0,
            "params",
        ),
        (
            {0: {"params": ["head.w"]}, 1: {"params": ["tail.w"], "freeze": ["body.*"]}},
            "Phase 1 `freeze` entry 'body.*' names 'body.0.w', but no phase thaws it: a phase can freeze again only "
            "what an earlier phase thawed. Narrow the entry.",
            1,
            "freeze",
        ),
        (
            {0: {"params": ["head.w"]}, 1: {"params": ["tail.w"], "freeze": ["body.0.w"]}, 2: {"params": ["body.*"]}},
            "Phase 1 `freeze` entry 'body.0.w' names 'body.0.w', but phase 2 thaws it: a phase can freeze again only "
            "what an earlier phase thawed. Narrow the entry, or move it to a phase after 2.",
            1,
            "freeze",
        ),
        (
            {
                0: {"params": ["head.w"]},
                1: {"params": ["tail.w"], "freeze": ["head.w"]},
                2: {"params": ["body.*"], "freeze": ["head.w"]},
            },
            "Phase 2 `freeze` entry 'head.w' names 'head.w', which phase 1 froze already. Freeze each parameter once.",
            2,
            "freeze",
        ),
    ],
)
def test_each_resolution_error_reads_in_full(raw: dict, message: str, phase: int, key: str) -> None:
    err = raised(lambda: resolve_schedule(Schedule.from_dict(raw), NAMES))
    assert (str(err), err.phase, err.key) == (message, phase, key)


def test_a_module_without_parameters_has_no_implicit_schedule() -> None:
    err = raised(lambda: generate_implicit_schedule([]))
    assert str(err) == "The module has no parameters, so there is nothing to schedule."


def test_block_generation_defaults_to_one_block_per_phase_at_base_max_lr_without_epochs() -> None:
    schedule = generate_block_schedule(BLOCK_NAMES)
    assert [p.params for p in schedule.phases] == [
        ("head.w",),
        (r"layer\.2\.",),
        (r"layer\.1\.",),
        (r"layer\.0\.",),
        ("emb.w",),
    ]
    assert {(p.lr, p.max_transition_epoch) for p in schedule.phases} == {(None, -1)}


def test_block_generation_ends_phase_d_by_epoch_d_plus_one_times_epochs_per_phase() -> None:
    schedule = generate_block_schedule(BLOCK_NAMES, blocks_per_phase=3, lr=1e-3, lr_decay=1.0, epochs_per_phase=2)
    assert [(p.lr, p.max_transition_epoch) for p in schedule.phases] == [(None, 2), (1e-3, 4), (1e-3, 6)]


@pytest.mark.parametrize(
    ("options", "message", "key"),
    [
        ({"blocks_per_phase": 0}, "blocks_per_phase must be at least 1, got 0.", "blocks_per_phase"),
        ({"lr": -1.0}, "lr must be a positive number, got -1.0.", "lr"),
        ({"lr": 0.0}, "lr must be a positive number, got 0.0.", "lr"),
        ({"lr": math.inf}, "lr must be a positive number, got inf.", "lr"),
        *(
            (
                {"lr": 1.0, "lr_decay": decay},
                f"lr_decay must be in (0, 1]: each deeper phase trains at lr_decay times the phase above; got {decay}.",
                "lr_decay",
            )
            for decay in (0.0, 1.5, 2.0, math.nan)
        ),
        ({"lr_decay": 0.5}, "lr_decay needs lr: the learning rate of phase 1, which deeper phases decay from.", None),
        ({"epochs_per_phase": 0}, "epochs_per_phase must be at least 1, got 0.", "epochs_per_phase"),
    ],
)
def test_each_block_generation_option_error_reads_in_full(options: dict, message: str, key: str | None) -> None:
    err = raised(lambda: generate_block_schedule(BLOCK_NAMES, **options))
    assert (str(err), err.key) == (message, key)


def test_two_blocks_are_enough_and_a_parameter_between_blocks_joins_the_block_before_it() -> None:
    layout = find_blocks(["emb.w", "layer.0.w", "mid.w", "layer.1.w", "head.w"])
    assert layout.blocks == ((0, ("layer.0.w", "mid.w")), (1, ("layer.1.w",)))
    assert (layout.stem, layout.head) == (("emb.w",), ("head.w",))


def test_of_two_containers_holding_as_many_tensors_the_shallower_wins() -> None:
    layout = find_blocks(["enc.blk.0.w", "enc.blk.1.w", "layer.0.w", "layer.1.w"])
    assert layout.container == "layer."
    assert layout.stem == ("enc.blk.0.w", "enc.blk.1.w")


def test_a_model_without_repeated_blocks_is_refused_naming_its_first_parameters() -> None:
    err = raised(lambda: find_blocks(["a.w", "b.w", "c.0.w", "d.w", "e.w"]))
    assert str(err) == (
        "Found no repeated blocks in the model's parameter names (e.g. ['a.w', 'b.w', 'c.0.w']): no name part is "
        "numbered, like `layer.0.` or `layer1.`, twice alike. Write the schedule by hand, or use the implicit one "
        "(`fts-dist schedule gen` without `--blocks`)."
    )
    assert err.key == "params"
