"""2-process DeepSpeed on CPU (gloo, ``fts_dist.DeepSpeedStrategy``): ZeRO stages 1, 2 and 3 and optimizer offload
against one process without DeepSpeed, a kill and resume from DeepSpeed's own checkpoint, and memory across 7
transitions. Each transition rebuilds the engine's ZeRO optimizer for the new trainable set."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.distributed.launch import (
    TIMEOUT_S,
    Run,
    assert_checkpoint_faults_caught,
    assert_export_equals_final_weights,
    assert_memory_as_planned,
    launch,
)
from tests.distributed.test_sharded_2proc import (
    REFREEZE,
    STALE,
    STALE_DEPTHS,
    assert_matches,
    assert_refrozen,
    one_process_reference,
)

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.timeout(600),
    pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="pip install fts-dist[deepspeed]"),
]
MEMORY_WORKER = Path(__file__).parent / "workers" / "deepspeed_memory.py"


@pytest.fixture(scope="module")
def refreeze_reference(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One process without DeepSpeed over the same global batches, with the same optimizer (SGD, momentum)."""
    return one_process_reference(tmp_path_factory, *REFREEZE)


def test_zero1_carries_every_group_across_transitions_and_reinitialises_optimizer_and_schedulers(
    tmp_path: Path,
) -> None:
    """Epoch-driven phases without restores, with tests.modules.REINIT_SCHEDULE: phase 0 runs a ChainedScheduler
    (its children follow the rebuilt optimizer); phase 1 builds a new SGD (a fresh ZeRO optimizer around it, in the
    live engine) and a StepLR; phase 2 keeps every group, phase 1's included, whose state is read back at phase 2
    (ZeRO 1/2 map parameters onto their optimizer state once, after the first per-group step, when a group added
    later has none yet), and builds a cosine schedule."""
    args = ("--mode", "epochs", "--scheduler", "chained", "--no-restore", "--reinit")
    run = launch(tmp_path, "--strategy", "zero1", *args, "--faults", "--final-checkpoint")
    assert run.returncode == 0, run.output[-3000:]
    assert_checkpoint_faults_caught(run)  # rank 1's own optimizer partition, damaged after training
    assert_export_equals_final_weights(run, tmp_path)
    reference = launch(tmp_path, *args, reference=True)
    assert reference.returncode == 0, reference.output[-3000:]
    assert_matches(run, reference.reference(), [0, 1, 1, 2, 2])
    assert run.rank(0)["lr_schedulers"] == ["CosineAnnealingLR"]
    # the plan made before launch: whole weights, fp32 partitions, DeepSpeed's reduce bucket (5e8 elements, its
    # default where a config names none), and what each phase's step saved for backward
    assert_memory_as_planned(run, [0, 1, 2], keys=("params", "masters", "buffers"))


@pytest.mark.parametrize("stage", [("zero2",), ("zero3", "--offload")], ids=["zero2", "zero3-offload"])
def test_every_zero_stage_restores_an_earlier_phase_across_a_freeze_with_an_lr_scheduler(
    tmp_path: Path, refreeze_reference: Run, stage: tuple[str, ...]
) -> None:
    """Phase 2 restores phase 0's best checkpoint: the optimizer is rebuilt with that checkpoint's single group
    before the engine loads it, then regains phase 1's group (with its settings from before) and phase 2's; phase 2
    freezes layers.1 again, which leaves ZeRO's group 1 (layers.2 stays), and halves the earlier groups' learning
    rates."""
    run = launch(tmp_path, "--strategy", *stage, *REFREEZE, "--faults", "--final-checkpoint")
    assert run.returncode == 0, run.output[-3000:]
    assert_checkpoint_faults_caught(run)  # rank 1's own partitions, damaged after training
    assert_export_equals_final_weights(run, tmp_path)  # layers.1 frozen again at the end: coverage counts it
    assert_matches(run, refreeze_reference.reference(), STALE_DEPTHS)
    assert "phase 2 of 2 begins at epoch 4: 130 trainable parameters in 6 tensors, 3 optimizer groups" in run.output
    assert_refrozen(run)
    # the plan made before launch, up to the freeze (the re-frozen layer keeps its state, which the plan leaves out)
    assert_memory_as_planned(run, [0, 1], keys=("params", "masters") if stage == ("zero2",) else ("host",))


def test_a_truncated_zero3_partition_on_one_rank_ends_every_rank_with_the_file_named(tmp_path: Path) -> None:
    """Rank 1 truncates its own ZeRO-3 files of the best checkpoint just before the transition that restores it
    (before the checks, rank 1 aborted inside gloo and rank 0 died with `Connection reset by peer`): every rank ends
    with CheckpointRestoreError naming rank 1 and its file, and the checkpoint is left in place."""
    run = launch(tmp_path, "--strategy", "zero3", *STALE, "--plant", "truncate")
    assert run.returncode != 0
    errors = [line for line in run.output.splitlines() if "CheckpointRestoreError: Cannot restore the best" in line]
    assert len({e.split("]")[0] for e in errors}) >= 2, run.output[-3000:]  # both ranks raised it
    assert "rank 1: " in errors[0] and "zero_pp_rank_1_mp_rank_00" in errors[0] and "truncated" in errors[0]
    assert "Received data size" not in run.output and "Connection reset" not in run.output
    assert any((tmp_path / "ckpts").glob("*/checkpoint/zero_pp_rank_1_mp_rank_00_model_states.pt"))


