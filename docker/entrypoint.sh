#!/usr/bin/env bash
# Container entrypoint: maps the cluster's environment (SLURM_*, or MASTER_ADDR/MASTER_PORT/WORLD_SIZE/RANK/
# NNODES/NODE_RANK from torchrun or a Kubernetes PyTorchJob) to a torchrun command running `fts-dist ARGS`,
# prints it, and runs it. The mapping is fts_dist.runtime.launcher.torchrun_args, tested outside Docker.
set -euo pipefail
if [[ $# -eq 0 ]]; then
  echo "usage: fts-dist-entrypoint fit --config cfg.yaml | demo [...]" >&2
  exit 2
fi
exec python -m fts_dist.runtime.launcher -- "$@"
