"""Per-rank generator and loader states in checkpoints (``fts_dist.callbacks.rank_states``): a resume with
dropout and Python / numpy noise is bit for bit the uninterrupted run, and a checkpoint from another world size is
resumed with a warning that says what is not restored."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy
import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import RandomSampler

from fts_dist.callbacks.rank_states import CHECKPOINT_KEY
from fts_dist.runtime.rng import capture_rng, restore_rng
from tests.lightning.conftest import Recorder
from tests.modules import SCHEDULE, loaders

SCRIPT = [1.0, 0.9, 0.95, 0.8, 0.85, 0.7, 0.65, 0.6]  # phase 1 from epoch 3, phase 2 from epoch 5


class Noisy(Recorder):  # type: ignore[misc, valid-type]
    """Every step draws from torch (dropout), Python's ``random`` and numpy's global generator."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.steps += 1
        x, y = batch
        x = torch.nn.functional.dropout(x, p=0.25, training=True)
        noise = 1.0 + 0.01 * random.random() + 0.01 * float(numpy.random.rand())
        return torch.nn.functional.cross_entropy(self(x), y) * noise


def draws() -> tuple[torch.Tensor, float, float]:
    return torch.rand(3), random.random(), float(numpy.random.rand())


def test_captured_generators_draw_the_same_again_and_what_cannot_be_set_is_named() -> None:
    states = capture_rng()
    assert {"torch", "python", "numpy"} <= states.keys()
    first = draws()
    assert restore_rng(states) == []
    again = draws()
    assert torch.equal(first[0], again[0]) and first[1:] == again[1:]
    if not torch.cuda.is_available():
        assert restore_rng({**states, "cuda": torch.zeros(16, dtype=torch.uint8)}) == ["cuda"]


def fit_noisy(fit, directory: Path, ckpt_path: Path | None = None, **kwargs: Any):
    """7 epochs of the schedule on shuffled data (4 batches an epoch), a checkpoint every 2 steps (mid-epoch)."""
    dataset = loaders()[0].dataset
    sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(1))
    every_2_steps = ModelCheckpoint(dirpath=directory, filename="{epoch}-{step}", every_n_train_steps=2, save_top_k=-1)
    model, _, _ = fit(
        Noisy(scripted_val_loss=SCRIPT),
        ft_schedule=SCHEDULE,
        max_epochs=7,
        train_loader=StatefulDataLoader(dataset, batch_size=8, sampler=sampler),
        extra_callbacks=[every_2_steps],
        ckpt_path=None if ckpt_path is None else str(ckpt_path),
        **kwargs,
    )
    return model


@pytest.mark.parametrize("checkpoint", ["epoch=3-step=14.ckpt", "epoch=5-step=22.ckpt"])  # in phases 1 and 2
def test_a_resume_with_dropout_and_noise_is_bit_for_bit_the_uninterrupted_run(
    fit, tmp_path_factory, checkpoint: str
) -> None:
    full_dir = tmp_path_factory.mktemp("full")
    random.seed(1), numpy.random.seed(2), torch.manual_seed(3)
    full = fit_noisy(fit, full_dir)
    saved = torch.load(full_dir / checkpoint, weights_only=True)[CHECKPOINT_KEY]  # plain values: weights_only
    assert saved["world_size"] == 1 and len(saved["ranks"]) == 1
    assert {"torch", "python", "numpy"} <= saved["ranks"][0]["rng"].keys()

    random.seed(10), numpy.random.seed(20), torch.manual_seed(30)  # the resumed process's generators differ
    resumed = fit_noisy(fit, tmp_path_factory.mktemp("resumed"), full_dir / checkpoint)
    assert resumed.steps == 28 - int(checkpoint.split("step=")[1].split(".")[0])
    for name, value in full.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name


def test_a_checkpoint_from_another_world_size_resumes_with_a_warning(fit, tmp_path_factory) -> None:
    full_dir = tmp_path_factory.mktemp("full")
    fit_noisy(fit, full_dir)
    checkpoint = torch.load(full_dir / "epoch=3-step=14.ckpt", weights_only=True)
    saved = checkpoint[CHECKPOINT_KEY]
    checkpoint[CHECKPOINT_KEY] = {"world_size": 2, "ranks": saved["ranks"] * 2}
    torch.save(checkpoint, full_dir / "from-2-ranks.ckpt")
    with pytest.warns(UserWarning, match="saved by 2 ranks and resumes on 1: the ranks' random-number generators"):
        resumed = fit_noisy(fit, tmp_path_factory.mktemp("resumed"), full_dir / "from-2-ranks.ckpt")
    assert resumed.steps == 28 - 14  # the loop's own position still resumes