def test_adamw_moments_and_step_counts_survive_every_rebuild_with_offload(tmp_path: Path) -> None:
    """ZeRO-2 with optimizer offload, AdamW, a restore of phase 0's checkpoint at phase 2: against one process that
    averages the ranks' per-rank gradients (with Adam, what the ranks compute to the last bit)."""
    args = ("--mode", "early-stopping-stale", "--max-epochs", "6", "--optimizer", "adamw")
    run = launch(tmp_path, "--strategy", "zero2", "--offload", *args)
    assert run.returncode == 0, run.output[-3000:]
    reference = launch(tmp_path, *args, reference=True)
    assert reference.returncode == 0, reference.output[-3000:]
    assert_matches(run, reference.reference(), STALE_DEPTHS)
    assert run.rank(0)["optimizer"] == "DeepSpeedZeroOptimizer"
    assert_memory_as_planned(run, [0, 1, 2], keys=("params", "host", "buffers"))  # offload: masters and state on host


def test_a_kill_mid_write_keeps_the_last_deepspeed_checkpoint_and_the_resume_matches(
    tmp_path: Path, refreeze_reference: Run
) -> None:
    """Killed while writing epoch 5's checkpoint, resumed from epoch 4's: taken after phase 2 froze layers.1 again
    and scaled the learning rates."""
    killed = launch(tmp_path, "--strategy", "zero3", *REFREEZE, "--kill-writing-last-at", "5")
    assert killed.returncode != 0
    resume_dir = tmp_path / "resume"
    assert sorted(p.name for p in resume_dir.iterdir()) == [".last.ckpt.fts-staging", "last.ckpt", "latest.ckpt"]
    assert (resume_dir / "last.ckpt" / "latest").read_text().strip() == "checkpoint"  # whole
    resumed = launch(tmp_path, "--strategy", "zero3", *REFREEZE, "--resume")
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert "resumed at phase 2 of 2" in resumed.output
    assert_matches(resumed, refreeze_reference.reference(), [2])
    assert "layers.1.weight" not in resumed.rank(0)["records"][0]["trainable"]


@pytest.mark.parametrize("stage", [2, 3])
def test_seven_transitions_keep_memory_flat_and_frozen_parameters_hold_no_state(tmp_path: Path, stage: int) -> None:
    """AdamW: fp32 masters plus Adam state are trainable x 12 bytes / world in every phase (frozen parameters hold
    none), and after every transition one ZeRO optimizer is alive (the old one is not kept). Every rebuild hands the
    kept groups' Adam state to the new optimizer (exactly the rank's share of it) and copies nothing to the host: a
    gather of whole parameters (ZeRO 1/2's ``safe_get_full_*``) would copy world x that. The head has 5
    outputs, which 2 ranks do not divide: its restore goes through ZeRO-3's padded last partition."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += [str(MEMORY_WORKER), "--out", str(tmp_path), "--stage", str(stage)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    for rank in (0, 1):
        result = json.loads((tmp_path / f"memory-rank{rank}.json").read_text())
        ideal = [state["trainable"] * 12 / result["world"] for state in result["state"]]
        # within the padding of a partition the ranks do not divide (the 5-class head: one element under ZeRO-3, up
        # to ZeRO 1/2's alignment of each group's flat buffer)
        assert [state["bytes"] for state in result["state"]] == pytest.approx(ideal, rel=2e-3, abs=12 * 64)
        assert result["live_optimizers"] == [1] * 8  # each rebuild let the old ZeRO optimizer go
        rebuilds = result["rebuilds"]  # one per transition; each keeps the previous phase's state
        assert len(rebuilds) == 7 and all(rebuild["host"] == 0 for rebuild in rebuilds)
        moments = [state["bytes"] - state["flats"] for state in result["state"]]
        assert [r["handed_state"] for r in rebuilds] == moments[:7]  # each kept group's Adam state, by reference
        # fp32 weights hold the masters' values: ZeRO 1/2 let the old partitions go; ZeRO-3's masters are the weights
        assert [r["handed_masters"] for r in rebuilds] == (
            [0] * 7 if stage < 3 else [s["flats"] for s in result["state"][:7]]
        )
        # the plan made before launch (fts_dist.memory): Adam's moments within ZeRO's alignment padding, and ZeRO-2's
        # fp32 masters (ZeRO-3's fp32 weights are their own masters: the plan counts them as weights)
        steps = [4 * (phase + 1) for phase in range(8)]  # DeepSpeed's step counter per group, which the meter skips
        planned = [p["optimizer_state"] - step for p, step in zip(result["plan"], steps, strict=True)]
        assert moments == pytest.approx(planned, rel=0.05, abs=8 * 2 * 64)
        if stage == 2:
            assert [s["flats"] for s in result["state"]] == pytest.approx(
                [p["masters"] for p in result["plan"]], rel=0.05, abs=4 * 2 * 64
            )
        # each transition restores the best checkpoint: the whole-model file mapped, this rank's partitions read
        assert result["reads"].get("model mapped", 0) >= 7 and "model read" not in result["reads"]
    assert "phase 7 of 7 begins at epoch 7" in proc.stdout + proc.stderr
