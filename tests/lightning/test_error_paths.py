"""Error paths no other test reached: each refusal comes before the first training step (or exits the command) and
says what to do; the FTS 0.1.2 methods ``step_pg`` and ``restore_best_ckpt`` do what they say."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DDPStrategy
from torch.distributed.optim import ZeroRedundancyOptimizer

from fts_dist import FinetuningScheduler, FSDPStrategy
from fts_dist.cli import main
from fts_dist.errors import FTSConfigError
from tests.lightning.conftest import Recorder
from tests.modules import SCHEDULE, loaders

ROOT = Path(__file__).resolve().parents[2]


class StepCounter(pl.Callback):
    def __init__(self) -> None:
        self.steps = 0

    def on_train_batch_end(self, *args: Any) -> None:
        self.steps += 1


def fit_one_process(
    tmp_path: Path, model: pl.LightningModule, strategy: Any, schedule: Any = None, counter: StepCounter | None = None
) -> StepCounter:
    counter = counter or StepCounter()
    schedule = schedule or with_epochs(SCHEDULE)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        strategy=strategy,
        max_epochs=3,
        callbacks=[FinetuningScheduler(ft_schedule=schedule, epoch_transitions_only=True), counter],
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
    )
    trainer.fit(model, *loaders())
    return counter


@pytest.fixture(autouse=True)
def environment_as_it_was():
    """Lightning's DDP and DeepSpeed on one device export LOCAL_RANK, NODE_RANK, RANK, WORLD_SIZE and
    MASTER_ADDR/PORT into this process: put the environment back after every test here, or later launches (and the
    SLURM script's test) would think they were launched. (DeepSpeed's process group stays: DeepSpeed keeps it for
    the process's lifetime.)"""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def one_rank_process_group():
    """Lightning's DDP on one device initialises a process group in this process: destroyed afterwards."""
    yield
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def with_epochs(schedule: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {depth: {**phase, "max_transition_epoch": depth + 1} for depth, phase in schedule.items()}


class ZeroOptimizerRecorder(Recorder):  # type: ignore[misc, valid-type]
    def __init__(self, overlap_with_ddp: bool) -> None:
        super().__init__()
        self.overlap_with_ddp = overlap_with_ddp

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        return ZeroRedundancyOptimizer(
            params, optimizer_class=torch.optim.SGD, lr=0.1, overlap_with_ddp=self.overlap_with_ddp
        )


def test_zero_redundancy_optimizer_overlapping_with_ddp_is_refused_before_the_first_step(
    tmp_path: Path, one_rank_process_group: None
) -> None:
    counter = StepCounter()
    with pytest.raises(FTSConfigError, match=r"overlap_with_ddp=True\) supports a single parameter group"):
        fit_one_process(tmp_path, ZeroOptimizerRecorder(True), DDPStrategy(process_group_backend="gloo"), None, counter)
    assert counter.steps == 0


def test_a_new_optimizer_over_a_sharded_ddp_optimizer_is_refused_before_the_first_step(
    tmp_path: Path, one_rank_process_group: None
) -> None:
    schedule = with_epochs(SCHEDULE)
    schedule[1]["new_optimizer"] = {"optimizer_init": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}}}
    with pytest.raises(FTSConfigError, match="ZeroRedundancyOptimizer") as raised:
        fit_one_process(tmp_path, ZeroOptimizerRecorder(False), DDPStrategy(process_group_backend="gloo"), schedule)
    assert raised.value.phase == 1 or "phase 1" in str(raised.value)


def test_fsdp1_full_state_dicts_are_refused_on_a_cpu_accelerator_naming_the_option(
    tmp_path: Path, one_rank_process_group: None
) -> None:
    with pytest.raises(FTSConfigError, match="state_dict_type='sharded'"):
        fit_one_process(tmp_path, Recorder(), FSDPStrategy(state_dict_type="full"))


