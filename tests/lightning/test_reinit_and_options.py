"""finetuning-scheduler 2.x's keys where fts_dist goes further than the original, on one process with a real Trainer:
resume after an optimizer and after an LR-scheduler re-initialisation, a restore across a change of optimizer (the
original fails there: ``KeyError: 'betas'``), configuration errors before step 0, frozen BatchNorm layers, the log
directory and level, and the line that says why training stopped."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from fts_dist import FTSConfigError
from tests.lightning.conftest import Recorder
from tests.modules import REINIT_SCHEDULE, SCHEDULE, depths_by_epoch

ADAMW = {"optimizer_init": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.01, "weight_decay": 0.05}}}
EPOCHS = {0: 1, 1: 3, 2: 3}  # phase 1 (AdamW, StepLR) from epoch 1, phase 2 (cosine) from epoch 3
REINIT_BY_EPOCH = {d: {**phase, "max_transition_epoch": EPOCHS[d]} for d, phase in REINIT_SCHEDULE.items()}
REINIT_BY_EPOCH[1] = {**REINIT_BY_EPOCH[1], "new_optimizer": ADAMW}
WITH_NORM = {**SCHEDULE, 2: {**SCHEDULE[2], "params": [*SCHEDULE[2]["params"], "norm.*"]}}
NORM_BY_EPOCH = {d: {**phase, "max_transition_epoch": EPOCHS[d]} for d, phase in WITH_NORM.items()}


def decay(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.StepLR:
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)


class Watch(pl.Callback):
    """Per epoch: the optimizer and scheduler kinds, whether the schedulers schedule the optimizer the trainer steps,
    how many parameters hold optimizer state; per batch: whether the BatchNorm layer trains."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, Any]] = []
        self.norm_training: list[bool] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizer = trainer.optimizers[0]
        schedulers = [config.scheduler for config in trainer.lr_scheduler_configs]
        self.epochs.append(
            {
                "optimizer": type(optimizer).__name__,
                "schedulers": [type(s).__name__ for s in schedulers],
                "bound": all(s.optimizer is optimizer for s in schedulers),
                "with_state": len(optimizer.state),
            }
        )

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if pl_module.norm is not None:
            self.norm_training.append(pl_module.norm.training)


@pytest.fixture
def fts_log() -> Iterator[list[str]]:
    """The messages the ``fts_dist`` logger emits (at any level) while the test runs."""
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("fts_dist")
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)
    logger.setLevel(logging.INFO)


# the same, but phase 1's StepLR starts from given rates (`init_pg_lrs`) and phase 2 keeps it: a resume in phase 2
# builds phase 1's scheduler over phase 1's two groups, then adds phase 2's
GIVEN_RATES = {**REINIT_BY_EPOCH[1]["new_lr_scheduler"], "init_pg_lrs": [0.07, 0.05]}
KEEPING_STEPLR = {
    **REINIT_BY_EPOCH,
    1: {**REINIT_BY_EPOCH[1], "new_lr_scheduler": GIVEN_RATES},
    2: {k: v for k, v in REINIT_BY_EPOCH[2].items() if k != "new_lr_scheduler"},
}


@pytest.mark.parametrize("schedule", [REINIT_BY_EPOCH, KEEPING_STEPLR], ids=["cosine-in-phase-2", "steplr-kept"])
def test_resume_after_an_optimizer_and_after_a_scheduler_reinit_equals_the_uninterrupted_run(
    fit, tmp_path_factory, schedule: dict
) -> None:
    def run(max_epochs: int, **kwargs: Any) -> tuple[Any, Watch]:
        watch = Watch()
        callbacks = [watch, *kwargs.pop("extra_callbacks", [])]
        model = Recorder(scheduler=decay)
        fit(model, ft_schedule=schedule, epoch_transitions_only=True, max_epochs=max_epochs,
            extra_callbacks=callbacks, **kwargs)  # fmt: skip
        return model, watch

    full, full_watch = run(5)
    assert depths_by_epoch(full.records) == [0, 1, 1, 2, 2]
    kinds = [(e["optimizer"], e["schedulers"], e["bound"]) for e in full_watch.epochs]
    phase2_scheduler = "CosineAnnealingLR" if schedule is REINIT_BY_EPOCH else "StepLR"
    assert kinds == [
        ("SGD", ["StepLR"], True),
        *[("AdamW", ["StepLR"], True)] * 2,
        *[("AdamW", [phase2_scheduler], True)] * 2,
    ]
    # phase 1: AdamW (fresh state) and a StepLR from group 0's current rate (or the same, given)
    assert full_watch.epochs[1]["with_state"] == 0 and full.records[1]["lrs"] == pytest.approx([0.07, 0.05])
    # phase 2: a cosine schedule from the groups' initial rates (AdamW's 0.01, the phases' 0.05 and 0.02); or the
    # StepLR going on, halving twice, and the new group at its rate
    expected = [0.01, 0.05, 0.02] if schedule is REINIT_BY_EPOCH else [0.07 / 4, 0.05 / 4, 0.02]
    assert full.records[3]["lrs"] == pytest.approx(expected)

    every_epoch = tmp_path_factory.mktemp("every_epoch")
    saver = ModelCheckpoint(dirpath=every_epoch, filename="{epoch}", save_top_k=-1)
    run(4, extra_callbacks=[saver])
    for taken_at in (1, 3):  # after phase 1's optimizer and scheduler re-initialisation; in phase 2
        resumed, watch = run(5, ckpt_path=str(every_epoch / f"epoch={taken_at}.ckpt"))
        assert [(e["optimizer"], e["schedulers"], e["bound"]) for e in watch.epochs] == kinds[taken_at + 1 :]
        for expected_record, got in zip(full.records[taken_at + 1 :], resumed.records, strict=True):
            assert got["trainable"] == expected_record["trainable"]
            assert got["lrs"] == pytest.approx(expected_record["lrs"], rel=1e-12)
        for name, value in full.state_dict().items():
            torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=1e-6)


