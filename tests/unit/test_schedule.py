from __future__ import annotations

import re
from pathlib import Path

import pytest

from fts_dist import FTSConfigError
from fts_dist.schedule import (
    Schedule,
    dump_schedule,
    generate_implicit_schedule,
    load_schedule_file,
    resolve_schedule,
)

NAMES = ["body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias", "head.weight", "head.bias"]


def test_original_format_round_trips_through_yaml(tmp_path: Path) -> None:
    raw = {
        0: {"params": ["head.weight", "head.bias"], "max_transition_epoch": 2},
        1: {"params": ["body.2.*"], "lr": 1e-4, "max_transition_epoch": 4},
        2: {"params": ["body.0.*"]},
    }
    schedule = Schedule.from_dict(raw)
    path = dump_schedule(schedule, tmp_path / "s.yaml")
    assert Schedule.from_dict(load_schedule_file(path)) == schedule
    assert schedule.to_dict() == raw


def test_freeze_and_scale_lrs_resolve_round_trip_and_leave_the_trainable_set() -> None:
    raw = {
        0: {"params": ["head.*"]},
        1: {"params": ["body.2.*"], "lr": 1e-3},
        2: {"params": ["body.0.*"], "freeze": ["head.b.*", "body.2.weight"], "scale_lrs": 0.25},
    }
    schedule = Schedule.from_dict(raw)
    assert schedule.to_dict() == raw
    resolved = resolve_schedule(schedule, NAMES).schedule
    assert resolved[2].freeze == ("body.2.weight", "head.bias")  # parameter order
    assert resolved[2].scale_lrs == 0.25
    assert resolved.trainable_at(1) == ("head.weight", "head.bias", "body.2.weight", "body.2.bias")
    assert resolved.trainable_at(2) == ("head.weight", "body.2.bias", "body.0.weight", "body.0.bias")


def test_yaml_written_for_the_original_loads_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "orig.yaml"
    path.write_text(
        "0:\n  params:\n  - head.weight\n  - head.bias\n1:\n  params:\n  - body.2.*\n  lr: 1e-4\n"
        "  max_transition_epoch: 3\n"
    )
    schedule = Schedule.from_dict(load_schedule_file(path))
    assert schedule[1].lr == pytest.approx(1e-4) and schedule[1].max_transition_epoch == 3
    assert schedule[0].max_transition_epoch == -1 and schedule[0].lr is None


def test_resolution_expands_regexes_in_parameter_order_and_lists_unscheduled() -> None:
    resolved = resolve_schedule(
        Schedule.from_dict({0: {"params": ["head.*"]}, 1: {"params": ["body.2.bias", "body.2.weight"]}}), NAMES
    )
    assert resolved.schedule[0].params == ("head.weight", "head.bias")
    assert resolved.schedule[1].params == ("body.2.weight", "body.2.bias")
    assert resolved.unscheduled == ("body.0.weight", "body.0.bias")