def test_deepspeed_on_cpu_after_deepspeed_chose_another_accelerator_says_to_set_ds_accelerator() -> None:
    """In a fresh process, DeepSpeed is made to pick a CUDA accelerator first: fts_dist's CPU strategy names the
    environment variable that fixes it, instead of failing inside DeepSpeed."""
    script = """
import deepspeed.accelerator.real_accelerator as real
from deepspeed.accelerator.cuda_accelerator import CUDA_Accelerator
real.ds_accelerator = CUDA_Accelerator()
from fts_dist import DeepSpeedStrategy
strategy = DeepSpeedStrategy(stage=2, process_group_backend="gloo")
strategy._accelerator = __import__("pytorch_lightning").accelerators.CPUAccelerator()
strategy.parallel_devices = [__import__("torch").device("cpu")]
try:
    strategy.setup_environment()
except RuntimeError as err:
    print("REFUSED:", err)
"""
    pytest.importorskip("deepspeed")
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert "REFUSED: DeepSpeed already chose its 'cuda' accelerator" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert "set DS_ACCELERATOR=cpu" in proc.stdout


class CallsAtEpoch(pl.Callback):
    """Calls ``action(scheduler, trainer)`` at the start of ``epoch``, after the scheduler's own hook."""

    def __init__(self, epoch: int, action: Any) -> None:
        self.epoch, self.action = epoch, action
        self.seen: dict[str, Any] = {}

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            scheduler = next(c for c in trainer.callbacks if isinstance(c, FinetuningScheduler))
            self.action(scheduler, trainer, self.seen)


def test_step_pg_thaws_to_a_depth_and_refuses_to_go_back(fit) -> None:
    def jump(scheduler: FinetuningScheduler, trainer: pl.Trainer, seen: dict[str, Any]) -> None:
        scheduler.step_pg(trainer.optimizers[0], depth=2)
        seen["groups"] = len(trainer.optimizers[0].param_groups)
        seen["trainable"] = sum(p.requires_grad for p in trainer.lightning_module.parameters())
        seen["depth"] = scheduler.curr_depth
        with pytest.raises(FTSConfigError, match=r"step_pg\(depth=0\) is below the current phase 2"):
            scheduler.step_pg(trainer.optimizers[0], depth=0)
        with pytest.raises(FTSConfigError, match="the trainer's optimizer only"):
            scheduler.step_pg(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), depth=2)

    probe = CallsAtEpoch(1, jump)
    _, trainer, scheduler = fit(
        ft_schedule=with_epochs(SCHEDULE), epoch_transitions_only=True, max_epochs=3, extra_callbacks=[probe]
    )
    assert scheduler.curr_depth == 2 and len(trainer.optimizers[0].param_groups) == 3  # no phase entered twice
    # every layer's weight and bias, one group a phase; the schedule is at phase 2 (its last) from here on
    assert probe.seen == {"groups": 3, "trainable": 8, "depth": 2}


def test_restore_best_ckpt_brings_back_the_best_weights_and_keeps_the_groups(fit, tmp_path: Path) -> None:
    def restore(scheduler: FinetuningScheduler, trainer: pl.Trainer, seen: dict[str, Any]) -> None:
        best = trainer.checkpoint_callback.best_model_path
        seen["groups_before"] = len(trainer.optimizers[0].param_groups)
        scheduler.restore_best_ckpt()
        saved = torch.load(best, weights_only=False)["state_dict"]
        live = trainer.lightning_module.state_dict()
        seen["equal"] = all(torch.equal(live[k], v) for k, v in saved.items())
        seen["groups_after"] = len(trainer.optimizers[0].param_groups)

    probe = CallsAtEpoch(3, restore)
    model = Recorder(scripted_val_loss=[1.0, 0.5, 0.9, 0.95, 0.4])  # epoch 1 stays the best until epoch 4
    fit(model, ft_schedule=with_epochs(SCHEDULE), epoch_transitions_only=True, max_epochs=4, extra_callbacks=[probe])
    assert probe.seen == {"groups_before": 3, "equal": True, "groups_after": 3}


