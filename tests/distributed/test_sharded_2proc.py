"""2-process FSDP2 / HSDP / FSDP1 on CPU (gloo): every phase's thaw, group and restore, against one process.

Each rank trains on its own half of every global batch; the reference is one process over the same global batches
(for bf16, one that computes what FSDP2's mixed precision computes). The weights compared are the gathered, whole
ones. Several checks share a launch: CI time is counted in launches (about 8-10 s each on two cores).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.distributed.launch import (
    Run,
    assert_checkpoint_faults_caught,
    assert_export_equals_final_weights,
    assert_memory_as_planned,
    launch,
)

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(400)]
REFERENCE_ATOL = 1e-5
# phase 1 never beats epoch 1, so phase 2 (epoch 4) restores a checkpoint of phase 0, with one optimizer group
STALE = ("--mode", "early-stopping-stale", "--scheduler", "steplr", "--max-epochs", "6")
STALE_DEPTHS = [0, 0, 0, 1, 2, 2]
# the same with tests.modules.REFREEZE_SCHEDULE: phase 2 restores a checkpoint from before it freezes layers.1
# again and halves the earlier groups' learning rates
REFREEZE = (*STALE, "--refreeze")


def one_process_reference(tmp_path_factory: pytest.TempPathFactory, *args: str) -> Run:
    """One process over the global batches of a run with ``args`` (shared by the tests that run it)."""
    run = launch(tmp_path_factory.mktemp("reference"), *args, reference=True)
    assert run.returncode == 0, run.output[-3000:]
    return run


@pytest.fixture(scope="module")
def refreeze_reference(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return one_process_reference(tmp_path_factory, *REFREEZE)


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].cpu() - b[k].cpu()).abs().max()) for k in a)  # a CUDA run against a CPU reference


def assert_matches(run: Run, reference: dict, depths: list[int]) -> None:
    """Ranks identical at every epoch start and at the end; the trainable sets, learning rates and final weights
    of the reference."""
    rank0, rank1 = run.rank(0), run.rank(1)
    assert [len(r["lrs"]) - 1 for r in rank0["records"]] == depths
    for epoch0, epoch1 in zip(rank0["records"], rank1["records"], strict=True):
        assert epoch0["trainable"] == epoch1["trainable"] and epoch0["lrs"] == epoch1["lrs"]
        assert max_abs_diff(epoch0["weights"], epoch1["weights"]) == 0.0
    assert max_abs_diff(rank0["final"], rank1["final"]) == 0.0
    assert max_abs_diff(rank0["final"], reference["final"]) < REFERENCE_ATOL
    resumed_from = len(reference["records"]) - len(rank0["records"])
    for ours, ref in zip(rank0["records"], reference["records"][resumed_from:], strict=True):
        assert ours["lrs"] == pytest.approx(ref["lrs"]) and ours["trainable"] == ref["trainable"]


def test_fsdp2_restores_an_earlier_phase_across_a_freeze_with_an_lr_scheduler(
    tmp_path: Path, refreeze_reference: Run
) -> None:
    """Phase 2 restores phase 0's checkpoint, freezes layers.1 again and halves the earlier groups' learning
    rates."""
    run = launch(tmp_path, "--strategy", "fsdp2", *REFREEZE, "--faults", "--final-checkpoint")
    assert run.returncode == 0, run.output[-3000:]
    assert_matches(run, refreeze_reference.reference(), STALE_DEPTHS)
    assert_export_equals_final_weights(run, tmp_path)  # DCP shards, which Lightning's consolidation tool cannot read
    assert_checkpoint_faults_caught(run)  # rank 1's own DCP shard, damaged after training
    assert "phase 2 of 2 begins at epoch 4: 130 trainable parameters in 6 tensors, 3 optimizer groups" in run.output
    assert_refrozen(run)
    assert_memory_as_planned(run, [0, 1])  # phase 2 keeps the re-frozen layer's state, which the plan leaves out


@pytest.mark.parametrize(
    ("strategy", "extra", "plant"),
    [
        ("fsdp1", ("--sharding", "NO_SHARD"), "both"),
        ("fsdp1", ("--sharding", "HYBRID_SHARD"), "both"),
        ("zero2", (), "trainable"),
    ],
    ids=["fsdp1-no-shard", "fsdp1-hybrid-shard-two-nodes", "deepspeed-zero2"],
)
def test_each_adapters_replica_check_names_a_planted_divergence_and_an_extra_trainable_tensor(
    tmp_path: Path, strategy: str, extra: tuple[str, ...], plant: str
) -> None:
    """At the first transition rank 1's adapter thaws layers.0.weight too and (``both``) its layers.0.weight is
    moved: the checks name them by the module's own parameter names (FSDP1's flat parameters hold them;
    HYBRID_SHARD on a (2, 1) mesh: each node's single rank holds whole units). Under DeepSpeed the trainable sets
    are compared right after the thaw, before the ZeRO rebuild, whose collectives assume they agree (the rebuild
    sets requires_grad by group membership, which hid the extra tensor before)."""
    run = launch(tmp_path, "--strategy", strategy, *extra, "--plant", plant)
    assert run.returncode != 0
    assert "ReplicaMismatchError" in run.output, run.output[-3000:]
    assert "rank 1 trainable set differs from rank 0's: ['layers.0.weight']" in run.output
    if plant == "both":
        assert "rank 1 weights differ from rank 0's in ['layers.0.weight'" in run.output
    assert "flat_param" not in run.output


def assert_refrozen(run: Run) -> None:
    """Phase 2 (epoch 4) froze layers.1 again, kept 3 groups, and halved the earlier groups' StepLR rates."""
    epoch3, epoch4 = run.rank(0)["records"][3:5]
    assert "layers.1.weight" in epoch3["trainable"] and "layers.1.weight" not in epoch4["trainable"]
    assert epoch4["lrs"] == pytest.approx([epoch3["lrs"][0] * 0.7 * 0.5, epoch3["lrs"][1] * 0.7 * 0.5, 0.02])
    assert torch.equal(epoch4["weights"]["layers.1.weight"], run.rank(0)["final"]["layers.1.weight"])


