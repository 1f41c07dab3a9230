"""Fuzzed schedules (hypothesis): malformed input raises only FTSConfigError, naming the phase and key at fault."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fts_dist import FTSConfigError
from fts_dist.schedule import Schedule, load_schedule_file, resolve_schedule
from tests.fuzzing import examples

NAMES = [f"layers.{i}.{kind}" for i in range(4) for kind in ("weight", "bias")]
VALID = {
    0: {"params": ["layers.3.weight", "layers.3.bias"], "max_transition_epoch": 2},
    1: {"params": ["layers.2.*"], "lr": 1e-3, "max_transition_epoch": 4},
    2: {"params": ["layers.[01].weight", "layers.[01].bias"]},
}

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 10), st.floats(allow_nan=True), st.text(max_size=6), st.just("1e-5")
)
anything = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(scalars, inner, max_size=3), max_leaves=8
)
patterns = st.one_of(
    st.sampled_from([*NAMES, "layers.*", "layers.[0-9].weight", "(", "[", "*", "layers.9.*", ""]),
    st.text(alphabet="layers.0123*[]()?+\\", max_size=10),
)
phases = st.fixed_dictionaries(
    {},
    optional={
        "params": st.one_of(st.lists(patterns, max_size=3), anything),
        "max_transition_epoch": st.one_of(st.integers(-3, 8), anything),
        "lr": st.one_of(st.floats(-1, 1), st.just("1.0e-4"), anything),
        "new_optimizer": anything,
        "new_lr_scheduler": st.one_of(
            anything,
            st.fixed_dictionaries(
                {
                    "lr_scheduler_init": st.fixed_dictionaries(
                        {"class_path": st.just("S")}, optional={"init_args": anything}
                    )
                },
                optional={"pl_lrs_cfg": anything, "init_pg_lrs": anything, "use_current_optimizer_pg_lrs": anything},
            ),
        ),
    },
)
schedules = st.dictionaries(
    st.one_of(st.integers(-1, 4), st.sampled_from(["0", "1", "one", "2.0"])), st.one_of(phases, anything), max_size=4
)


def assert_names_its_location(err: FTSConfigError) -> None:
    message = str(err)
    assert message and "Traceback" not in message
    if err.phase is not None:
        assert re.search(rf"\bphase\W+{err.phase}\b", message, re.IGNORECASE), message
    if err.key is not None and err.key != "phase":  # as written, or escaped (a control character prints as \x1f)
        assert err.key in message or repr(err.key) in message, message


@settings(max_examples=examples(400))
@given(raw=st.one_of(schedules, anything), epoch_transitions_only=st.booleans())
def test_malformed_schedule_dicts_raise_only_ftsconfigerror(raw, epoch_transitions_only: bool) -> None:
    try:
        schedule = Schedule.from_dict(raw, epoch_transitions_only=epoch_transitions_only)
        resolve_schedule(schedule, NAMES)
    except FTSConfigError as err:
        assert_names_its_location(err)
        if isinstance(raw, dict) and raw and all(isinstance(v, dict) for v in raw.values()):
            assert err.phase is not None or err.key is not None, f"no location named: {err}"


MUTATION_CHARS = ":-[]{}'\"\t\n #&*!|>%@`,"


@st.composite
def mutated_yaml(draw) -> str:
    text = yaml.safe_dump(VALID, sort_keys=False)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["insert", "delete", "duplicate-line"]))
        if action == "insert":
            text = text[:at] + draw(st.sampled_from(MUTATION_CHARS)) + text[at:]
        elif action == "delete":
            text = text[:at] + text[at + 1 :]
        else:
            lines = text.splitlines(keepends=True)
            line = draw(st.integers(0, len(lines) - 1))
            text = "".join(lines[: line + 1] + lines[line:])
    return text


@settings(max_examples=examples(300), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=mutated_yaml())
def test_mutated_schedule_files_raise_only_ftsconfigerror(tmp_path: Path, text: str) -> None:
    path = tmp_path / "schedule.yaml"
    path.write_text(text)
    try:
        resolve_schedule(Schedule.from_dict(load_schedule_file(path)), NAMES)
    except FTSConfigError as err:
        assert_names_its_location(err)


@pytest.mark.parametrize("raw_bytes", [b"\xff\xfe\x00garbage", b"0: {params: [\x00]}", b"", b"---\n...\n"])
def test_undecodable_or_empty_files_raise_ftsconfigerror(tmp_path: Path, raw_bytes: bytes) -> None:
    path = tmp_path / "schedule.yaml"
    path.write_bytes(raw_bytes)
    with pytest.raises(FTSConfigError):
        Schedule.from_dict(load_schedule_file(path))
