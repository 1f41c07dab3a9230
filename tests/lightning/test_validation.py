"""Bad input fails in setup or fit start, before any training step, naming what to fix; weights untouched."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

from fts_dist import FinetuningScheduler, FTSConfigError
from tests.lightning.conftest import Recorder
from tests.modules import SCHEDULE


def assert_fails_before_training(fit, match: str, model: Any = None, **kwargs: Any) -> FTSConfigError:
    model = model if model is not None else Recorder()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(FTSConfigError, match=match) as err:
        fit(model, **kwargs)
    assert model.steps == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    return err.value


@pytest.mark.parametrize(
    ("schedule", "match"),
    [
        (
            {0: {"params": ["layers.3.weight", "layers.9.weight"]}},
            "Phase 0 `params` entry 'layers.9.weight' matches no",
        ),
        (
            {0: {"params": ["layers.3.*"]}, 1: {"params": ["layers.[23].bias"]}},
            "Parameter 'layers.3.bias' is in phase 0 and again in phase 1",
        ),
        ({"zero": {"params": ["layers.3.*"]}}, "Schedule phase key 'zero' is not an integer"),
        ({0: {"params": ["layers.3.*"]}, 2: {"params": ["layers.2.*"]}}, "contiguous integers from 0"),
        (
            {
                0: {"params": ["layers.3.*"], "max_transition_epoch": 4},
                1: {"params": ["layers.2.*"], "max_transition_epoch": 2},
            },
            re.escape("`max_transition_epoch` of phase 1 (2) is lower than phase 0's (4)"),
        ),
    ],
)
def test_schedule_errors(fit, schedule: dict, match: str) -> None:
    assert_fails_before_training(fit, match, ft_schedule=schedule)


def test_epoch_transitions_only_without_epochs(fit) -> None:
    err = assert_fails_before_training(
        fit, r"phase\(s\) \[0, 1, 2\] have none", ft_schedule=SCHEDULE, epoch_transitions_only=True
    )
    assert err.phase == 0 and err.key == "max_transition_epoch"


def test_missing_and_malformed_files(fit, tmp_path: Path) -> None:
    assert_fails_before_training(fit, "Cannot read fine-tuning schedule file", ft_schedule=tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("0: {params: [layers.3.weight\n")
    assert_fails_before_training(fit, "bad.yaml' is not valid YAML", ft_schedule=str(bad))


class TwoOptimizers(Recorder):
    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.SGD(params[:1], lr=0.1), torch.optim.SGD(params[1:], lr=0.1)


class WholeModelOptimizer(Recorder):
    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class CyclicScheduler(Recorder):
    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1)
        return [optimizer], [torch.optim.lr_scheduler.CyclicLR(optimizer, 0.01, 0.1)]


def test_more_than_one_optimizer(fit) -> None:
    model = TwoOptimizers()
    model.automatic_optimization = False
    assert_fails_before_training(
        fit, "exactly one optimizer; `configure_optimizers` returned 2", model, ft_schedule=SCHEDULE
    )


def test_optimizer_holding_parameters_phase_zero_does_not_thaw_without_enforce_phase0_params(fit) -> None:
    err = assert_fails_before_training(
        fit,
        r"holds 6 parameter\(s\) that phase 0 does not thaw, e.g. \['layers.0",
        WholeModelOptimizer(),
        ft_schedule=SCHEDULE,
        enforce_phase0_params=False,
    )
    assert err.phase == 0


def test_unsupported_lr_scheduler(fit) -> None:
    assert_fails_before_training(fit, "LR scheduler CyclicLR is not supported", CyclicScheduler(), ft_schedule=SCHEDULE)


def test_restore_best_needs_a_monitored_checkpoint(tmp_path: Path) -> None:
    import pytorch_lightning as pl

    from fts_dist import FTSCheckpoint
    from tests.modules import loaders

    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=2,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        callbacks=[FinetuningScheduler(ft_schedule=SCHEDULE), FTSCheckpoint(monitor=None)],
    )
    model = Recorder()
    with pytest.raises(FTSConfigError, match="restore_best=True needs an FTSCheckpoint"):
        trainer.fit(model, *loaders())
    assert model.steps == 0


def test_unscheduled_parameters_get_one_warning_and_stay_frozen(fit) -> None:
    schedule = {0: {"params": ["layers.3.*"]}, 1: {"params": ["layers.2.*"]}}
    with pytest.warns(
        UserWarning, match=r"4 parameter\(s\) are in no phase.*'layers.0.weight', 'layers.0.bias', 'layers.1.weight'"
    ):
        model, _, _ = fit(Recorder(scripted_val_loss=[1.0, 1.1, 1.2, 1.3]), ft_schedule=schedule, max_epochs=4)
    assert not any(n.startswith(("layers.0", "layers.1")) for r in model.records for n in r["trainable"])


@pytest.mark.parametrize(("kwargs", "match"), [({"max_depth": -2}, "max_depth"), ({"base_max_lr": 0}, "base_max_lr")])
def test_constructor_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(FTSConfigError, match=match):
        FinetuningScheduler(**kwargs)


def test_a_thawed_parameter_without_gradient_gets_a_warning_on_one_process(fit) -> None:
    model = Recorder(scripted_val_loss=[1.0, 1.1, 1.2, 1.3])
    model.spare = torch.nn.Linear(2, 2)  # thawed in phase 1, never called by forward
    schedule = {0: {"params": ["layers.3.*"]}, 1: {"params": ["layers.2.*", "spare.*"]}}
    with pytest.warns(UserWarning, match=re.escape("thawed by phase 1 or earlier got no gradient")) as warned:
        fit(model, ft_schedule=schedule, max_epochs=4)
    messages = [str(w.message) for w in warned if "got no gradient" in str(w.message)]
    assert len(messages) == 1 and "['spare.weight', 'spare.bias']" in messages[0]
