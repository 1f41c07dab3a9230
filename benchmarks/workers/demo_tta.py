"""One time-to-accuracy run on the demo task (all-MiniLM-L6-v2, BBC News), one process.

Variants: ``explicit``, ``blocks`` (generated block-wise) and ``implicit`` (fts_dist schedules), ``head-only`` and
``full`` (baselines), and ``finetuning-scheduler`` (2.14.1 with the packaged explicit schedule, the same module under
``lightning.pytorch``).
``--budget S`` caps wall time. Writes OUT/tta-VARIANT-sSEED.json: (seconds, val_acc) after every validation.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from fts_dist.demo.run import DemoConfig, explicit_schedule_path, run_demo


def timeline_callback(pl: Any) -> Any:
    class Timeline(pl.Callback):
        def __init__(self) -> None:
            self.started = time.perf_counter()
            self.points: list[tuple[float, float]] = []

        def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            if not trainer.sanity_checking:
                elapsed = time.perf_counter() - self.started
                self.points.append((elapsed, float(trainer.callback_metrics["val_acc"])))

    return Timeline()


def run_finetuning_scheduler(config: DemoConfig, timeline_for: Any) -> list[tuple[float, float]]:
    import finetuning_scheduler as fts
    import lightning.pytorch as lpl

    from fts_dist.demo.data import TOPICS, BBCNewsDataModule
    from fts_dist.demo.model import TextClassifierSteps, pretrained_model_path

    class TextClassifier(TextClassifierSteps, lpl.LightningModule):
        def __init__(self, model_path: str, lr: float) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.build(model_path, len(TOPICS), 0.1)

    lpl.seed_everything(config.seed, workers=True, verbose=False)
    path = pretrained_model_path()
    model = TextClassifier(path, config.head_lr)
    data = BBCNewsDataModule(
        path, config.train_per_class, config.val_per_class, config.max_length, config.batch_size, config.seed
    )
    data.setup("fit")
    timeline = timeline_for(lpl)
    budget = None if config.time_budget_s is None else timedelta(seconds=config.time_budget_s)
    trainer = lpl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=config.max_epochs,
        max_time=budget,
        deterministic=True,
        callbacks=[
            fts.FinetuningScheduler(ft_schedule=explicit_schedule_path(), base_max_lr=config.full_lr),
            fts.FTSEarlyStopping(monitor="val_loss", patience=config.patience),
            fts.FTSCheckpoint(monitor="val_loss", save_top_k=1, save_last=True),  # as the demo's
            timeline,
        ],
        default_root_dir=config.root_dir,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=lpl.loggers.CSVLogger(str(config.root_dir), name="demo"),
        log_every_n_steps=5,
    )
    trainer.fit(model, data.train_dataloader(), data.val_dataloader())
    return timeline.points


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--variant", choices=["explicit", "blocks", "implicit", "head-only", "full", "finetuning-scheduler"]
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", type=float, default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    sizes = dict(train_per_class=40, val_per_class=20, max_length=48) if args.quick else {}
    config = DemoConfig.quick(
        seed=args.seed,
        time_budget_s=args.budget,
        progress_bar=False,
        root_dir=str(out / f"runs-{args.variant}-s{args.seed}"),
        **sizes,
    )
    import pytorch_lightning as pl

    if args.variant == "finetuning-scheduler":
        points = run_finetuning_scheduler(config, timeline_callback)
    else:
        timeline = timeline_callback(pl)
        config.extra_callbacks.append(timeline)
        if args.variant in ("head-only", "full"):
            config.mode, config.max_epochs = args.variant, 100  # the wall-time budget ends these
        else:
            config.schedule = args.variant
            config.max_epochs = 100 if args.variant == "implicit" else config.max_epochs
        run_demo(config)
        points = timeline.points
    (out / f"tta-{args.variant}-s{args.seed}.json").write_text(json.dumps(points))


if __name__ == "__main__":
    main()
