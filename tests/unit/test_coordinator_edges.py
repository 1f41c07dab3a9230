"""The edges of the coordinator that test_coordinator.py leaves open: forced and epoch-only transitions, max_depth,
resume plans, what a plan says about freeze, scaling and re-initialisation, why training stopped, and rank-0 work.

Found by mutation testing (mutmut) of ``fts_dist.coordinator``.
"""

from __future__ import annotations

from typing import Any

import pytest

from fts_dist import FTSConfigError
from fts_dist.coordinator import (
    CheckpointRef,
    LocalComm,
    ScheduleCoordinator,
    TransitionSignals,
    describe_stop,
    run_on_rank_zero,
    should_transition,
)
from fts_dist.schedule import Schedule
from fts_dist.schedule.reinit import OptimizerReinit, SchedulerReinit

SCHEDULE = Schedule.from_dict(
    {
        0: {"params": ["a"], "max_transition_epoch": 2},
        1: {"params": ["b"], "lr": 0.5},
        2: {"params": ["c"], "max_transition_epoch": 6},
    }
)
OPTIMIZER = {"optimizer_init": {"class_path": "torch.optim.SGD"}}
SCHEDULER = {"lr_scheduler_init": {"class_path": "torch.optim.lr_scheduler.StepLR"}}
RICH = Schedule.from_dict(
    {
        0: {"params": ["a", "a2"]},
        1: {"params": ["b"], "new_optimizer": OPTIMIZER},
        2: {"params": ["c"], "freeze": ["a2"], "scale_lrs": 0.5},
        3: {"params": ["d"], "new_lr_scheduler": SCHEDULER},
    }
)


class RankOne:
    """Rank 1 of two: receives rank 0's value from every broadcast."""

    rank, world_size = 1, 2

    def __init__(self, rank0_value: Any) -> None:
        self.rank0_value = rank0_value

    def broadcast(self, obj: Any) -> Any:
        return self.rank0_value

    def all_gather(self, obj: Any) -> list[Any]:
        return [self.rank0_value, obj]

    def barrier(self) -> None:
        pass


def bound(schedule: Schedule = SCHEDULE, **options: Any) -> ScheduleCoordinator:
    coordinator = ScheduleCoordinator(schedule, **options)
    coordinator.bind_phase0_lr(0.1)
    return coordinator


def test_phases_without_lr_default_to_a_base_max_lr_of_1e_5() -> None:
    assert bound().phase_lrs == (0.1, 0.5, 1e-5)


def test_phase_lrs_before_the_optimizer_is_known_is_an_error() -> None:
    with pytest.raises(RuntimeError, match=r"bind_phase0_lr\(\) must be called before"):
        _ = ScheduleCoordinator(SCHEDULE).phase_lrs


def test_epoch_transitions_only_ignores_early_stopping_in_decide() -> None:
    coordinator = bound(epoch_transitions_only=True)
    assert coordinator.decide(TransitionSignals(1, es_phase_complete=True), None) is None
    assert coordinator.decide(TransitionSignals(2), None).depth == 1


def test_force_moves_to_the_next_phase_regardless_of_signals_but_not_past_max_depth() -> None:
    coordinator = bound(max_depth=1)
    plan = coordinator.decide(TransitionSignals(0), None, force=True)
    assert (plan.depth, plan.epoch) == (1, 0)
    assert coordinator.decide(TransitionSignals(1, True), None, force=True) is None
    assert coordinator.depth == 1 and coordinator.state.phase_start_epochs == [0, 0]


def test_without_restore_best_a_plan_restores_nothing() -> None:
    plan = bound(restore_best=False).decide(TransitionSignals(2), CheckpointRef("best.ckpt", 0))
    assert plan is not None and plan.restore is None


@pytest.mark.parametrize(("max_depth", "effective"), [(-1, 2), (0, 0), (1, 1), (2, 2), (5, 2)])
def test_max_depth_is_clamped_to_the_schedule(max_depth: int, effective: int) -> None:
    coordinator = ScheduleCoordinator(SCHEDULE, max_depth=max_depth)
    assert coordinator.max_depth == effective
    assert coordinator.depth_remaining == effective
    assert coordinator.in_final_phase is (effective == 0)


def test_max_depth_zero_never_leaves_phase_zero() -> None:
    coordinator = bound(max_depth=0)
    assert coordinator.decide(TransitionSignals(9, True), None) is None
    assert not should_transition(SCHEDULE, 0, 0, TransitionSignals(9, True), False)


def test_a_max_transition_epoch_of_zero_ends_the_phase_before_epoch_zero() -> None:
    schedule = Schedule.from_dict({0: {"params": ["a"], "max_transition_epoch": 0}, 1: {"params": ["b"]}})
    assert should_transition(schedule, 0, -1, TransitionSignals(0), True)


def test_state_dict_carries_depth_start_epochs_and_the_schedule() -> None:
    coordinator = bound()
    coordinator.decide(TransitionSignals(2), None)
    assert coordinator.state_dict() == {"depth": 1, "phase_start_epochs": [0, 2], "schedule": SCHEDULE.to_dict()}


def test_resume_plan_rebuilds_the_current_depth_or_the_one_asked_for() -> None:
    coordinator = bound()
    coordinator.decide(TransitionSignals(2), None)
    plan = coordinator.resume_plan(7)
    assert (plan.depth, plan.epoch, plan.phase_params, plan.phase_lrs, plan.restore) == (
        1,
        7,
        (("a",), ("b",)),
        (0.1, 0.5),
        None,
    )
    ref = CheckpointRef("last.ckpt", 2)
    plan = coordinator.resume_plan(9, depth=2, restore=ref)
    assert (plan.depth, plan.epoch, plan.phase_params, plan.restore) == (2, 9, (("a",), ("b",), ("c",)), ref)
    assert coordinator.depth == 1  # a resume plan does not advance the state