def test_restore_best_across_a_change_of_optimizer_restores_the_weights_and_starts_the_optimizer_fresh(
    fit, fts_log: list[str]
) -> None:
    """Phase 1 (epoch 3) trains AdamW; phase 2 (epoch 4) restores the best checkpoint, epoch 1's, which SGD wrote:
    its weights come back, its SGD state cannot go into AdamW, so AdamW starts fresh (the original project loads
    SGD's groups into AdamW and fails at the next step)."""
    watch = Watch()
    schedule = {**SCHEDULE, 1: {**SCHEDULE[1], "new_optimizer": ADAMW}}
    model = Recorder(scripted_val_loss=[1.0, 0.5, 0.9, 0.8, 0.85, 0.7, 0.6], scheduler=decay)
    model, _, fts = fit(model, ft_schedule=schedule, max_epochs=6, extra_callbacks=[watch])
    assert depths_by_epoch(model.records) == [0, 0, 0, 1, 2]  # early stopping ends phase 2 after epoch 4
    best = torch.load(fts.checkpoint.best_model_path, weights_only=False)
    assert best["epoch"] == 1
    for name, value in best["state_dict"].items():
        assert torch.equal(model.records[4]["weights"][name], value), name
    assert [e["optimizer"] for e in watch.epochs] == ["SGD"] * 3 + ["AdamW"] * 2
    assert watch.epochs[4]["with_state"] == 0 and watch.epochs[4]["bound"]
    # the earlier groups keep their rates from before the transition (after epoch 3's StepLR step); the new one
    # starts at its own
    assert model.records[4]["lrs"] == pytest.approx([*(lr * 0.7 for lr in model.records[3]["lrs"]), 0.02])
    assert any(
        "phase 2 trains with AdamW (phase 1's `new_optimizer`): the weights of" in m and "(phase 0) are restored" in m
        for m in fts_log
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({1: {"new_optimizer": {"optimizer_init": {"class_path": "torch.optim.Adamm"}}}},
         r"Phase 1 `new_optimizer`: cannot import `class_path` 'torch.optim.Adamm'"),
        ({1: {"new_optimizer": {"optimizer_init": {"class_path": "torch.optim.AdamW", "init_args": {"betas": 3}}}}},
         r"Phase 1 `new_optimizer`: AdamW\(\*\*\{'betas': 3\}\) fails"),
        ({2: {"new_lr_scheduler": {"lr_scheduler_init": {"class_path": "torch.optim.lr_scheduler.CyclicLR",
                                                         "init_args": {"base_lr": 0.01, "max_lr": 0.1}}}}},
         r"Phase 2 `new_lr_scheduler`: LR scheduler CyclicLR is not supported"),
        ({2: {"new_lr_scheduler": {"lr_scheduler_init": {"class_path": "torch.optim.lr_scheduler.StepLR",
                                                         "init_args": {"step_size": 1}}, "init_pg_lrs": [0.1, 0.2]}}},
         r"Phase 2 `new_lr_scheduler` `init_pg_lrs` has 2 learning rates, but the optimizer will have 3"),
        ({"reinit_lr_cfg": {"lr_scheduler_init": {"class_path": "torch.optim.lr_scheduler.StepLR"}}},
         r"`reinit_lr_cfg` re-initialises the LR scheduler at every phase of the implicit schedule"),
    ],
    ids=["import", "init_args", "unsupported-scheduler", "init_pg_lrs-count", "reinit_lr_cfg-with-explicit"],
)  # fmt: skip
def test_bad_reinitialisation_configs_are_refused_before_training(fit, changes: dict, message: str) -> None:
    schedule = {d: {**phase, **changes.get(d, {})} for d, phase in SCHEDULE.items()}
    model = Recorder()
    with pytest.raises(FTSConfigError, match=message):
        fit(model, ft_schedule=schedule, reinit_lr_cfg=changes.get("reinit_lr_cfg"), max_epochs=3)
    assert model.steps == 0


