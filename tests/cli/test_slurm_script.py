"""launch/slurm.sbatch run as SLURM would run it on one node, with stand-ins for srun and scontrol on PATH and the
launcher in dry-run mode: the torchrun command it prints is the one each node would run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)

FAKE_SRUN = '#!/usr/bin/env bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n'  # one task: this node


def run_sbatch(tmp_path: Path, nodelist_first_host: str | None, **env: str) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN)
    if nodelist_first_host is not None:
        # a large job's host list, so that a reader which stops after the first line would cut scontrol off
        (bin_dir / "scontrol").write_text(
            f"#!/usr/bin/env bash\necho {nodelist_first_host}\nfor i in $(seq 5000); do echo gpu-$i; done\n"
        )
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    torchrun_style = ("NNODES", "NODE_RANK", "NPROC_PER_NODE", "RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK")
    environment = {  # only what SLURM sets: an in-process Lightning run leaves NODE_RANK and RANK behind
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "MASTER_", "FTS_")) and k not in torchrun_style
    }
    environment.update(
        PATH=f"{bin_dir}:{environment['PATH']}",
        PYTHON=sys.executable,
        FTS_LAUNCH_DRY_RUN="1",
        SLURM_JOB_ID="777",
        SLURM_NNODES="4",
        SLURM_NODEID="3",
        SLURM_GPUS_ON_NODE="8",
        SLURM_JOB_NODELIST="gpu[07-10]",
        **env,
    )
    return subprocess.run(
        ["bash", "launch/slurm.sbatch", "--trainer.max_epochs=3"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=100,
    )


def test_sbatch_launches_torchrun_on_the_node_with_a_rendezvous_on_node_0(tmp_path: Path) -> None:
    proc = run_sbatch(tmp_path, "gpu07-ib", CONFIG="cfg.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    printed = next(line for line in proc.stdout.splitlines() if line.startswith("+ "))
    for expected in (
        "--nnodes 4 --node_rank 3 --nproc_per_node 8 --max-restarts 2",
        "--rdzv-endpoint gpu07-ib:29500 --rdzv-id 777",  # scontrol's answer wins over parsing the nodelist
        "-m fts_dist.cli fit --config cfg.yaml --trainer.max_epochs=3 --ckpt_path=last",
        # torchrun's agent forwards SLURM's SIGUSR1 to the workers, which stop together (instead of dying with it)
        "TORCHELASTIC_SIGNALS_TO_HANDLE=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 ",
    ):
        assert expected in printed
    assert "#SBATCH --signal=USR1@90" in (ROOT / "launch" / "slurm.sbatch").read_text()


def test_sbatch_without_scontrol_takes_the_first_host_of_the_nodelist(tmp_path: Path) -> None:
    proc = run_sbatch(tmp_path, None, CONFIG="cfg.yaml", FTS_MAX_RESTARTS="0")
    assert proc.returncode == 0, proc.stderr
    assert "--rdzv-endpoint gpu07:29500" in proc.stdout
    assert "--ckpt_path=last" not in proc.stdout


def test_sbatch_without_a_config_stops_before_launching(tmp_path: Path) -> None:
    proc = run_sbatch(tmp_path, "gpu07")
    assert proc.returncode != 0
    assert "set CONFIG to the fit config" in proc.stderr
    assert "+ " not in proc.stdout
