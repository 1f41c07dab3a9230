"""fts-dist fit (LightningCLI) and the launch/ scripts, end to end on CPU: one process, a fallback from a GPU
config, and a 2-process torchrun run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "examples/toy_fit.yaml"
pytestmark = pytest.mark.timeout(300)


def run(command: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable, **env}
    for name in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NNODES", "NODE_RANK"):
        environment.pop(name, None)
    return subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=240)


def fit_args(tmp_path: Path, *overrides: str) -> list[str]:
    return ["fit", "--config", CONFIG, f"--trainer.default_root_dir={tmp_path}", *overrides]


def test_fit_runs_the_schedule_from_a_config(tmp_path: Path) -> None:
    proc = run([sys.executable, "-m", "fts_dist.cli", *fit_args(tmp_path, "--trainer.max_epochs=6")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "fine-tuning ended at phase 2 (phase 0 from epoch 0, phase 1 from epoch 2, phase 2 from epoch 4)" in output
    assert "fallback" not in output
    assert list(tmp_path.rglob("last.ckpt")), "the resume checkpoint is written"


def test_a_gpu_config_falls_back_to_one_cpu_device_with_a_notice(tmp_path: Path) -> None:
    gpu = ("--trainer.accelerator=gpu", "--trainer.devices=4", "--trainer.strategy=ddp", "--trainer.max_epochs=3")
    proc = run([sys.executable, "-m", "fts_dist.cli", *fit_args(tmp_path, *gpu)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    notices = [line for line in proc.stdout.splitlines() if line.startswith("fts_dist: fallback:")]
    assert len(notices) == 1
    assert "asked for accelerator=gpu devices=4 num_nodes=1 strategy=ddp" in notices[0]
    assert "running on 1 cpu device with the single-device adapter" in notices[0]
    assert "phase 1 of 2 begins at epoch 2" in proc.stdout + proc.stderr


def test_a_strategy_that_cannot_run_here_fails_before_training(tmp_path: Path) -> None:
    overrides = ("--trainer.accelerator=gpu", "--trainer.devices=8", "--trainer.strategy=deepspeed")
    proc = run([sys.executable, "-m", "fts_dist.cli", *fit_args(tmp_path, *overrides)], tmp_path)
    assert proc.returncode == 1
    assert "strategy 'deepspeed' needs CUDA GPUs and this machine has none" in proc.stderr
    assert not list(tmp_path.rglob("*.ckpt"))


def test_launch_script_runs_two_cpu_processes_end_to_end(tmp_path: Path) -> None:
    gpu = ("--trainer.accelerator=gpu", "--trainer.devices=8", "--trainer.max_epochs=5")  # the cluster's config
    command = ["launch/torchrun.sh", "--nproc", "2", "--", *fit_args(tmp_path, *gpu)]
    proc = run(command, tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "+ " in proc.stdout and "--nproc_per_node 2" in proc.stdout  # the command it runs, printed
    assert "launched with 2 process(es) on 1 node(s): using accelerator=cpu devices=2" in output
    assert "fts_dist: ranks: rank 0 = " in output and ", rank 1 = " in output
    assert "phase 2 of 2 begins at epoch 4" in output


def test_launch_script_single_process_fallback_end_to_end(tmp_path: Path) -> None:
    gpu = ("--trainer.accelerator=gpu", "--trainer.devices=8", "--trainer.strategy=ddp", "--trainer.max_epochs=3")
    proc = run(["launch/torchrun.sh", "--nproc", "1", "--", *fit_args(tmp_path, *gpu)], tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "fts_dist: fallback:" in proc.stdout and "--nproc_per_node 1" in proc.stdout


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("launch/multinode.sh", ["--", "fit"], "missing: --nnodes (or NNODES) --node-rank (or NODE_RANK)"),
        ("launch/multinode.sh", ["--nnodes", "2", "--node-rank", "0", "--", "fit"], "missing: --rdzv-endpoint"),
        ("launch/torchrun.sh", ["--nproc", "2"], "nothing to run after --"),
        ("launch/torchrun.sh", ["--gpus", "2", "--", "fit"], "unknown option --gpus"),
    ],
)
def test_launch_scripts_fail_early_naming_the_missing_setting(tmp_path: Path, script: str, args, message) -> None:
    proc = run([script, *args], tmp_path)
    assert proc.returncode == 2 and message in proc.stderr
