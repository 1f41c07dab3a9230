"""Making sure a FinetuningScheduler run has the FTSEarlyStopping and FTSCheckpoint callbacks it needs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, EarlyStopping, ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_warn

from fts_dist.callbacks.checkpoint import FTSCheckpoint
from fts_dist.callbacks.early_stopping import FTSEarlyStopping
from fts_dist.errors import FTSConfigError

_DEFAULT_MONITOR = "val_loss"

# constructor argument -> attribute holding it, for carrying a plain callback's settings over
_EARLY_STOPPING_ARGS = {
    "monitor": "monitor", "patience": "patience", "verbose": "verbose", "mode": "mode", "strict": "strict",
    "check_finite": "check_finite", "stopping_threshold": "stopping_threshold",
    "divergence_threshold": "divergence_threshold", "check_on_train_epoch_end": "_check_on_train_epoch_end",
    "log_rank_zero_only": "log_rank_zero_only",
}  # fmt: skip
_CHECKPOINT_ARGS = {
    "dirpath": "dirpath", "filename": "filename", "monitor": "monitor", "verbose": "verbose",
    "save_last": "save_last", "save_top_k": "save_top_k", "save_weights_only": "save_weights_only",
    "mode": "mode", "auto_insert_metric_name": "auto_insert_metric_name",
    "every_n_train_steps": "_every_n_train_steps", "every_n_epochs": "_every_n_epochs",
    "save_on_train_epoch_end": "_save_on_train_epoch_end", "enable_version_counter": "_enable_version_counter",
}  # fmt: skip


def ensure_callbacks(
    trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str, *, need_early_stopping: bool
) -> tuple[FTSEarlyStopping | None, FTSCheckpoint]:
    """Return the run's FTSEarlyStopping (None when not needed) and FTSCheckpoint, adding or converting them.

    A plain EarlyStopping or ModelCheckpoint is replaced by its FTS counterpart with the same settings, with a
    warning; a missing one is added with ``monitor="val_loss"``. An EarlyStopping given with
    ``epoch_transitions_only`` is removed, with a warning. Added callbacks get their ``setup`` call.
    """
    callbacks: list[Callback] = list(trainer.callbacks)  # type: ignore[attr-defined]
    added: list[Callback] = []
    early_stopping = next((c for c in callbacks if isinstance(c, FTSEarlyStopping)), None)
    plain_es = [c for c in callbacks if isinstance(c, EarlyStopping) and not isinstance(c, FTSEarlyStopping)]
    if not need_early_stopping:
        if early_stopping or plain_es:
            rank_zero_warn("epoch_transitions_only=True: removing the EarlyStopping callback, which would not be used.")
        callbacks = [c for c in callbacks if not isinstance(c, EarlyStopping)]
        early_stopping = None
    elif early_stopping is None:
        early_stopping = FTSEarlyStopping(**_carried_settings(plain_es, _EARLY_STOPPING_ARGS, "EarlyStopping"))
        callbacks = [c for c in callbacks if c not in plain_es]
        added.append(early_stopping)

    checkpoint = next((c for c in callbacks if isinstance(c, FTSCheckpoint)), None)
    if checkpoint is None:
        plain_ckpt = [c for c in callbacks if isinstance(c, ModelCheckpoint)]
        checkpoint = FTSCheckpoint(**_carried_settings(plain_ckpt, _CHECKPOINT_ARGS, "ModelCheckpoint"))
        callbacks = [c for c in callbacks if c not in plain_ckpt]
        added.append(checkpoint)

    callbacks.extend(added)
    # checkpoints save last, after early stopping has judged the epoch (Lightning's own ordering rule)
    others = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
    trainer.callbacks = others + [c for c in callbacks if isinstance(c, ModelCheckpoint)]  # type: ignore[attr-defined]
    for callback in added:
        callback.setup(trainer, pl_module, stage)
    return early_stopping, checkpoint


def check_keeps_a_best_checkpoint(checkpoint: FTSCheckpoint) -> None:
    """``restore_best=True`` needs a checkpoint callback that keeps a best checkpoint to restore."""
    if not checkpoint.save_top_k or not checkpoint.monitor:
        raise FTSConfigError(
            "restore_best=True needs an FTSCheckpoint that keeps a best checkpoint, but it has "
            f"monitor={checkpoint.monitor!r}, save_top_k={checkpoint.save_top_k!r}. Give it a `monitor` and "
            "save_top_k >= 1, or set restore_best=False.",
            key="restore_best",
        )


def _carried_settings(plain: Sequence[Callback], arg_to_attr: dict[str, str], kind: str) -> dict[str, Any]:
    if not plain:
        rank_zero_warn(
            f"fts_dist: no {kind} given; adding an FTS{kind.replace('ModelCheckpoint', 'Checkpoint')} "
            f"that monitors '{_DEFAULT_MONITOR}'."
        )
        return {"monitor": _DEFAULT_MONITOR}
    source = plain[0]
    rank_zero_warn(
        f"fts_dist: replacing {type(source).__name__} with its fine-tuning-aware counterpart (same settings)."
    )
    settings = {arg: getattr(source, attr) for arg, attr in arg_to_attr.items() if hasattr(source, attr)}
    if isinstance(source, EarlyStopping):
        settings["min_delta"] = abs(float(source.min_delta))
    settings["monitor"] = settings.get("monitor") or _DEFAULT_MONITOR
    return settings
