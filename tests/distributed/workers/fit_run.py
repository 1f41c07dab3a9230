"""One rank of a 2-process fine-tuning run on CPU (gloo) under DDP, FSDP2, HSDP or FSDP1 (``--strategy``); writes
what it saw to OUT/rank{r}.pt.

Launched by torchrun, by Lightning's own launcher (``--launcher lightning``: rank 0 runs this file and Lightning
starts rank 1 as a copy), or as a single-process reference over the same global batches (``--reference``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.strategies import DDPStrategy, ModelParallelStrategy
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy
from torch.distributed.fsdp.wrap import ModuleWrapPolicy
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from fts_dist import DeepSpeedStrategy, FinetuningScheduler, FSDPStrategy, FTSCheckpoint, FTSEarlyStopping
from fts_dist.adapters import StrategyAdapter, register_adapter
from fts_dist.adapters.checkpoint_checks import verify_before_load
from fts_dist.adapters.deepspeed import engine as zero_engine
from fts_dist.adapters.torch_comm import TorchDistributedComm
from fts_dist.checkpoint_manifest import owner_of
from fts_dist.errors import CheckpointRestoreError
from fts_dist.memory import meta_device, plan_memory
from fts_dist.memory.activations import SavedTensors
from tests.distributed.sharded_modules import (
    DeepSpeedRecorder,
    PerRankReference,
    Recorder,
    ShardedRecorder,
    engine_full_state,
    full_state,
)
from tests.modules import REFREEZE_SCHEDULE, REINIT_SCHEDULE, SCHEDULE
from tests.worker_exit import finish_worker

SHARDED = ("fsdp2", "hsdp", "tp", "fsdp1")
DEEPSPEED = ("zero1", "zero2", "zero3")
BATCH, STEPS = 4, 3
WORLD = int(os.environ.get("FTS_TEST_WORLD", "2"))  # 1 for the single-GPU checks
ACCELERATOR = os.environ.get("FTS_TEST_ACCELERATOR", "cpu")


def with_epochs(schedule: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {d: {**p, "max_transition_epoch": e} for (d, p), e in zip(schedule.items(), (1, 3, 3), strict=True)}


SCRIPTS = {
    "early-stopping": [1.0, 0.5, 0.9, 0.4, 0.45, 0.3, 0.2],  # phase 1 from epoch 3, phase 2 from epoch 5
    # phase 1 never beats epoch 1: phase 2 (epoch 4) restores a checkpoint with fewer optimizer groups
    "early-stopping-stale": [1.0, 0.5, 0.9, 0.95, 0.4, 0.3, 0.2],
}


def dataset() -> TensorDataset:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH * STEPS * WORLD, 4, generator=generator)
    return TensorDataset(x, (x[:, 0] > 0).long())


def global_batches(data: TensorDataset) -> TensorDataset:
    """Reorder so that batch i of size WORLD*BATCH holds exactly what every rank sees at its step i."""
    per_rank = [list(DistributedSampler(data, WORLD, r, shuffle=False)) for r in range(WORLD)]
    order = [i for step in range(STEPS) for r in range(WORLD) for i in per_rank[r][step * BATCH : (step + 1) * BATCH]]
    return TensorDataset(*(t[order] for t in data.tensors))


class PlantMismatch(pl.Callback):
    """Corrupts rank 1 just before the first transition, to prove the replica check catches it."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank == 1 and trainer.current_epoch == 1:
            with torch.no_grad():
                pl_module.layers[0].weight.add_(1.0)


class RecordDDPWrapper(pl.Callback):
    """At the end of training, before Lightning unwraps the model: which options and parameters DDP has, and how
    many times a wrap broadcast the module's state from rank 0."""

    def __init__(self) -> None:
        self.init_syncs = 0
        sync = torch.nn.parallel.distributed._sync_module_states

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.init_syncs += 1
            return sync(*args, **kwargs)

        torch.nn.parallel.distributed._sync_module_states = counted  # type: ignore[assignment]

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        wrapped = trainer.strategy.model
        if isinstance(wrapped, torch.nn.parallel.DistributedDataParallel):
            pl_module.ddp_wrapper = {
                "bucket_bytes_cap": wrapped.bucket_bytes_cap,
                "static_graph": wrapped.static_graph,
                "gradient_as_bucket_view": wrapped.gradient_as_bucket_view,
                "synced": sorted(n.removeprefix("module.") for n, p in wrapped.named_parameters() if p.requires_grad),
                "init_syncs": self.init_syncs,
            }


