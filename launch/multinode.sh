#!/usr/bin/env bash
# One node of a multi-node job; run it on every node with its own --node-rank:
#   launch/multinode.sh --nnodes 4 --node-rank 0 --rdzv-endpoint node0:29500 [--nproc 8] [--max-restarts R] \
#       -- fit --config cfg.yaml
# Each flag can come from the environment instead: NNODES, NODE_RANK, MASTER_ADDR + MASTER_PORT,
# NPROC_PER_NODE, FTS_MAX_RESTARTS (SLURM's variables are read too; see launch/slurm.sbatch).
set -euo pipefail
usage() {
  echo "usage: $0 --nnodes N --node-rank R --rdzv-endpoint HOST:PORT [--nproc P] [--max-restarts K] -- ARGS" >&2
  exit 2
}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --nnodes) [[ $# -ge 2 ]] || usage; export NNODES="$2"; shift 2 ;;
    --node-rank) [[ $# -ge 2 ]] || usage; export NODE_RANK="$2"; shift 2 ;;
    --rdzv-endpoint) [[ $# -ge 2 ]] || usage; export MASTER_ADDR="${2%:*}" MASTER_PORT="${2##*:}"; shift 2 ;;
    --nproc) [[ $# -ge 2 ]] || usage; export NPROC_PER_NODE="$2"; shift 2 ;;
    --max-restarts) [[ $# -ge 2 ]] || usage; export FTS_MAX_RESTARTS="$2"; shift 2 ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) echo "$0: unknown option $1" >&2; usage ;;
  esac
done
[[ $# -gt 0 ]] || { echo "$0: nothing to run after --" >&2; usage; }
if [[ -z "${SLURM_JOB_ID:-}" ]]; then
  missing=()
  [[ -n "${NNODES:-}" ]] || missing+=("--nnodes (or NNODES)")
  [[ -n "${NODE_RANK:-}" ]] || missing+=("--node-rank (or NODE_RANK)")
  [[ -n "${MASTER_ADDR:-}" ]] || missing+=("--rdzv-endpoint (or MASTER_ADDR)")
  if [[ ${#missing[@]} -gt 0 ]]; then
    echo "$0: missing: ${missing[*]}" >&2
    exit 2
  fi
fi
exec "${PYTHON:-python3}" -m fts_dist.runtime.launcher -- "$@"
