#!/usr/bin/env bash
# Build an image from scratch, offline, and run inside it what a CPU machine can:
#   docker/test-image.sh [--cuda] [--keep]
# 1. a local base image: Debian bookworm (Python 3.11) from Debian's packages with debootstrap, imported into
#    buildah (no registry needed); cached as a tarball;
# 2. a wheelhouse (docker/wheelhouse.sh), cached;
# 3. the image, built by buildah (chroot isolation, no daemon) with BASE set to that base and no network at all;
# 4. inside it: `fts-dist --version`, the entrypoint's dry runs under a SLURM-like and a PyTorchJob-like
#    environment, and (CPU image) a 2-phase `fts-dist fit` on 2 processes.
# Needs root, buildah and debootstrap (installed with apt-get when missing). Exits 77 when this machine cannot
# build images, saying why. The cache (base tarball, wheelhouse) is FTS_DOCKER_CACHE, default ~/.cache/fts-dist/docker.
set -euo pipefail
flavour=cpu keep=0
for arg in "$@"; do
  case $arg in
    --cuda) flavour=cuda ;;
    --keep) keep=1 ;;
    *) echo "usage: docker/test-image.sh [--cuda] [--keep]" >&2; exit 2 ;;
  esac
done
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${FTS_DOCKER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fts-dist/docker}
export STORAGE_DRIVER=${STORAGE_DRIVER:-vfs} BUILDAH_ISOLATION=chroot  # no overlay or namespaces needed
base=localhost/fts-dist-base:bookworm image=localhost/fts-dist:$flavour-test
skip() { echo "docker/test-image.sh: SKIPPED: $*" >&2; exit 77; }
step() { echo "== $* ($(date +%T))"; }

[[ $(id -u) == 0 ]] || skip "needs root (buildah with chroot isolation, debootstrap)"
if ! command -v buildah > /dev/null || ! command -v debootstrap > /dev/null; then
  command -v apt-get > /dev/null || skip "buildah or debootstrap missing, and no apt-get to install them"
  step "installing buildah and debootstrap"
  { apt-get install -y -q buildah debootstrap || { apt-get update -q && apt-get install -y -q buildah debootstrap; }; } \
    > /dev/null || skip "apt-get could not install buildah and debootstrap"
fi
mkdir -p "$cache"

if ! buildah inspect --type image "$base" > /dev/null 2>&1; then
  if [[ ! -s $cache/base-bookworm.tar ]]; then
    step "debootstrap: Debian bookworm, Python 3.11"
    rootfs=$(mktemp -d)
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" \
      "${FTS_DEBIAN_MIRROR:-http://deb.debian.org/debian}" > "$cache/debootstrap.log" 2>&1 \
      || { tail -5 "$cache/debootstrap.log" >&2; skip "debootstrap failed (no Debian mirror reachable?)"; }
    tar -C "$rootfs" -cf "$cache/base-bookworm.tar.part" . && mv "$cache/base-bookworm.tar.part" "$cache/base-bookworm.tar"
    rm -rf "$rootfs"
  fi
  step "importing the base image $base"
  container=$(buildah from scratch)
  buildah add --quiet "$container" "$cache/base-bookworm.tar" / > /dev/null
  buildah config --env LANG=C.UTF-8 --cmd /bin/bash "$container"
  buildah commit --quiet "$container" "$base" > /dev/null
  buildah rm "$container" > /dev/null
fi

step "wheelhouse ($flavour)"
"$root/docker/wheelhouse.sh" "$flavour" "$cache/wheelhouse-$flavour" 2>&1 | grep -v "WARNING: \(Location\|Retrying\)" || true

step "build context: the working tree's image files, the wheelhouse"
context=$(mktemp -d)
trap 'rm -rf "$context"; [[ -n ${container:-} ]] && buildah rm "$container" > /dev/null 2>&1; true' EXIT
cp -a "$root"/{pyproject.toml,README.md,LICENSE,fts_dist,examples,launch,docker} "$context"/
rm -rf "$context"/docker/wheelhouse && cp -al "$cache/wheelhouse-$flavour" "$context/docker/wheelhouse" 2>/dev/null \
  || cp -a "$cache/wheelhouse-$flavour" "$context/docker/wheelhouse"
find "$context" -name __pycache__ -prune -exec rm -rf {} +

step "building $image offline (no network)"
started=$SECONDS
buildah bud --network none --build-arg "BASE=$base" -f "docker/Dockerfile.$flavour" -t "$image" "$context" \
  | { grep -v "^\(Requirement already\|Collecting\|  Downloading\|Processing\|Using cached\)" || true; }
echo "image $image: $(buildah images --format '{{.Size}}' "$image") built in $((SECONDS - started)) s"

container=$(buildah from --quiet "$image")
run() { buildah run --hostname localhost "$@"; }  # torchrun's rendezvous resolves the host name
step "inside: fts-dist --version"
run "$container" -- fts-dist --version
step "inside: the entrypoint under SLURM (dry run)"
run --env SLURM_JOB_ID=4242 --env SLURM_NNODES=2 --env SLURM_NODEID=1 --env "SLURM_JOB_NODELIST=gpu[07-08]" \
  --env SLURM_GPUS_ON_NODE=4 --env FTS_LAUNCH_DRY_RUN=1 "$container" -- fts-dist-entrypoint fit --config cfg.yaml
step "inside: the entrypoint under a PyTorchJob (dry run)"
run --env MASTER_ADDR=job-master-0 --env MASTER_PORT=23456 --env WORLD_SIZE=3 --env RANK=2 \
  --env PET_NPROC_PER_NODE=8 --env FTS_LAUNCH_DRY_RUN=1 "$container" -- fts-dist-entrypoint fit --config cfg.yaml
step "inside: the packaged example schedule, from the working directory"
run "$container" -- fts-dist schedule validate examples/toy_schedule.yaml --model fts_dist.examples.toy:ToyClassifier
if [[ $flavour == cpu ]]; then
  step "inside: a 2-phase fts-dist fit on 2 processes"
  work=$(mktemp -d)
  cat > "$work/schedule.yaml" <<'YAML'
0: {params: [head.weight, head.bias], max_transition_epoch: 1}
1: {params: ["body.*"], lr: 1.0e-3}
YAML
  sed -e 's#ft_schedule: examples/toy_schedule.yaml#ft_schedule: /tmp/fts-test/schedule.yaml#' \
      -e 's#default_root_dir: .*#default_root_dir: /tmp/fts-test/runs#' "$root/examples/toy_fit.yaml" > "$work/fit.yaml"
  buildah copy --quiet --chown 10001:10001 "$container" "$work" /tmp/fts-test > /dev/null
  rm -rf "$work"
  run --env NPROC_PER_NODE=2 "$container" -- fts-dist-entrypoint fit --config /tmp/fts-test/fit.yaml \
    --trainer.max_epochs=3 2>&1
fi
if [[ $keep == 0 ]]; then
  buildah rm "$container" > /dev/null && container=""
  buildah rmi "$image" > /dev/null
fi
echo "docker/test-image.sh: $flavour image built offline and ran"