def test_tensor_parallel_thaws_sharded_and_replicated_parameters(tmp_path: Path, refreeze_reference: Run) -> None:
    """ModelParallelStrategy with the module's own tensor-parallel plan (both ranks split every layer and see the
    whole global batch): the same run as one process, a freeze again included."""
    run = launch(tmp_path, "--strategy", "tp", *REFREEZE)
    assert run.returncode == 0, run.output[-3000:]
    assert_matches(run, refreeze_reference.reference(), STALE_DEPTHS)


def test_fsdp2_bf16_mixed_precision_and_cpu_offload_after_thawing_modules_that_ran_frozen(tmp_path: Path) -> None:
    """Phases 1 and 2 ran their first forward frozen; without the dtype refresh their first backward fails. Every
    layer is its own FSDP root here, and parameters are offloaded: the thaw still lands on the sharded weights."""
    run = launch(tmp_path, "--strategy", "fsdp2", "--bf16", "--offload", "--own-roots")
    assert run.returncode == 0, run.output[-3000:]
    reference = launch(tmp_path, "--bf16", reference=True)
    assert reference.returncode == 0, reference.output[-3000:]
    assert_matches(run, reference.reference(), [0, 1, 1, 2, 2])


@pytest.mark.parametrize(("strategy", "extra"), [("fsdp1", ("--sharding", "SHARD_GRAD_OP"))])
def test_a_kill_mid_sharded_write_keeps_the_last_checkpoint_and_the_resume_matches(
    tmp_path: Path, refreeze_reference: Run, strategy: str, extra: tuple[str, ...]
) -> None:
    """Rank 0 is SIGKILLed after the shards of epoch 4's last.ckpt are written, before its metadata; the resume
    starts from epoch 3's (phase 1, two optimizer groups), thaws phase 2 right after validation, restores phase
    0's best checkpoint, freezes layers.1 again (a whole FSDP1 unit), and ends where the uninterrupted reference
    ends."""
    killed = launch(tmp_path, "--strategy", strategy, *extra, *REFREEZE, "--kill-writing-last-at", "4")
    assert killed.returncode != 0
    resume_dir = tmp_path / "resume"
    assert sorted(p.name for p in resume_dir.iterdir()) == [".last.ckpt.fts-staging", "last.ckpt", "latest.ckpt"]
    assert not (resume_dir / ".last.ckpt.fts-staging" / "meta.pt").exists()  # the interrupted write
    assert torch.load(resume_dir / "last.ckpt" / "meta.pt", weights_only=False)["epoch"] == 3  # the previous one

    resumed = launch(tmp_path, "--strategy", strategy, *extra, *REFREEZE, "--resume", "--faults", "--final-checkpoint")
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert_checkpoint_faults_caught(resumed)
    assert_export_equals_final_weights(resumed, tmp_path)  # FSDP1's DCP shards
    assert "resumed at phase 1 of 2" in resumed.output
    assert_matches(resumed, refreeze_reference.reference(), [2, 2])
    assert "layers.1.weight" not in resumed.rank(0)["records"][0]["trainable"]
    assert not (resume_dir / ".last.ckpt.fts-staging").exists()  # the next save cleared it
    assert_memory_as_planned(resumed, [2])  # FSDP1: flat units per rank; the re-frozen layer holds no state


