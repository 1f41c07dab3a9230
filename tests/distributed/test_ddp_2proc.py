"""2-process DDP on CPU (gloo): every rank thaws and updates identically, and matches one process."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from tests.distributed.launch import (
    assert_checkpoint_faults_caught,
    assert_export_equals_final_weights,
    assert_memory_as_planned,
    launch,
)

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(400)]
REFERENCE_ATOL = 1e-5
needs_fairscale = pytest.mark.skipif(
    importlib.util.find_spec("fairscale") is None, reason="pip install fts-dist[fairscale]"
)


def max_abs_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def assert_replicas_equal_every_epoch(run) -> None:
    rank0, rank1 = run.rank(0), run.rank(1)
    for epoch0, epoch1 in zip(rank0["records"], rank1["records"], strict=True):
        assert epoch0["trainable"] == epoch1["trainable"] and epoch0["lrs"] == epoch1["lrs"]
        assert all(torch.equal(epoch0["weights"][k], epoch1["weights"][k]) for k in epoch0["weights"])
    assert all(torch.equal(rank0["final"][k], rank1["final"][k]) for k in rank0["final"])


@pytest.mark.parametrize(
    ("launcher", "args", "depths"),
    [
        ("torchrun", ("--mode", "epochs", "--refreeze", "--faults"), [0, 1, 1, 2, 2]),
        (
            "lightning",
            ("--mode", "epochs", "--optimize-all", "--scheduler", "lambda", "--apply-lambdas"),
            [0, 1, 1, 2, 2],
        ),
        (
            "torchrun",
            (
                "--mode",
                "early-stopping",
                "--scheduler",
                "steplr",
                "--max-epochs",
                "7",
                "--reinit",
                "--final-checkpoint",
            ),
            [0, 0, 0, 1, 1, 2, 2],
        ),
        ("torchrun", ("--mode", "early-stopping", "--optimizer", "zero", "--max-epochs", "7"), [0, 0, 0, 1, 1, 2, 2]),
        (
            "torchrun",
            (
                *("--mode", "early-stopping-stale", "--optimizer", "zero", "--scheduler", "steplr"),
                *("--max-epochs", "6", "--refreeze"),
            ),
            [0, 0, 0, 1, 2, 2],
        ),
        pytest.param(
            "torchrun",
            ("--mode", "early-stopping-stale", "--optimizer", "oss", "--scheduler", "steplr", "--max-epochs", "6"),
            [0, 0, 0, 1, 2, 2],
            marks=needs_fairscale,
        ),
    ],
    ids=[
        "torchrun-epochs-refreeze",
        "lightning-launcher-epochs-enforce-phase0-params-apply-lambdas",
        "torchrun-es-restore-steplr-reinit-optimizer-and-schedulers",
        "torchrun-zero-es-restore",
        "torchrun-zero-restore-older-phase-across-a-freeze-steplr",
        "torchrun-fairscale-oss-restore-older-phase-steplr",
    ],
)
def test_world_size_2_equals_single_process(tmp_path: Path, launcher: str, args: tuple, depths: list) -> None:
    run = launch(tmp_path, *args, launcher=launcher)
    assert run.returncode == 0, run.output[-3000:]
    if "--faults" in args:  # the best checkpoint, one file: rank 1's damage is seen before any rank loads it
        assert_checkpoint_faults_caught(run, owner=0)
    chosen = args[args.index("--optimizer") + 1] if "--optimizer" in args else "sgd"
    optimizer = {"zero": "ZeroRedundancyOptimizer", "oss": "OSS", "sgd": "SGD"}[chosen]
    assert run.rank(0)["optimizer"] == optimizer  # the sharded optimizers ran, against a plain-SGD reference
    if "--optimize-all" in args:  # configure_optimizers passed every parameter: regrouped into phase 0's
        assert "its groups are now one group of phase 0's parameters" in run.output
    if launcher == "lightning":  # plain SGD, no freeze: every phase as the memory plan says
        assert_memory_as_planned(run, [0, 1, 2])
    if "--apply-lambdas" in args:  # phase 1 joined LambdaLR at 0.05 x 0.9 ** 1 (epoch 1), not at 0.05
        assert run.rank(0)["records"][1]["lrs"] == pytest.approx([0.05 * 0.9, 0.05 * 0.9])
    if "--reinit" in args:  # tests.modules.REINIT_SCHEDULE: phase 2 runs phase 1's SGD and its own cosine schedule
        assert run.rank(0)["lr_schedulers"] == ["CosineAnnealingLR"]
    assert [len(r["lrs"]) - 1 for r in run.rank(0)["records"]] == depths
    assert_replicas_equal_every_epoch(run)
    if "--final-checkpoint" in args:
        assert_export_equals_final_weights(run, tmp_path)
    reference = launch(tmp_path, *(a for a in args if a != "--faults"), reference=True)
    assert reference.returncode == 0, reference.output[-3000:]
    assert max_abs_diff(run.rank(0)["final"], reference.reference()["final"]) < REFERENCE_ATOL
    for ours, ref in zip(run.rank(0)["records"], reference.reference()["records"], strict=True):
        assert ours["lrs"] == pytest.approx(ref["lrs"]) and ours["trainable"] == ref["trainable"]
    if "--refreeze" in args:  # phase 2 froze layers.1 again: DDP no longer syncs it
        assert "layers.1.weight" not in run.rank(0)["ddp"]["synced"]
        assert "layers.2.weight" in run.rank(0)["ddp"]["synced"]


def test_without_the_adapter_replicas_diverge(tmp_path: Path) -> None:
    """The negative control: a plain thaw under DDP (what the adapter fixes) leaves later phases unsynced."""
    run = launch(tmp_path, "--naive")
    assert run.returncode == 0, run.output[-3000:]
    assert max_abs_diff(run.rank(0)["final"], run.rank(1)["final"]) > 1e-3


def test_replica_check_catches_a_planted_mismatch(tmp_path: Path) -> None:
    run = launch(tmp_path, "--plant", "mismatch")
    assert run.returncode != 0
    assert "Replicas diverged at phase 1" in run.output
    assert "rank 1 weights differ from rank 0's in ['layers.0.weight']" in run.output


def test_a_rank_that_raises_ends_both_ranks(tmp_path: Path) -> None:
    run = launch(tmp_path, "--plant", "raise")  # bounded by launch()'s timeout: a hang fails the test
    assert run.returncode != 0
    assert "planted failure on rank 1" in run.output
    assert not (tmp_path / "rank0.pt").exists() and not (tmp_path / "rank1.pt").exists()


def test_a_thawed_parameter_without_gradient_is_named_before_ddp_fails(tmp_path: Path) -> None:
    run = launch(tmp_path, "--plant", "unused")
    assert run.returncode != 0
    assert "thawed by phase 1 or earlier got no gradient in the phase's first step: ['spare.weight', 'spare.bias']" in (
        run.output
    )
    assert "find_unused_parameters=True" in run.output


def test_ddp_options_survive_every_rewrap(tmp_path: Path) -> None:
    run = launch(tmp_path, "--ddp-options")
    assert run.returncode == 0, run.output[-3000:]
    ddp = run.rank(0)["ddp"]
    assert (ddp["bucket_bytes_cap"], ddp["static_graph"], ddp["gradient_as_bucket_view"]) == (1024 * 1024, True, True)
    assert ddp["synced"] == sorted(run.rank(0)["final"])  # the final wrapper syncs every (now thawed) parameter
    assert ddp["init_syncs"] == 1  # Lightning's first wrap broadcasts; re-wraps after a passed replica check do not
    assert_replicas_equal_every_epoch(run)


@pytest.mark.parametrize("where", ["step", "transition"])
def test_a_stalled_rank_ends_the_job_within_the_stall_timeout_and_is_named(tmp_path: Path, where: str) -> None:
    """Rank 1 stops for 10 minutes (in a training step, or entering the epoch-1 transition) under
    ``stall_timeout=10``: the job ends long before (the launch is bounded: a 10-minute wait fails the test), exit
    status 76, and the report lists every rank's last step, phase and place and names rank 1 as the one behind."""
    run = launch(tmp_path, "--mode", "epochs", "--stall", where, "--stall-timeout", "10", timeout_s=150)
    assert run.returncode != 0
    assert "fts_dist: stall: no progress for 10 s; rank(s) [1] behind" in run.output, run.output[-3000:]
    assert "fts_dist: stall:   rank 0: step " in run.output and "fts_dist: stall:   rank 1: step " in run.output
    assert "exitcode  : 76" in run.output  # torchrun's summary: the watchdog's status
    if where == "transition":
        assert "rank 0: step 3, phase 0, in the transition to phase 1: restore" in run.output  # waits for rank 1
