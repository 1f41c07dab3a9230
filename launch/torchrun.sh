#!/usr/bin/env bash
# One node, N GPUs (or N CPU processes), optionally elastic:
#   launch/torchrun.sh [--nproc N] [--max-restarts R] -- fit --config cfg.yaml [--trainer.max_epochs=...]
# N defaults to the node's GPU count (1 without GPUs). With --max-restarts, a failed worker group restarts and
# `fit` resumes from the last checkpoint. Prints the command it runs.
set -euo pipefail
usage() { echo "usage: $0 [--nproc N] [--max-restarts R] -- fit --config cfg.yaml [overrides...]" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --nproc) [[ $# -ge 2 ]] || usage; export NPROC_PER_NODE="$2"; shift 2 ;;
    --max-restarts) [[ $# -ge 2 ]] || usage; export FTS_MAX_RESTARTS="$2"; shift 2 ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) echo "$0: unknown option $1" >&2; usage ;;
  esac
done
[[ $# -gt 0 ]] || { echo "$0: nothing to run after --" >&2; usage; }
unset NNODES NODE_RANK MASTER_ADDR  # a single node: torchrun --standalone picks a free rendezvous port
exec "${PYTHON:-python3}" -m fts_dist.runtime.launcher -- "$@"