@pytest.mark.parametrize(
    ("raw", "match", "phase", "key"),
    [
        (
            {0: {"params": ["head.weight"]}, 1: {"params": ["nope.*"]}},
            "Phase 1 `params` entry 'nope.*' matches no",
            1,
            "params",
        ),
        (
            {0: {"params": ["head.*"]}, 1: {"params": ["head.bias"]}},
            "'head.bias' is in phase 0 and again in phase 1",
            1,
            "params",
        ),
        ({0: {"params": ["head.*"]}, 1: {"params": ["body.(["]}}, "nor a valid regular expression", 1, "params"),
        (
            {0: {"params": ["head.*"]}, 1: {"params": ["body.2.*"], "freeze": ["body.2.bias"]}},
            "Phase 1 `freeze` entry 'body.2.bias' names 'body.2.bias', but phase 1 thaws it",
            1,
            "freeze",
        ),
        (
            {0: {"params": ["head.*"]}, 1: {"params": ["body.2.*"], "freeze": ["body.*"]}},
            "entry 'body.*' names 'body.0.weight', but no phase thaws it: a phase can freeze again only",
            1,
            "freeze",
        ),
        (
            {
                0: {"params": ["head.*"]},
                1: {"params": ["body.2.*"], "freeze": ["head.bias"]},
                2: {"params": ["body.0.*"], "freeze": ["head.*"]},
            },
            "Phase 2 `freeze` entry 'head.*' names 'head.bias', which phase 1 froze already",
            2,
            "freeze",
        ),
        (
            {0: {"params": ["head.*"]}, 1: {"params": ["body.2.*"], "freeze": ["tail.*"]}},
            "Phase 1 `freeze` entry 'tail.*' matches no parameter",
            1,
            "freeze",
        ),
    ],
)
def test_resolution_errors_name_phase_and_entry(raw: dict, match: str, phase: int, key: str) -> None:
    with pytest.raises(FTSConfigError, match=re.escape(match)) as err:
        resolve_schedule(Schedule.from_dict(raw), NAMES)
    assert (err.value.phase, err.value.key) == (phase, key)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"a": {"params": ["x"]}}, "phase key 'a' is not an integer"),
        ({"²": {"params": ["x"]}}, "phase key '²' is not an integer"),  # str.isdigit() is true for it (hypothesis)
        ({" 1 ": {"params": ["x"]}, "0": {"params": ["y"]}}, None),  # digit strings, as YAML may give them, are fine
        ({0: {"params": ["x"]}, 2: {"params": ["y"]}}, r"contiguous integers from 0, got \[0, 2\]"),
        ({1: {"params": ["x"]}}, r"contiguous integers from 0, got \[1\]"),
        ({0: {"params": []}}, "Phase 0 needs `params`"),
        ({0: {"params": ["x"], "max_transition_epoch": "3"}}, "Phase 0 `max_transition_epoch` must be an integer"),
        (
            {0: {"params": ["x"], "max_transition_epoch": 5}, 1: {"params": ["y"], "max_transition_epoch": 3}},
            r"`max_transition_epoch` of phase 1 \(3\) is lower than phase 0's \(5\)",
        ),
        ({0: {"params": ["x"]}, 1: {"params": ["y"], "lr": "fast"}}, "Phase 1 `lr` must be a non-negative number"),
        ({0: {"params": ["x"], "optimiser": {}}}, r"Phase 0 has unsupported key\(s\) \['optimiser'\]"),
        ({0: {"params": ["x"], "new_optimizer": {}}}, "Phase 0 has `new_optimizer`, but phase 0 trains with what"),
        ({0: {"params": ["x"]}, 1: {"params": ["y"], "new_optimizer": {"optimizer_init": {}}}}, "Phase 1 `new_opti"),
        (
            {
                0: {"params": ["x"]},
                1: {
                    "params": ["y"],
                    "new_lr_scheduler": {"lr_scheduler_init": {"class_path": "S"}, "pl_lrs_cfg": {"interval": "hour"}},
                },
            },
            r"Phase 1 `new_lr_scheduler`: `pl_lrs_cfg.interval` must be 'step' or 'epoch', got 'hour'",
        ),
        (
            {
                0: {"params": ["x"]},
                1: {
                    "params": ["y"],
                    "new_lr_scheduler": {"lr_scheduler_init": {"class_path": "S"}, "init_pg_lrs": [0.1, "fast"]},
                },
            },
            r"`init_pg_lrs` must be a list of non-negative numbers",
        ),
        ({0: {"params": ["x"]}, "0": {"params": ["y"]}}, r"name one phase twice"),
        ({0: {"params": ["x"], "freeze": ["x"]}}, "Phase 0 has `freeze`, but nothing has thawed before it"),
        ({0: {"params": ["x"], "scale_lrs": 0.5}}, "Phase 0 has `scale_lrs`, but it starts with the optimizer"),
        ({0: {"params": ["x"]}, 1: {"params": ["y"], "scale_lrs": 0}}, "Phase 1 `scale_lrs` must be a positive"),
        ({0: {"params": ["x"]}, 1: {"params": ["y"], "scale_lrs": "half"}}, "Phase 1 `scale_lrs` must be a non-neg"),
        ({0: {"params": ["x"]}, 1: {"params": ["y"], "freeze": []}}, "Phase 1 needs `freeze`: a non-empty list"),
        ([1, 2], "must be a non-empty mapping"),
    ],
)
def test_structure_errors_are_precise(raw: object, match: str | None) -> None:
    if match is None:
        assert len(Schedule.from_dict(raw)) == 2
        return
    with pytest.raises(FTSConfigError, match=match):
        Schedule.from_dict(raw)


def test_epoch_transitions_only_requires_every_phase_epoch() -> None:
    raw = {0: {"params": ["x"], "max_transition_epoch": 1}, 1: {"params": ["y"]}}
    assert Schedule.from_dict(raw)[1].max_transition_epoch == -1
    with pytest.raises(FTSConfigError, match=r"phase\(s\) \[1\] have none") as err:
        Schedule.from_dict(raw, epoch_transitions_only=True)
    assert err.value.phase == 1


def test_missing_duplicate_and_malformed_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FTSConfigError, match=r"Cannot read fine-tuning schedule file '.*missing.yaml'"):
        load_schedule_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("0:\n  params: [a\n")
    with pytest.raises(FTSConfigError, match=r"'.*bad.yaml' is not valid YAML"):
        load_schedule_file(bad)
    dup = tmp_path / "dup.yaml"
    dup.write_text("0:\n  params: [a]\n0:\n  params: [b]\n")
    with pytest.raises(FTSConfigError, match=r"dup.yaml.*Key 0 appears twice"):
        load_schedule_file(dup)


def test_implicit_schedule_is_two_parameters_per_phase_from_the_top() -> None:
    schedule = generate_implicit_schedule(NAMES[:5])
    assert [p.params for p in schedule.phases] == [
        ("head.weight", "body.2.bias"),
        ("body.2.weight", "body.0.bias"),
        ("body.0.weight",),
    ]