def test_a_plain_schedule_plans_no_freeze_scaling_or_reinit() -> None:
    plan = bound().resume_plan(0, depth=2)
    assert (plan.phase_freeze, plan.phase_lr_scales, plan.phase_optimizers, plan.phase_lr_schedulers) == (
        (),
        (),
        (),
        (),
    )
    assert plan.trainable == ("a", "b", "c")
    assert [plan.optimizer_phase(d) for d in range(3)] == [0, 0, 0]
    assert [plan.lr_scheduler_phase(d) for d in range(3)] == [0, 0, 0]
    assert [plan.lr_scale(d) for d in range(3)] == [1.0, 1.0, 1.0]


def test_a_plan_carries_each_phases_freeze_scale_and_reinit_up_to_its_depth() -> None:
    coordinator = bound(RICH)
    optimizer, scheduler = OptimizerReinit("torch.optim.SGD"), SchedulerReinit("torch.optim.lr_scheduler.StepLR")
    plan = coordinator.resume_plan(0, depth=3)
    assert plan.phase_freeze == ((), (), ("a2",), ())
    assert plan.phase_lr_scales == (1.0, 1.0, 0.5, 1.0)
    assert plan.phase_optimizers == (None, optimizer, None, None)
    assert plan.phase_lr_schedulers == (None, None, None, scheduler)
    assert [plan.optimizer_phase(d) for d in range(4)] == [0, 1, 1, 1]
    assert [plan.lr_scheduler_phase(d) for d in range(4)] == [0, 0, 0, 3]
    assert [plan.lr_scale(d) for d in range(4)] == [1.0, 1.0, 0.5, 1.0]
    assert plan.trainable_phases(1) == (("a", "a2"), ("b",))  # phase 2 has not frozen a2 yet
    assert plan.trainable_phases(2) == (("a",), ("b",), ("c",))
    assert plan.trainable == ("a", "b", "c", "d")
    early = coordinator.resume_plan(0, depth=1)  # before the phases that freeze, scale or add a scheduler
    assert (early.phase_freeze, early.phase_lr_scales, early.phase_lr_schedulers) == ((), (), ())
    assert early.phase_optimizers == (None, optimizer)


@pytest.mark.parametrize(
    ("depth", "max_depth", "epoch", "max_epochs", "early_stop", "expected"),
    [
        (
            2,
            2,
            4,
            10,
            (4, "Monitored metric val_loss did not improve."),
            "early stopping ended the last phase at epoch 4: Monitored metric val_loss did not improve",
        ),
        (
            1,
            1,
            4,
            10,
            (3, "Stopped."),
            "max_depth (1) was reached (1 phase(s) of the schedule not run) and early stopping ended the last phase "
            "at epoch 3: Stopped",
        ),
        (
            2,
            2,
            4,
            10,
            (4, "No improvement in X..."),
            "early stopping ended the last phase at epoch 4: No improvement in X",
        ),
        (2, 2, 5, 5, None, "max_epochs (5) came"),
        (0, 2, 5, 5, None, "max_epochs (5) came, before the last phase"),
        (0, 1, 6, 5, None, "max_epochs (5) came, before the last phase"),  # no prefix before max_depth is reached
        (0, 0, 0, 0, None, "max_depth (0) was reached (2 phase(s) of the schedule not run) and max_epochs (0) came"),
        (2, 2, 3, 5, None, "training stopped at epoch 3 (another callback, or an interruption)"),
        (2, 2, 3, None, None, "training stopped at epoch 3 (another callback, or an interruption)"),
        (2, 2, 3, -1, None, "training stopped at epoch 3 (another callback, or an interruption)"),
    ],
)
def test_describe_stop_says_why_training_ended(
    depth: int, max_depth: int, epoch: int, max_epochs: int | None, early_stop: Any, expected: str
) -> None:
    stop = describe_stop(
        depth=depth, max_depth=max_depth, final_depth=2, epoch=epoch, max_epochs=max_epochs, early_stop=early_stop
    )
    assert stop == expected


def test_rank_zero_work_returns_its_result() -> None:
    assert run_on_rank_zero(lambda: {"phases": 2}, LocalComm()) == {"phases": 2}


def test_a_config_error_on_rank_zero_is_raised_again_with_its_phase_and_key() -> None:
    def work() -> None:
        raise FTSConfigError("Phase 1 is wrong.", phase=1, key="lr")

    with pytest.raises(FTSConfigError) as err:
        run_on_rank_zero(work, LocalComm())
    assert (str(err.value), err.value.phase, err.value.key) == ("Phase 1 is wrong.", 1, "lr")


def test_other_ranks_do_not_run_the_work_and_receive_rank_zeros_result_or_error() -> None:
    def work() -> None:
        raise AssertionError("only rank 0 runs the work")

    assert run_on_rank_zero(work, RankOne(42)) == 42
    with pytest.raises(FTSConfigError) as err:
        run_on_rank_zero(work, RankOne(FTSConfigError("Phase 2 is wrong.", phase=2, key="params")))
    assert (str(err.value), err.value.phase, err.value.key) == ("Phase 2 is wrong.", 2, "params")
