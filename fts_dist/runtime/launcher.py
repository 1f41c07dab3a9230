"""Map a cluster's environment to a torchrun command (SLURM, Kubernetes PyTorchJob, plain torchrun variables).

``python -m fts_dist.runtime.launcher [--dry-run] -- fit --config cfg.yaml`` prints the torchrun command it builds and
runs it (with ``--dry-run`` or ``FTS_LAUNCH_DRY_RUN=1`` it only prints it); the Docker images' entrypoint and the
``launch/`` scripts use it. :func:`torchrun_args` is pure: give it an environment mapping, get torchrun's
arguments or a :class:`LaunchConfigError` naming what is missing.

Precedence, per setting: ``FTS_*`` overrides, then torchrun-style ``NNODES``/``NODE_RANK``/``NPROC_PER_NODE``, then
SLURM's variables, then a PyTorchJob's ``WORLD_SIZE``/``RANK`` (one pod per node: they count nodes there).
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Mapping, Sequence

from fts_dist.runtime.preemption import SIGNALS_ENV

_DEFAULT_PORT = "29500"


class LaunchConfigError(ValueError):
    """A launch setting is missing or inconsistent; the message says which variable or flag to set."""


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM nodelist: ``gpu[03-05,09],cpu1`` -> ``gpu03``."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise LaunchConfigError(f"Cannot read SLURM_JOB_NODELIST {nodelist!r}; set MASTER_ADDR.")
    prefix, ranges = match.groups()
    if not ranges:
        return prefix
    return prefix + re.split(r"[-,]", ranges)[0]


def _first(env: Mapping[str, str], *names: str) -> str | None:
    return next((env[name] for name in names if env.get(name)), None)


def torchrun_args(env: Mapping[str, str], max_restarts: int | None = None, gpus: int = 0) -> list[str]:
    """torchrun's arguments for this node of the job that ``env`` describes (``gpus``: GPUs on this node)."""
    slurm = "SLURM_JOB_ID" in env
    job = "PET_NNODES" in env or ("MASTER_ADDR" in env and "RANK" in env and "WORLD_SIZE" in env and not slurm)
    nnodes = _first(env, "FTS_NNODES", "NNODES", "PET_NNODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES")
    node_rank = _first(env, "FTS_NODE_RANK", "NODE_RANK", "PET_NODE_RANK", "SLURM_NODEID")
    if job and nnodes is None:  # PyTorchJob without torchrun variables: WORLD_SIZE pods, this is pod RANK
        nnodes, node_rank = env["WORLD_SIZE"], env["RANK"]
    nnodes = nnodes or "1"
    nproc = _first(env, "FTS_NPROC_PER_NODE", "NPROC_PER_NODE", "PET_NPROC_PER_NODE", "SLURM_GPUS_ON_NODE") or str(
        max(gpus, 1)
    )
    restarts = str(max_restarts if max_restarts is not None else env.get("FTS_MAX_RESTARTS", "0"))
    args = ["--nproc_per_node", nproc, "--max-restarts", restarts]
    if nnodes == "1" and not env.get("MASTER_ADDR"):
        return ["--standalone", *args]
    if node_rank is None:
        raise LaunchConfigError(f"{nnodes} nodes but no node rank: set NODE_RANK (0 on the first node).")
    address = env.get("MASTER_ADDR") or (first_slurm_host(env["SLURM_JOB_NODELIST"]) if slurm else None)
    if not address:
        raise LaunchConfigError(f"{nnodes} nodes but no rendezvous host: set MASTER_ADDR to node 0's address.")
    port = env.get("MASTER_PORT") or _DEFAULT_PORT
    job_id = _first(env, "FTS_RUN_ID", "SLURM_JOB_ID", "PET_RDZV_ID", "JOB_ID") or "fts_dist"
    return [
        "--nnodes", nnodes, "--node_rank", node_rank, *args,
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{address}:{port}", "--rdzv-id", job_id,
    ]  # fmt: skip


def command(
    env: Mapping[str, str], user_args: Sequence[str], max_restarts: int | None = None, gpus: int = 0
) -> list[str]:
    """The full command: torchrun running the ``fts-dist`` CLI with ``user_args`` (e.g. ``fit --config x``).
    With restarts, ``fit`` resumes from the last checkpoint (``--ckpt_path=last``) unless told otherwise."""
    if not user_args:
        raise LaunchConfigError("Nothing to run: give fts-dist arguments, e.g. `fit --config cfg.yaml`.")
    launch = torchrun_args(env, max_restarts, gpus)
    user_args = list(user_args)
    restarts = int(launch[launch.index("--max-restarts") + 1])
    if restarts > 0 and user_args[0] == "fit" and not any(a.startswith("--ckpt_path") for a in user_args):
        user_args.append("--ckpt_path=last")
    return [sys.executable, "-m", "torch.distributed.run", *launch, "-m", "fts_dist.cli", *user_args]


_AGENT_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")  # what torchrun's agent forwards to its workers by default


def agent_environment(env: Mapping[str, str]) -> dict[str, str]:
    """What torchrun's agent must see so that the signals fts_dist stops on (``$FTS_DIST_STOP_SIGNALS``) reach the
    workers: the agent forwards only ``$TORCHELASTIC_SIGNALS_TO_HANDLE``, and any other signal (SIGUSR1, which SLURM's
    ``--signal=USR1@90`` sends) would kill the agent instead. The agent SIGKILLs its workers 30 s after forwarding
    (torch 2.13), so the coordinated save must take less than that."""
    stop = [name.strip() for name in env.get(SIGNALS_ENV, "").split(",") if name.strip()]
    if not stop or "TORCHELASTIC_SIGNALS_TO_HANDLE" in env:
        return {}
    return {"TORCHELASTIC_SIGNALS_TO_HANDLE": ",".join(dict.fromkeys([*_AGENT_SIGNALS, *stop]))}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    dry_run = "--dry-run" in argv[: argv.index("--") if "--" in argv else len(argv)]
    dry_run = dry_run or os.environ.get("FTS_LAUNCH_DRY_RUN") == "1"
    user_args = argv[argv.index("--") + 1 :] if "--" in argv else [a for a in argv if a != "--dry-run"]
    try:
        import torch

        full = command(os.environ, user_args, gpus=torch.cuda.device_count())
    except LaunchConfigError as err:
        print(f"fts-dist launcher: {err}", file=sys.stderr)
        return 2
    agent = agent_environment(os.environ)
    print("+ " + shlex.join([*(f"{k}={v}" for k, v in agent.items()), *full]), flush=True)
    if dry_run:
        return 0
    os.environ.update(agent)
    os.execv(full[0], full)
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
