"""Launching the 2-rank worker with torchrun or Lightning's own launcher, bounded by a timeout."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

WORKER = Path(__file__).parent / "workers" / "fit_run.py"
TIMEOUT_S = 180


@dataclass
class Run:
    returncode: int
    output: str
    out_dir: Path

    def rank(self, rank: int) -> dict[str, Any]:
        return torch.load(self.out_dir / f"rank{rank}.pt", weights_only=False)

    def reference(self) -> dict[str, Any]:
        return torch.load(self.out_dir / "rank0-reference.pt", weights_only=False)


def launch(
    out_dir: Path,
    *args: str,
    launcher: str = "torchrun",
    reference: bool = False,
    world: int = 2,
    gpu: bool = False,
    timeout_s: float = TIMEOUT_S,
) -> Run:
    """Run the worker (``world`` ranks, or 1 for the reference) and return its exit status, output and results;
    ``gpu`` runs it on CUDA devices."""
    # no port is picked here: torchrun's agent binds port 0 (--standalone), Lightning's launcher picks its own
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    for leaked in ("MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "RANK", "WORLD_SIZE"):
        env.pop(leaked, None)  # set by an in-process Lightning run: the job would think it was launched already
    env |= {"FTS_TEST_WORLD": str(world), "FTS_TEST_ACCELERATOR": "gpu" if gpu else "cpu"}
    worker_args = [str(WORKER), "--out", str(out_dir), "--launcher", launcher, *args]
    if reference:
        command = [sys.executable, *worker_args, "--reference"]
    elif launcher == "torchrun":
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(world),
            *worker_args,
        ]
    else:
        command = [sys.executable, *worker_args]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s)
    return Run(proc.returncode, proc.stdout + proc.stderr, out_dir)


def assert_memory_as_planned(
    run: Run, depths: list[int], keys: tuple[str, ...] = ("params", "grads", "optimizer_state"), rel: float = 0.05
) -> None:
    """The plan ``fts_dist.memory`` made before launch (the most loaded rank's bytes) against the most each rank held
    after a phase's last optimizer step (``keys``: model states within ``rel``; ``host``: ZeRO offload's masters and
    state), and against what its training step saved for backward (activations, traced: within 15%)."""
    ranks = [run.rank(r) for r in (0, 1)]
    for depth in depths:
        planned = ranks[0]["plan"][depth]
        for key in keys:
            measured = max(_held(rank["memory"][depth], key) for rank in ranks)
            assert measured == pytest.approx(planned[key], rel=rel), f"phase {depth} {key}: {measured} vs {planned}"
        measured = max(rank["memory"][depth]["activations"] for rank in ranks)
        assert measured == pytest.approx(planned["activations"], rel=0.15), f"phase {depth} activations: {measured}"
    activations = [ranks[0]["memory"][depth]["activations"] for depth in depths]
    assert activations == sorted(activations) and len(set(activations)) == len(depths)  # deeper phases save more


def _held(memory: dict[str, int], key: str) -> int:
    return memory["masters"] + memory["optimizer_state"] if key == "host" else memory[key]


def assert_checkpoint_faults_caught(run: Run, owner: int = 1) -> None:
    """After training, rank 1 damaged its own part of the best checkpoint three ways (``fit_run.py --faults``):
    every rank raised ``CheckpointRestoreError`` for each before any load, naming the rank that found it and the
    file; once undone, the checkpoint passed. ``owner``: the rank that reads a file's bytes (rank 0 for a
    single-file checkpoint)."""
    for rank in (0, 1):
        faults = run.rank(rank)["faults"]
        files = faults["files"].split(",")
        assert files and faults["undone"] is None, faults
        for kind in ("truncated", "missing", "foreign"):
            message = faults[kind]
            assert message is not None and message.startswith("Cannot restore the best checkpoint"), (kind, faults)
            finder = owner if kind == "foreign" else 0  # every rank sees a size; the owner reads the bytes
            assert f"rank {finder}: " in message and any(name in message for name in files), (kind, message)
            assert ("missing" in message) == (kind == "missing")


def assert_export_equals_final_weights(run: Run, tmp_path: Path) -> None:
    """``fts-dist export`` of the checkpoint saved after fit (``fit_run.py --final-checkpoint``), in shards of
    600 bytes, holds every name the checkpoint recorded and the final weights bit for bit."""
    from safetensors.torch import load_file

    from fts_dist.export import export_checkpoint

    out = tmp_path / "exported"
    done = export_checkpoint(run.out_dir / "final.ckpt", out, max_shard_size=600)
    assert not done.unchecked and len(done.files) > 2  # names checked; several shards and their index
    exported: dict[str, torch.Tensor] = {}
    for shard in sorted(out.glob("*.safetensors")):
        exported |= load_file(shard)
    final = run.rank(0)["final"]
    assert exported.keys() == final.keys()
    for name, value in final.items():
        assert torch.equal(exported[name], value.cpu()), name
    assert_other_tools_read(run.out_dir / "final.ckpt", final, tmp_path)


def assert_other_tools_read(checkpoint: Path, final: dict[str, torch.Tensor], tmp_path: Path) -> None:
    """The tools users already have keep reading fts_dist's checkpoints: Lightning Fabric's consolidation (an FSDP2
    directory) and DeepSpeed's ``zero_to_fp32`` (a DeepSpeed one)."""
    if (checkpoint / "latest").is_file():
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        merged = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint))
        assert all(torch.equal(merged[name], value.cpu()) for name, value in final.items() if name in merged)
    elif (checkpoint / ".metadata").is_file() and any(checkpoint.glob("meta.pt")):
        whole = tmp_path / "fabric-consolidated.ckpt"
        tool = [sys.executable, "-m", "lightning.fabric.utilities.consolidate_checkpoint", str(checkpoint)]
        done = subprocess.run([*tool, "--output_file", str(whole)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        consolidated = torch.load(whole, weights_only=False)
        weights = consolidated.get("state_dict", consolidated.get("model"))
        assert all(torch.equal(weights[name], value.cpu()) for name, value in final.items())