def test_a_new_lr_scheduler_with_per_group_arguments_is_tried_over_its_phase_groups(fit) -> None:
    """ReduceLROnPlateau with one ``min_lr`` per group of phase 2 (three): checked against three groups, not one."""
    plateau = {
        "lr_scheduler_init": {
            "class_path": "torch.optim.lr_scheduler.ReduceLROnPlateau",
            "init_args": {"min_lr": [0.0, 1e-6, 1e-6], "patience": 0},
        },
        "pl_lrs_cfg": {"monitor": "val_loss"},
    }
    schedule = {d: {**phase, "max_transition_epoch": EPOCHS[d]} for d, phase in SCHEDULE.items()}
    schedule[2]["new_lr_scheduler"] = plateau
    model, trainer, _ = fit(Recorder(), ft_schedule=schedule, epoch_transitions_only=True, max_epochs=4)
    assert depths_by_epoch(model.records) == [0, 1, 1, 2]
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and scheduler.min_lrs == [0.0, 1e-6, 1e-6]


@pytest.mark.parametrize(
    ("options", "frozen_trains", "frozen_tracks"),
    [
        ({}, True, True),
        ({"frozen_bn_track_running_stats": False}, True, False),
        ({"frozen_bn_eval": True}, False, False),
    ],
    ids=["default", "no-tracking", "eval"],
)
def test_frozen_batchnorm_trains_tracks_or_holds_still_until_its_phase(
    fit, options: dict, frozen_trains: bool, frozen_tracks: bool
) -> None:
    """The BatchNorm layer thaws in phase 2 (epoch 3): until then it trains (batch statistics) or not, and updates
    its running statistics or not, by the options; from then on it trains and tracks in every case."""
    watch = Watch()
    model = Recorder(batchnorm=True)
    fit(model, ft_schedule=NORM_BY_EPOCH, epoch_transitions_only=True, max_epochs=5, extra_callbacks=[watch], **options)
    assert depths_by_epoch(model.records) == [0, 1, 1, 2, 2]
    batches = len(watch.norm_training) // 5
    assert watch.norm_training == [frozen_trains] * 3 * batches + [True] * 2 * batches
    means = [r["weights"]["norm.running_mean"] for r in model.records] + [model.norm.running_mean]
    moved = [not torch.equal(before, after) for before, after in itertools.pairwise(means)]
    assert moved == [frozen_tracks] * 3 + [True] * 2
    assert model.norm.training  # the module trains again after the fit's last validation


def test_log_dir_logging_level_and_the_reason_training_stopped(fit, tmp_path: Path, fts_log: list[str]) -> None:
    log_dir = tmp_path / "fts_files"
    fit(Recorder(), ft_schedule=SCHEDULE, log_dir=log_dir, logging_level=logging.WARNING, max_epochs=2)
    assert (log_dir / "Recorder_ft_schedule_resolved.yaml").is_file()
    assert not [m for m in fts_log if "begins at epoch" in m or "fine-tuning ended" in m]  # INFO is below WARNING

    losses = [1.0, 0.5, 0.9, 0.95, 0.97, 0.99]  # phase 1 from epoch 3, then no improvement
    fit(Recorder(scripted_val_loss=losses), ft_schedule=SCHEDULE, max_depth=1, max_epochs=8)
    fit(Recorder(), ft_schedule=SCHEDULE, max_epochs=2)
    ended = [m for m in fts_log if "fine-tuning ended" in m]
    assert ended[0].startswith("fts_dist: fine-tuning ended at phase 1 (phase 0 from epoch 0, phase 1 from epoch 3): ")
    assert ended[0].endswith(
        "max_depth (1) was reached (1 phase(s) of the schedule not run) and early stopping ended the last phase at "
        "epoch 3: Monitored metric val_loss did not improve in the last 1 records. Best score: 0.500. Signaling "
        "Trainer to stop."
    )
    assert ended[1].endswith("max_epochs (2) came, before the last phase.")
