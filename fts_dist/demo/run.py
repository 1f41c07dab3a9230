"""Run the demo: build the module, data and callbacks, fit, and report per-phase results.

Modes: ``schedule`` fine-tunes with a schedule (the packaged explicit one, the implicit one, or a YAML path);
``head-only`` and ``full`` are the usual baselines (a frozen encoder with a trained head, and everything trained
from the start), optionally under a wall-time budget so they can be set against a scheduled run.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.strategies import ModelParallelStrategy

from fts_dist.callbacks import FinetuningScheduler, FTSCheckpoint, FTSEarlyStopping
from fts_dist.demo.progress import FTSProgressBar, PhaseSummary
from fts_dist.runtime.clean_exit import leave_process_group
from fts_dist.runtime.elastic import init_process_group_for_attempt
from fts_dist.schedule import generate_block_schedule
from fts_dist.strategies import DeepSpeedStrategy, FSDPStrategy

_MODES = ("schedule", "head-only", "full")
STRATEGIES = ("auto", "ddp", "fsdp2", "fsdp1", "deepspeed")
_DEFAULT_ROOT_DIR = "fts_dist_demo_logs"
BLOCK_OPTIONS: dict[str, Any] = {"blocks_per_phase": 2, "lr_decay": 0.7, "epochs_per_phase": 1}


@dataclass
class DemoConfig:
    """One demo run. ``quick()`` and ``full()`` are the two documented forms."""

    mode: str = "schedule"
    schedule: str = "explicit"  # "explicit" (packaged), "implicit" or "blocks" (generated) or a YAML path
    max_epochs: int = 5
    train_per_class: int = 80
    val_per_class: int = 40
    max_length: int = 64
    batch_size: int = 16
    head_lr: float = 1e-3
    full_lr: float = 5e-5
    patience: int = 1
    time_budget_s: float | None = None
    seed: int = 0
    strategy: str = "auto"  # "auto" (DDP on several processes), "ddp", "fsdp2", "fsdp1" or "deepspeed"
    zero_stage: int = 2  # with strategy="deepspeed"
    root_dir: str | None = None
    progress_bar: bool = True
    extra_callbacks: list[Any] = field(default_factory=list)

    @classmethod
    def quick(cls, **overrides: Any) -> DemoConfig:
        return cls(**overrides)

    @classmethod
    def full(cls, **overrides: Any) -> DemoConfig:
        values: dict[str, Any] = dict(max_epochs=10, train_per_class=300, val_per_class=100, max_length=128)
        return cls(**{**values, **overrides})


@dataclass
class DemoResult:
    mode: str
    schedule: str
    final_val_acc: float
    best_val_acc: float
    seconds: float
    epochs: int
    phases: list[dict[str, Any]]
    table: str
    root_dir: str


def explicit_schedule_path() -> str:
    return str(resources.files("fts_dist.demo") / "schedule.yaml")


def _distributed_launch_devices() -> tuple[int, int]:
    """Devices per node and nodes when started by torchrun (or any launcher setting the same variables)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    return local, max(1, world // max(local, 1))


def block_schedule(module: torch.nn.Module, lr: float) -> dict[int, dict[str, Any]]:
    """The demo's generated block-wise schedule: the head, then the encoder two layers a phase from the top, then
    the embeddings; each phase one epoch at most, at 0.7 times the learning rate of the phase above, from ``lr``
    (tuned on 3 seeds, BENCHMARKS.md (e): a decay of 0.5 ended at a median of 0.955, 0.7 at 0.965)."""
    names = [name for name, _ in module.named_parameters()]
    return generate_block_schedule(names, lr=lr, **BLOCK_OPTIONS).to_dict()


def _scheduler_callbacks(config: DemoConfig, module: torch.nn.Module) -> list[Any]:
    if config.mode != "schedule":
        return []
    if config.schedule == "blocks":
        ft_schedule: Any = block_schedule(module, config.full_lr)
    else:
        ft_schedule = {"explicit": explicit_schedule_path(), "implicit": None}.get(config.schedule, config.schedule)
    return [
        FinetuningScheduler(ft_schedule=ft_schedule, base_max_lr=config.full_lr),
        FTSEarlyStopping(monitor="val_loss", patience=config.patience),
        FTSCheckpoint(monitor="val_loss", save_top_k=1, save_last=True),
    ]


def _build_trainer(config: DemoConfig, root: Path, module: torch.nn.Module) -> tuple[pl.Trainer, PhaseSummary]:
    devices, num_nodes = _distributed_launch_devices()
    summary = PhaseSummary(metric="val_acc", mode="max", print_table=False)
    callbacks = [*_scheduler_callbacks(config, module), summary, *config.extra_callbacks]
    if config.progress_bar:
        callbacks.append(FTSProgressBar())
    budget = None if config.time_budget_s is None else timedelta(seconds=config.time_budget_s)
    trainer = pl.Trainer(
        accelerator="auto",
        devices=devices,
        num_nodes=num_nodes,
        strategy=_strategy(config.strategy, devices * num_nodes, config.zero_stage),
        max_epochs=config.max_epochs,
        max_time=budget,
        callbacks=callbacks,
        default_root_dir=root,
        logger=CSVLogger(root, name="demo"),
        enable_checkpointing=config.mode == "schedule",
        enable_progress_bar=config.progress_bar,
        enable_model_summary=False,
        log_every_n_steps=5,
        deterministic=True,
    )
    return trainer, summary


def _strategy(name: str, processes: int, zero_stage: int = 2) -> Any:
    """The Lightning strategy for the demo's ``--strategy``; the module shards itself under FSDP2."""
    if name == "deepspeed":
        return DeepSpeedStrategy(
            config={"zero_optimization": {"stage": zero_stage}, "train_micro_batch_size_per_gpu": 1}
        )
    if name == "fsdp2":
        return ModelParallelStrategy(data_parallel_size=processes, tensor_parallel_size=1)
    if name == "fsdp1":
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy
        from transformers.models.bert.modeling_bert import BertEmbeddings, BertLayer

        # one unit per phase-aligned block: the head, each encoder layer, the embeddings (the root keeps nothing)
        return FSDPStrategy(auto_wrap_policy=ModuleWrapPolicy({BertLayer, BertEmbeddings, torch.nn.Linear}))
    if name not in ("auto", "ddp"):
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")
    return "ddp" if name == "ddp" or processes > 1 else "auto"


def run_demo(config: DemoConfig) -> DemoResult:
    """Fine-tune all-MiniLM-L6-v2 on BBC News topics as ``config`` says and return what happened."""
    from fts_dist.demo.data import TOPICS, BBCNewsDataModule
    from fts_dist.demo.model import TextClassifier, pretrained_model_path

    if config.mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {config.mode!r}")
    pl.seed_everything(config.seed, workers=True, verbose=False)
    root = Path(config.root_dir or _DEFAULT_ROOT_DIR)  # the same path on every rank
    path = pretrained_model_path()
    lr = config.full_lr if config.mode == "full" else config.head_lr
    model = TextClassifier(path, num_classes=len(TOPICS), lr=lr)
    if config.mode == "head-only":
        model.backbone.requires_grad_(False)
    data = BBCNewsDataModule(
        path, config.train_per_class, config.val_per_class, config.max_length, config.batch_size, config.seed
    )
    init_process_group_for_attempt()  # under torchrun: elastic restarts get a clean rendezvous
    trainer, summary = _build_trainer(config, root, model)
    started = time.perf_counter()
    trainer.fit(model, datamodule=data)
    seconds = time.perf_counter() - started
    leave_process_group()
    best = max((row.best for row in summary.rows if row.best is not None), default=float("nan"))
    return DemoResult(
        mode=config.mode,
        schedule=config.schedule if config.mode == "schedule" else "-",
        final_val_acc=float(trainer.callback_metrics.get("val_acc", float("nan"))),
        best_val_acc=best,
        seconds=seconds,
        epochs=trainer.current_epoch,
        phases=[asdict(row) for row in summary.rows],
        table=summary.table(),
        root_dir=str(root),
    )
