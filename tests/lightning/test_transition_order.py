"""The order of a transition's steps is written once, in StrategyAdapter.apply_plan; adapters only fill its seams.

A recording adapter under a real Trainer pins that order: restore the checkpoint, thaw, check the replicas (before
any optimizer change: a ZeRO rebuild's collectives assume the ranks agree), extend the optimizer, re-register the
trainable set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
from pytorch_lightning.strategies import SingleDeviceStrategy

from fts_dist import FinetuningScheduler, FTSCheckpoint, FTSEarlyStopping
from fts_dist.adapters import StrategyAdapter, register_adapter
from tests.lightning.conftest import Recorder
from tests.modules import SCHEDULE, loaders


class TwoRankEcho:
    """Collectives of a world of two identical ranks, so the replica check runs on one process."""

    rank, world_size = 0, 2

    def broadcast(self, obj: Any) -> Any:
        return obj

    def all_gather(self, obj: Any) -> list[Any]:
        return [obj, obj]

    def barrier(self) -> None:
        pass


class RecordingAdapter(StrategyAdapter):
    calls: list[str] = []

    @property
    def comm(self) -> Any:
        return TwoRankEcho()

    def load_checkpoint_state(self, path: str, phases: Any, trainer: pl.Trainer) -> None:
        self.calls.append(f"restore(phases={len(phases)})")
        super().load_checkpoint_state(path, phases, trainer)

    def thaw(self, module: Any, trainable: Any) -> None:
        names = list(trainable)
        self.calls.append(f"thaw({len(names)})")
        super().thaw(module, names)

    def extend_optimizer(self, trainer: pl.Trainer, groups: Any) -> None:
        self.calls.append(f"extend(lrs={[group.lr for group in groups]})")
        super().extend_optimizer(trainer, groups)

    def replica_view(self, module: Any) -> Any:
        self.calls.append("check")
        return super().replica_view(module)

    def on_trainable_changed(self, trainer: pl.Trainer) -> None:
        self.calls.append("register")


class RecordingStrategy(SingleDeviceStrategy):
    pass


def test_a_transition_restores_thaws_checks_extends_and_registers_in_that_order(
    tmp_path: Path, adapter_registry: Any
) -> None:
    register_adapter(RecordingStrategy, RecordingAdapter)
    RecordingAdapter.calls = []
    trainer = pl.Trainer(
        strategy=RecordingStrategy("cpu"),
        max_epochs=6,
        callbacks=[
            FinetuningScheduler(ft_schedule=SCHEDULE),
            FTSEarlyStopping(monitor="val_loss", patience=1),
            FTSCheckpoint(monitor="val_loss", dirpath=tmp_path),
        ],
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    # phase 1 never beats epoch 1: phase 2 restores a checkpoint with one group fewer, which is rebuilt first
    trainer.fit(Recorder(scripted_val_loss=[1.0, 0.5, 0.9, 0.95, 0.4, 0.3]), *loaders())
    assert RecordingAdapter.calls[2:] == [
        "restore(phases=1)", "thaw(4)", "check", "extend(lrs=[0.05])", "register",  # phase 1
        # the group the restore dropped comes back first, takes its settings from before, then the new one
        "restore(phases=1)", "thaw(8)", "check", "extend(lrs=[0.05])", "extend(lrs=[0.02])", "register",  # phase 2
    ]  # fmt: skip
    assert RecordingAdapter.calls[:2] == ["thaw(2)", "thaw(2)"]  # at setup, and again right before the optimizer


def test_an_adapter_cannot_reorder_a_transition() -> None:
    with pytest.raises(TypeError, match="overrides apply_plan, the order of a transition"):

        class Reordering(StrategyAdapter):
            def apply_plan(self, plan: Any, trainer: Any, check_replicas: bool = False) -> None: ...