REINIT = (*STALE, "--reinit")


@pytest.fixture(scope="module")
def reinit_reference(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return one_process_reference(tmp_path_factory, *REINIT)


@pytest.mark.parametrize(("strategy", "extra"), [("fsdp2", ()), ("fsdp1", ("--sharding", "SHARD_GRAD_OP"))])
def test_reinitialised_optimizer_and_schedulers_restore_across_and_resume_after(
    tmp_path: Path, reinit_reference: Run, strategy: str, extra: tuple[str, ...]
) -> None:
    """tests.modules.REINIT_SCHEDULE: phase 1 (epoch 3) builds a new SGD and a StepLR; phase 2 (epoch 4) restores
    phase 0's checkpoint, written by the first optimizer (its state loads into that kind; the phase then trains
    phase 1's kind, fresh), and builds a cosine schedule. Rank 0 is killed writing epoch 4's checkpoint; the resume
    from epoch 3's (after phase 1's re-initialisations) ends where one process ends."""
    killed = launch(tmp_path, "--strategy", strategy, *extra, *REINIT, "--kill-writing-last-at", "4")
    assert killed.returncode != 0
    assert "phase 2 trains with SGD (phase 1's `new_optimizer`): the weights of" in killed.output
    resume_dir = tmp_path / "resume"
    assert sorted(p.name for p in resume_dir.iterdir()) == [".last.ckpt.fts-staging", "last.ckpt", "latest.ckpt"]
    assert not (resume_dir / ".last.ckpt.fts-staging" / "meta.pt").exists()  # the interrupted write
    assert torch.load(resume_dir / "last.ckpt" / "meta.pt", weights_only=False)["epoch"] == 3  # the previous one
    resumed = launch(tmp_path, "--strategy", strategy, *extra, *REINIT, "--resume")
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert "resumed at phase 1 of 2" in resumed.output
    assert_matches(resumed, reinit_reference.reference(), [2, 2])
    assert resumed.rank(0)["lr_schedulers"] == reinit_reference.reference()["lr_schedulers"] == ["CosineAnnealingLR"]
    assert not (resume_dir / ".last.ckpt.fts-staging").exists()  # the next save cleared it


def test_hsdp_replica_check_catches_weights_that_differ_between_replicas(tmp_path: Path) -> None:
    run = launch(tmp_path, "--strategy", "hsdp", "--plant", "mismatch")
    assert run.returncode != 0
    assert "Replicas diverged at phase 1: rank 1 weights differ from rank 0's in ['layers.0.weight']" in run.output


def test_fsdp2_replica_check_catches_a_trainable_set_that_differs(tmp_path: Path) -> None:
    run = launch(tmp_path, "--strategy", "fsdp2", "--plant", "trainable")
    assert run.returncode != 0
    assert "Replicas diverged at phase 1: rank 1 trainable set differs from rank 0's: ['layers.0.weight']" in run.output


def test_fsdp2_a_phase_mixing_sharded_and_plain_parameters_is_refused_before_training(tmp_path: Path) -> None:
    run = launch(tmp_path, "--strategy", "fsdp2", "--plant", "mixed")
    assert run.returncode != 0
    assert "Phase 1 mixes sharded (DTensor) parameters and 1 plain one(s), e.g. ['layers.2.bias']" in run.output
    assert "failed at epoch 0, phase 0" in run.output


def test_fsdp1_units_that_span_phases_are_refused_before_training(tmp_path: Path) -> None:
    run = launch(tmp_path, "--strategy", "fsdp1", "--misaligned")
    assert run.returncode != 0
    assert "1 FSDP unit(s) hold parameters of more than one phase (or of one phase, frozen again" in run.output
    assert "at different phases): 'layers' (phase 0: ['layers.3.weight'" in run.output
    assert "Align the auto-wrap policy with the phases" in run.output
    assert "failed at epoch 0, phase 0" in run.output