class MemoryMeter(pl.Callback):
    """Bytes this rank holds after each phase's last optimizer step: parameters, gradients and optimizer state (a
    DTensor's local part; FSDP1's flat parameters; under ZeRO its fp32 partitions, their state and its reduce
    buckets), and what each phase's training step saved for backward, to hold the memory plan made before launch
    against."""

    def __init__(self) -> None:
        self.by_depth: dict[int, dict[str, int]] = {}
        self._saved: SavedTensors | None = None
        self._activations = 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._saved = SavedTensors().__enter__()  # counts the step's forward and loss, up to the backward

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if self._saved is not None:
            self._saved.__exit__(None, None, None)
            self._activations, self._saved = self._saved.nbytes, None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        scheduler = next(c for c in trainer.callbacks if isinstance(c, FinetuningScheduler))
        held = {"activations": self._activations}
        if isinstance(trainer.strategy, DeepSpeedStrategy):
            held.update(zero_held(trainer.strategy.model))
        else:
            held.update(module_held(trainer, pl_module))
        self.by_depth[scheduler.curr_depth] = held


def module_held(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, int]:
    units = FullyShardedDataParallel.fsdp_modules(trainer.strategy.model)
    flat = [m._flat_param for m in units if m._flat_param is not None]
    params = flat if flat else list(pl_module.parameters())
    grads = [p.grad for p in params if p.grad is not None]
    states = [s for s in trainer.optimizers[0].state.values() if isinstance(s, dict)]  # ZeRO: None entries
    state = [v for s in states for v in s.values() if torch.is_tensor(v)]
    return {
        "params": sum(_local(t).nbytes for t in params),
        "grads": sum(_local(t).nbytes for t in grads),
        "optimizer_state": sum(_local(t).nbytes for t in state),
    }


def zero_held(engine: Any) -> dict[str, int]:
    """The module's weights (ZeRO-3: this rank's share of them, unless held whole), the fp32 partitions with their
    optimizer state, and the reduce buckets."""
    optimizer = engine.optimizer
    flats = [flat for _, flat in zero_engine.flat_partitions(engine)]
    basic = optimizer.optimizer.state
    state = [v for flat in flats for v in basic.get(flat, {}).values() if torch.is_tensor(v)]
    return {
        "params": sum(p.nbytes for p in engine.module.parameters()),
        "masters": sum(flat.nbytes for flat in flats),
        "optimizer_state": sum(t.nbytes for t in state),
        "buffers": REDUCE_BUCKETS["bytes"],
    }


REDUCE_BUCKETS = {"bytes": 0}  # the most ZeRO 1/2's reduce buckets held: set up in backward, released at its end


