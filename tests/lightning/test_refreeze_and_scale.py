"""fts_dist's own schedule keys on one process: ``freeze`` (freeze again what an earlier phase thawed, its optimizer
group left as it is) and ``scale_lrs`` (scale the earlier groups' learning rates when a phase starts), with a real
Trainer, an LR scheduler that computes from its base rates, and a resume from a checkpoint taken after both."""

from __future__ import annotations

import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from fts_dist import FTSConfigError
from tests.lightning.conftest import Recorder
from tests.modules import REFREEZE_SCHEDULE, depths_by_epoch

EPOCHS = {0: 1, 1: 2, 2: 2}  # phase 1 from epoch 1, phase 2 (freeze, scale 0.5) from epoch 2
SCHEDULE = {d: {**phase, "max_transition_epoch": EPOCHS[d]} for d, phase in REFREEZE_SCHEDULE.items()}


def decay(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR recomputes every rate from its base rate: a scaled rate lasts only if the base rate is scaled too."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.9**epoch)


def test_a_phase_freezes_again_and_scales_the_earlier_groups(fit) -> None:
    model = Recorder(scheduler=decay)
    model, trainer, fts = fit(model, ft_schedule=SCHEDULE, epoch_transitions_only=True, max_epochs=4)
    assert depths_by_epoch(model.records) == [0, 1, 2, 2]
    assert ["layers.1.weight" in r["trainable"] for r in model.records] == [False, True, False, False]
    assert "layers.2.weight" in model.records[-1]["trainable"]
    # a group joins at its lr, then follows LambdaLR's factor of the epoch from its own base rate; from epoch 2,
    # groups 0 and 1 run at half their rates, and stay there
    assert model.records[1]["lrs"] == pytest.approx([0.1 * 0.9, 0.05])
    assert model.records[2]["lrs"] == pytest.approx([0.1 * 0.81 * 0.5, 0.05 * 0.81 * 0.5, 0.02])
    assert model.records[3]["lrs"] == pytest.approx([0.1 * 0.729 * 0.5, 0.05 * 0.729 * 0.5, 0.02 * 0.729])
    # the frozen layer keeps its place in phase 1's group and stops moving; layers.2 beside it trains on
    group1 = trainer.optimizers[0].param_groups[1]["params"]
    assert any(p is model.layers[1].weight for p in group1)
    assert torch.equal(model.records[2]["weights"]["layers.1.weight"], model.layers[1].weight.detach())
    assert not torch.equal(model.records[2]["weights"]["layers.2.weight"], model.layers[2].weight.detach())
    assert fts.trainable_numel == sum(p.numel() for p in model.parameters()) - 72


def test_resume_after_a_freeze_and_a_scale_equals_the_uninterrupted_run(fit, tmp_path_factory) -> None:
    def run(max_epochs: int, **kwargs):
        model = Recorder(scheduler=decay)
        return fit(model, ft_schedule=SCHEDULE, epoch_transitions_only=True, max_epochs=max_epochs, **kwargs)[0]

    full = run(5)
    every_epoch = tmp_path_factory.mktemp("every_epoch")
    first = run(3, extra_callbacks=[ModelCheckpoint(dirpath=every_epoch, filename="{epoch}", save_top_k=-1)])
    resumed = run(5, ckpt_path=str(every_epoch / "epoch=2.ckpt"))  # taken in phase 2, after both
    records = first.records + resumed.records
    assert depths_by_epoch(records) == depths_by_epoch(full.records) == [0, 1, 2, 2, 2]
    for expected, got in zip(full.records, records, strict=True):
        assert got["trainable"] == expected["trainable"]
        assert got["lrs"] == pytest.approx(expected["lrs"], rel=1e-12)
    for name, value in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("phase2", "message"),
    [
        ({"freeze": ["layers.0.weight"]}, r"Phase 2 `freeze` entry 'layers.0.weight' names .*, but phase 2 thaws it"),
        ({"freeze": ["layers\\.9"]}, r"Phase 2 `freeze` entry 'layers\\.9' matches no parameter"),
        ({"scale_lrs": 0}, r"Phase 2 `scale_lrs` must be a positive factor"),
    ],
)
def test_bad_freeze_and_scale_entries_are_refused_before_training(fit, phase2: dict, message: str) -> None:
    schedule = {**SCHEDULE, 2: {**SCHEDULE[2], **phase2}}
    model = Recorder()
    with pytest.raises(FTSConfigError, match=message):
        fit(model, ft_schedule=schedule, epoch_transitions_only=True, max_epochs=3)
    assert model.steps == 0