def test_the_command_line_exits_with_a_message_for_a_bad_model_and_a_missing_demo_extra(
    capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["schedule", "gen", "no_such_package.module:Model"]) == 1
    assert "no_such_package" in capsys.readouterr().err
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real_find_spec(name, *a)
    )
    assert main(["demo"]) == 2
    assert "needs the demo extra (missing: transformers): pip install 'fts-dist[demo]'" in capsys.readouterr().out


def test_the_multinode_launcher_names_each_missing_setting() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("NNODES", "NODE_RANK", "MASTER_ADDR", "SLURM_JOB_ID")}
    proc = subprocess.run(
        ["bash", str(ROOT / "launch" / "multinode.sh"), "--", "fit", "--config", "c.yaml"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    for setting in ("--nnodes (or NNODES)", "--node-rank (or NODE_RANK)", "--rdzv-endpoint (or MASTER_ADDR)"):
        assert setting in proc.stderr


def accumulated_fit(
    tmp_path: Path, strategy: Any, batches: int, lr_scale: float = 1.0, counter: StepCounter | None = None
) -> tuple[Recorder, StepCounter]:
    counter = counter or StepCounter()
    model = Recorder(lr=0.1 * lr_scale)
    schedule = {d: {**p, **({"lr": p["lr"] * lr_scale} if "lr" in p else {})} for d, p in with_epochs(SCHEDULE).items()}
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, strategy=strategy, max_epochs=3, accumulate_grad_batches=2,
        use_distributed_sampler=False,
        callbacks=[FinetuningScheduler(ft_schedule=schedule, epoch_transitions_only=True), counter],
        default_root_dir=tmp_path, enable_progress_bar=False, enable_model_summary=False, logger=False,
    )  # fmt: skip
    trainer.fit(model, *loaders(batches=batches))
    return model, counter


def deepspeed_zero2() -> Any:
    from fts_dist import DeepSpeedStrategy

    config = {
        "zero_optimization": {"stage": 2},
        "zero_allow_untested_optimizer": True,
        "train_micro_batch_size_per_gpu": 8,
        "gradient_clipping": 0.0,
    }
    return DeepSpeedStrategy(config=config, process_group_backend="gloo")


def test_gradient_accumulation_under_a_real_deepspeed_engine_crosses_transitions_like_plain_lightning(
    tmp_path: Path,
) -> None:
    """ZeRO-2 on one CPU process, two batches a step, two transitions (each rebuilds the ZeRO optimizer on a step
    boundary): the same weights as plain Lightning accumulating the same way, at half the learning rates. Lightning
    2.6 divides each micro-batch's loss by the accumulation and DeepSpeed's backward divides it again (measured: a
    step's update is half of plain Lightning's, with or without fts_dist), so SGD under DeepSpeed moves as plain SGD
    at half the rate; were that fixed upstream, this test would say so."""
    pytest.importorskip("deepspeed")
    ours, counter = accumulated_fit(tmp_path / "deepspeed", deepspeed_zero2(), batches=4)
    plain, _ = accumulated_fit(tmp_path / "plain", "auto", batches=4, lr_scale=0.5)
    assert counter.steps == 12  # batches: 4 a epoch, 3 epochs
    ours_state, plain_state = ours.state_dict(), plain.state_dict()
    for name, value in plain_state.items():
        torch.testing.assert_close(ours_state[name], value, rtol=0, atol=1e-6, msg=name)


def test_an_epoch_that_accumulation_does_not_divide_is_refused_under_deepspeed_before_the_first_step(
    tmp_path: Path,
) -> None:
    pytest.importorskip("deepspeed")
    counter = StepCounter()
    with pytest.raises(FTSConfigError, match="does not divide the 3 training batches") as raised:
        accumulated_fit(tmp_path, deepspeed_zero2(), batches=3, counter=counter)
    assert raised.value.key == "accumulate_grad_batches" and counter.steps == 0