def watch_reduce_buckets() -> None:
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    setup = DeepSpeedZeroOptimizer.setup_buckets

    def counted(self: Any) -> None:
        setup(self)
        held = sum(t.nbytes for bucket in self.ipg_buckets.values() for t in bucket.buffer)
        REDUCE_BUCKETS["bytes"] = max(REDUCE_BUCKETS["bytes"], held)

    DeepSpeedZeroOptimizer.setup_buckets = counted


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def memory_plan(args: argparse.Namespace, schedule: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """The plan fts_dist.memory makes before launch for this run's model, schedule and strategy."""
    with meta_device():
        model = build_model(args)
        batch = (torch.empty(BATCH, 4), torch.empty(BATCH, dtype=torch.long))  # one rank's micro-batch
    units = ("Linear",) if args.strategy == "fsdp1" else ()
    optimizer = "adamw" if args.optimizer == "adamw" else "sgd"
    strategy, stage = ("deepspeed", int(args.strategy[-1])) if args.strategy in DEEPSPEED else (args.strategy, None)
    plan = plan_memory(
        schedule, model, strategy, WORLD, optimizer=optimizer, unit_classes=units, batch=batch, step=training_loss,
        zero_stage=stage, offload=args.offload, zero={"stage": stage} if stage else None,
    )  # fmt: skip
    return [
        {**phase.bytes_per_rank, "host": host}
        for phase, host in zip(plan.phases, plan.host_bytes_per_rank, strict=True)
    ]


def training_loss(module: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """What the modules' training_step computes (tests.modules.Recorder)."""
    x, y = batch
    return torch.nn.functional.cross_entropy(module(x), y)


class TruncateOwnShards(pl.Callback):
    """Rank 1 truncates its own files of the best checkpoint just before the transition that restores it."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        best = Path(trainer.strategy.broadcast(trainer.checkpoint_callback.best_model_path))
        if trainer.global_rank == 1 and trainer.current_epoch == self.epoch:
            for path in own_files(best, 1):
                with open(path, "r+b") as handle:
                    handle.truncate(path.stat().st_size // 2)


def own_files(checkpoint: Path, rank: int) -> list[Path]:
    """The files of ``checkpoint`` that ``rank`` owns (a single-file checkpoint: the file)."""
    if not checkpoint.is_dir():
        return [checkpoint]
    return [p for p in sorted(checkpoint.rglob("*")) if p.is_file() and owner_of(p.name, WORLD) == rank != 0]


def plant_checkpoint_faults(checkpoint: Path) -> dict[str, str | None]:
    """After training: rank 1 damages its own part of ``checkpoint`` (truncated, missing, foreign: its bytes
    changed, its size kept), every rank checks the checkpoint as a load would, and each fault is undone before the
    next. Returns what this rank raised for each, and for the checkpoint once undone."""
    comm = TorchDistributedComm()
    files = own_files(checkpoint, 1)
    saved = {path: path.read_bytes() for path in files} if comm.rank == 1 else {}
    faults: dict[str, Any] = {
        "truncated": lambda path: path.write_bytes(saved[path][: len(saved[path]) // 2]),
        "missing": lambda path: path.unlink(),
        "foreign": lambda path: path.write_bytes(saved[path][:64] + bytes(b ^ 0xFF for b in saved[path][64:])),
        "undone": lambda path: None,
    }
    raised: dict[str, str | None] = {}
    for kind, plant in faults.items():
        if comm.rank == 1:
            for path in files:
                plant(path)
        comm.barrier()
        try:
            verify_before_load(comm, str(checkpoint), "restore the best checkpoint")
            raised[kind] = None
        except CheckpointRestoreError as err:
            raised[kind] = str(err)
        comm.barrier()
        for path, content in saved.items():
            path.write_bytes(content)
    raised["files"] = ",".join(p.name for p in files)
    return raised


class StallRankOne(pl.Callback):
    """Rank 1 stops for 10 minutes at epoch 1: in its second training step, or entering the transition."""

    def __init__(self, where: str) -> None:
        self.where = where

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.where != "transition" or trainer.global_rank != 1:
            return
        scheduler = next(c for c in trainer.callbacks if isinstance(c, FinetuningScheduler))
        apply_plan = scheduler.adapter.apply_plan

        def stalled(plan: Any, *args: Any, **kwargs: Any) -> None:
            time.sleep(600)
            apply_plan(plan, *args, **kwargs)

        scheduler.adapter.apply_plan = stalled  # type: ignore[method-assign]

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self.where == "step" and trainer.global_rank == 1 and trainer.current_epoch == 1 and args[1] == 1:
            time.sleep(600)


class RaiseOnRankOne(pl.Callback):
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank == 1 and trainer.current_epoch == 1:
            raise RuntimeError("planted failure on rank 1")


def scheduler_factory(name: str) -> Any:
    if name == "steplr":
        return lambda optimizer: torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    if name == "lambda":
        return lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.9**epoch)
    if name == "chained":  # a composite: its children schedule the optimizer too
        return lambda optimizer: torch.optim.lr_scheduler.ChainedScheduler(
            [
                torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.7),
                torch.optim.lr_scheduler.ExponentialLR(optimizer, 0.9),
            ]
        )
    return None


def optimizer_factory(args: argparse.Namespace) -> Any:
    if args.optimizer == "adamw":
        return lambda params, lr: torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    if args.optimizer == "zero" and not args.reference:
        return lambda params, lr: ZeroRedundancyOptimizer(params, torch.optim.SGD, lr=lr, momentum=0.9)
    if args.optimizer == "oss" and not args.reference:
        from fairscale.optim import OSS

        return lambda params, lr: OSS(params, torch.optim.SGD, lr=lr, momentum=0.9)
    return None  # the reference trains plain SGD: ZeRO must compute the very same update


class PlantTrainable(pl.Callback):
    """Makes rank 1's adapter thaw one parameter too many at the first transition (a rank-dependent adapter bug)."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        scheduler = next(c for c in trainer.callbacks if isinstance(c, FinetuningScheduler))
        adapter_thaw = scheduler.adapter.thaw

        def thaw(module: Any, trainable: Any) -> None:
            names = list(trainable)
            extra = ["layers.0.weight"] if trainer.global_rank == 1 and "layers.2.weight" in names else []
            adapter_thaw(module, names + extra)

        scheduler.adapter.thaw = thaw  # type: ignore[method-assign]


class KillDuringCheckpointWrite(pl.Callback):
    """SIGKILLs rank 0 in the middle of writing ``last.ckpt`` at ``epoch``: the shards are on disk, the metadata
    (meta.pt, written last) is not; under DeepSpeed, before the model states."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        real_save = torch.save

        def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
            path = str(f)
            # Lightning's sharded metadata (meta.pt), or DeepSpeed's model states with Lightning's client state
            metadata = path.endswith(("meta.pt", "model_states.pt")) and isinstance(obj, dict)
            writing_last = trainer.global_rank == 0 and metadata and "last.ckpt" in path
            if writing_last and obj.get("epoch") == self.epoch:
                os.kill(os.getpid(), 9)
            real_save(obj, f, *args, **kwargs)

        torch.save = save


def build_strategy(args: argparse.Namespace) -> Any:
    if args.reference:
        return "auto"
    if args.strategy in ("fsdp2", "hsdp"):
        return ModelParallelStrategy(data_parallel_size=WORLD, tensor_parallel_size=1)
    if args.strategy == "tp":
        return ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=WORLD)
    if args.strategy in DEEPSPEED:
        zero: dict[str, Any] = {"stage": int(args.strategy[-1])}
        if args.offload:
            zero["offload_optimizer"] = {"device": "cpu"}
        config = {
            "zero_optimization": zero,
            "zero_force_ds_cpu_optimizer": False,  # offload with the module's own (torch) optimizer
            "zero_allow_untested_optimizer": True,  # SGD, as the one-process reference
            "train_micro_batch_size_per_gpu": BATCH,
            "gradient_clipping": 0.0,
        }
        return DeepSpeedStrategy(config=config, process_group_backend="gloo")
    if args.strategy == "fsdp1":
        policy = {torch.nn.Sequential} if args.misaligned else {torch.nn.Linear}
        sharding = ShardingStrategy[args.sharding]
        mesh = {"device_mesh": two_nodes_of_one_rank()} if sharding == ShardingStrategy.HYBRID_SHARD else {}
        return FSDPStrategy(auto_wrap_policy=ModuleWrapPolicy(policy), sharding_strategy=sharding, **mesh)
    options = {"bucket_cap_mb": 1, "gradient_as_bucket_view": True, "static_graph": True} if args.ddp_options else {}
    return DDPStrategy(process_group_backend="gloo", **options)


def two_nodes_of_one_rank() -> Any:
    """A (replicate=WORLD, shard=1) CPU mesh: HYBRID_SHARD as on WORLD nodes of one rank each (Lightning's tuple
    form builds a CUDA mesh)."""
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    return init_device_mesh("cpu", (WORLD, 1), mesh_dim_names=("replicate", "shard"))


def build_model(args: argparse.Namespace) -> Any:
    common = {"lr": 0.05, "scheduler": scheduler_factory(args.scheduler), "scripted_val_loss": SCRIPTS.get(args.mode)}
    common["optimize_all"] = args.optimize_all
    if args.reference and (args.bf16 or args.optimizer == "adamw"):  # what WORLD ranks compute, to the last bit
        dtype = torch.bfloat16 if args.bf16 else torch.float32
        return PerRankReference(world=WORLD, dtype=dtype, optimizer=optimizer_factory(args), **common)
    if args.strategy in SHARDED and not args.reference:
        plain = "layers.2.bias" if args.plant == "mixed" else None
        layout = {"layout": args.strategy, "offload": args.offload, "own_roots": args.own_roots, "plain": plain}
        return ShardedRecorder(bf16=args.bf16, **layout, **common)
    if args.strategy in DEEPSPEED and not args.reference:
        return DeepSpeedRecorder(optimizer=optimizer_factory(args), **common)
    return Recorder(optimizer=optimizer_factory(args), **common)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--launcher", choices=["torchrun", "lightning"], default="torchrun")
    parser.add_argument("--reference", action="store_true")
    parser.add_argument("--strategy", choices=["ddp", *SHARDED, *DEEPSPEED], default="ddp")
    parser.add_argument("--mode", choices=["epochs", *SCRIPTS], default="epochs")
    parser.add_argument("--scheduler", default="none")
    parser.add_argument("--optimizer", choices=["sgd", "zero", "oss", "adamw"], default="sgd")
    parser.add_argument("--naive", action="store_true", help="thaw without the DDP adapter (expected to diverge)")
    parser.add_argument(
        "--plant",
        choices=["none", "mismatch", "raise", "unused", "trainable", "mixed", "truncate", "both"],
        default="none",
    )
    parser.add_argument("--faults", action="store_true", help="after training: damage the best checkpoint on rank 1")
    parser.add_argument("--stall", choices=["step", "transition"], help="rank 1 stops for 10 minutes at epoch 1")
    parser.add_argument("--stall-timeout", type=float, default=None, help="FinetuningScheduler(stall_timeout=...)")
    parser.add_argument("--max-epochs", type=int, default=5)
    parser.add_argument("--ddp-options", action="store_true", help="non-default DDP options that must survive")
    parser.add_argument("--bf16", action="store_true", help="FSDP2 MixedPrecisionPolicy(bf16, reduce fp32)")
    parser.add_argument("--offload", action="store_true", help="FSDP2 CPUOffloadPolicy; ZeRO optimizer offload")
    parser.add_argument("--own-roots", action="store_true", help="FSDP2: every layer its own root")
    parser.add_argument("--sharding", default="FULL_SHARD", help="FSDP1 sharding strategy")
    parser.add_argument("--misaligned", action="store_true", help="FSDP1: one unit for all layers")
    parser.add_argument("--kill-writing-last-at", type=int, default=None, help="SIGKILL rank 0 mid-write")
    parser.add_argument("--resume", action="store_true", help="fit(ckpt_path='last') from OUT/ckpts")
    parser.add_argument("--no-restore", action="store_true", help="restore_best=False")
    parser.add_argument("--refreeze", action="store_true", help="phase 2 freezes a tensor again and scales lrs")
    parser.add_argument("--reinit", action="store_true", help="phases 1 and 2 re-initialise optimizer / LR scheduler")
    parser.add_argument("--optimize-all", action="store_true", help="configure_optimizers passes every parameter")
    parser.add_argument("--apply-lambdas", action="store_true", help="apply_lambdas_new_pgs=True")
    parser.add_argument("--final-checkpoint", action="store_true", help="save OUT/final.ckpt after fit (to export)")
    args = parser.parse_args()
    out = Path(args.out)
    torch.set_num_threads(1)
    if args.naive:
        register_adapter(DDPStrategy, StrategyAdapter)

    model = build_model(args)
    schedule = REFREEZE_SCHEDULE if args.refreeze else REINIT_SCHEDULE if args.reinit else SCHEDULE
    schedule = with_epochs(schedule) if args.mode == "epochs" else schedule
    if args.plant == "unused":  # a thawed layer that forward never calls
        model.spare = torch.nn.Linear(2, 2)
        schedule = {**schedule, 1: {**schedule[1], "params": [*schedule[1]["params"], "spare.*"]}}
    callbacks: list[Any] = [
        FinetuningScheduler(
            ft_schedule=schedule,
            epoch_transitions_only=args.mode == "epochs",
            check_replicas=not args.naive,
            restore_best=args.plant not in ("mismatch", "both") and not args.no_restore,
            apply_lambdas_new_pgs=args.apply_lambdas,
            stall_timeout=args.stall_timeout,
        ),  # a restore would heal the planted fault
        FTSCheckpoint(monitor="val_loss", dirpath=out / "ckpts"),
    ]
    if args.resume or args.kill_writing_last_at is not None:  # last.ckpt every epoch, to resume from
        callbacks.append(ModelCheckpoint(dirpath=out / "resume", filename="latest", save_last=True))
    callbacks.append(RecordDDPWrapper())
    meter = MemoryMeter()
    if args.strategy in ("zero1", "zero2") and not args.reference:
        watch_reduce_buckets()
    callbacks.append(meter)
    if args.mode in SCRIPTS:
        callbacks.append(FTSEarlyStopping(monitor="val_loss", patience=1))
    # planted faults run before the scheduler's hook, so they hit the transition at epoch 1
    planted = {"mismatch": [PlantMismatch()], "raise": [RaiseOnRankOne()], "trainable": [PlantTrainable()]}
    planted["both"] = [PlantMismatch(), PlantTrainable()]  # rank 1 diverges and thaws a tensor too many
    planted["truncate"] = [TruncateOwnShards(epoch=4)]  # early-stopping-stale restores phase 0's best at epoch 4
    if args.stall:
        planted[args.plant] = [*planted.get(args.plant, []), StallRankOne(args.stall)]
    callbacks = planted.get(args.plant, []) + callbacks
    if args.kill_writing_last_at is not None:
        callbacks.append(KillDuringCheckpointWrite(args.kill_writing_last_at))
    data = dataset()
    if args.reference or args.strategy == "tp":  # tensor-parallel ranks all see the whole global batch
        train = DataLoader(global_batches(data), batch_size=BATCH * WORLD)
        devices = 1 if args.reference else WORLD
    else:
        rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0)))
        train = DataLoader(data, batch_size=BATCH, sampler=DistributedSampler(data, WORLD, rank, shuffle=False))
        devices = WORLD
    trainer = pl.Trainer(
        accelerator=ACCELERATOR,
        devices=devices,
        num_nodes=1,
        strategy=build_strategy(args),
        max_epochs=args.max_epochs,
        use_distributed_sampler=False,
        callbacks=callbacks,
        default_root_dir=out,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
    )
    trainer.fit(model, train, DataLoader(data, batch_size=len(data)), ckpt_path="last" if args.resume else None)
    if args.final_checkpoint:  # every rank: a sharded or DeepSpeed save is collective
        trainer.save_checkpoint(out / "final.ckpt")
    if isinstance(model, ShardedRecorder):
        final = full_state(trainer.strategy.model)
    else:
        final = engine_full_state(model) if isinstance(model, DeepSpeedRecorder) else model.state_dict()
    result = {"records": model.records, "final": {k: v.clone() for k, v in final.items()}}
    result["ddp"] = getattr(model, "ddp_wrapper", None)
    result["memory"] = meter.by_depth
    if args.strategy in ("ddp", "fsdp2", "fsdp1", *DEEPSPEED) and not args.reference:
        result["plan"] = memory_plan(args, schedule)
    result["optimizer"] = type(trainer.optimizers[0]).__name__
    result["lr_schedulers"] = [type(config.scheduler).__name__ for config in trainer.lr_scheduler_configs]
    if ACCELERATOR != "cpu":
        result["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
    if args.faults:
        best = Path(trainer.strategy.broadcast(trainer.checkpoint_callback.best_model_path))
        result["faults"] = plant_checkpoint_faults(best)
    torch.save(result, out / f"rank{trainer.global_rank}{'-reference' if args.reference else ''}.pt")
    finish_worker()


if __name__ == "__main__":
    main()
