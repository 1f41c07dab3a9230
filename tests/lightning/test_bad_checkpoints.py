"""A truncated, corrupted, foreign or missing best checkpoint at a transition: a clear error naming the file,
raised before the transition changes anything, and the last good checkpoint stays."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from fts_dist.adapters import CheckpointRestoreError
from fts_dist.checkpoint_manifest import sidecar_path
from tests.lightning.conftest import Recorder
from tests.modules import SCHEDULE


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:64] = bytes(range(64))  # no longer a zip archive
    path.write_bytes(bytes(data))


def foreign(path: Path) -> None:
    torch.save({"weights": torch.zeros(3)}, path)  # a readable file, but not a Lightning checkpoint


def delete(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize("damage", [truncate, corrupt, foreign, delete], ids=lambda f: f.__name__)
def test_a_bad_best_checkpoint_is_named_and_the_last_good_one_stays(fit, tmp_path: Path, damage) -> None:
    class DamageBest(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if trainer.current_epoch == 3:  # after this epoch's transition; phase 2's, next epoch, restores it
                damage(Path(trainer.checkpoint_callback.best_model_path))

    model = Recorder(scripted_val_loss=[1.0, 0.5, 0.9, 0.8])
    with pytest.raises(CheckpointRestoreError, match=r"Cannot restore the best checkpoint '.*epoch=1-step=8.ckpt'"):
        fit(model, ft_schedule=SCHEDULE, max_epochs=5, save_last=True, extra_callbacks=[DamageBest()])
    assert depths_by_epoch_seen(model) == [0, 0, 0, 1], "no epoch ran at phase 2"
    last = torch.load(tmp_path / "ckpts" / "last.ckpt", weights_only=False)
    assert last["epoch"] == 1 and "state_dict" in last  # the last good checkpoint, whole
    if damage is not delete:
        assert (tmp_path / "ckpts" / "epoch=1-step=8.ckpt").exists(), "the damaged file is left for inspection"


def depths_by_epoch_seen(model) -> list[int]:
    return [len(record["lrs"]) - 1 for record in model.records]


@pytest.mark.parametrize("damage", [truncate, foreign], ids=lambda f: f.__name__)
def test_resuming_from_a_damaged_checkpoint_is_refused_before_anything_loads(fit, tmp_path: Path, damage) -> None:
    """``fit(ckpt_path=...)`` checks the file against its manifest first: a truncated one, or a readable checkpoint
    of another run in its place, is named, and the file is left as it is."""
    fit(Recorder(), ft_schedule=SCHEDULE, max_epochs=2, save_last=True)
    last = tmp_path / "ckpts" / "last.ckpt"
    damage(last)
    damaged = last.read_bytes()
    resumed = Recorder()
    with pytest.raises(CheckpointRestoreError, match=r"Cannot resume from the checkpoint '.*last.ckpt'"):
        fit(resumed, ft_schedule=SCHEDULE, max_epochs=4, ckpt_path=str(last))
    assert resumed.records == [] and last.read_bytes() == damaged  # no epoch ran; the file is untouched


def test_a_best_checkpoint_of_another_depth_without_a_manifest_is_refused_naming_its_groups(
    fit, tmp_path: Path
) -> None:
    """A checkpoint written before manifests existed passes the checks that can be made; one of the wrong depth
    (here: one saved in phase 1, two groups, copied over phase 0's best) is still refused before the
    transition changes anything, saying how many optimizer groups it holds."""

    class SwapBest(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module) -> None:
            if trainer.current_epoch == 3:  # in phase 1, whose checkpoints hold two groups
                best = Path(trainer.checkpoint_callback.best_model_path)
                trainer.save_checkpoint(tmp_path / "phase1.ckpt")
                best.write_bytes((tmp_path / "phase1.ckpt").read_bytes())
                sidecar_path(best).unlink()  # as if written before manifests

    model = Recorder(scripted_val_loss=[1.0, 0.5, 0.9, 0.8])
    with pytest.raises(CheckpointRestoreError, match=r"it holds 2 optimizer group\(s\) where this schedule expects 1"):
        fit(model, ft_schedule=SCHEDULE, max_epochs=5, save_last=True, extra_callbacks=[SwapBest()])
    assert depths_by_epoch_seen(model) == [0, 0, 0, 1], "no epoch ran at phase 2"
