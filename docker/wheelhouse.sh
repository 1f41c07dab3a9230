#!/usr/bin/env bash
# Fill a wheelhouse for an offline image build (air-gapped clusters, CI):
#   docker/wheelhouse.sh cpu|cuda [DEST]      (DEST: docker/wheelhouse, which the Dockerfiles install from)
# Run it where pip reaches an index, on Linux x86_64 with Python 3.11 (the images' platform: pip resolves for the
# machine it runs on); then build with no network at all. torch for the CPU image comes from FTS_TORCH_INDEX_URL
# (default: PyTorch's CPU index; pip's own configuration also applies); the CUDA image takes PyPI's torch, which
# carries its CUDA runtime (several GB of wheels).
set -euo pipefail
flavour=${1:?usage: docker/wheelhouse.sh cpu|cuda [DEST]}
root=$(cd "$(dirname "$0")/.." && pwd)
dest=$(mkdir -p "${2:-$root/docker/wheelhouse}" && cd "${2:-$root/docker/wheelhouse}" && pwd)
# torch===2.13.0 (string equality) is PyPI's CUDA build, never a local +cpu one that pip would otherwise prefer
case $flavour in
  cpu) extras=demo torch=torch==2.13.0
    torch_index=(--index-url "${FTS_TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}") ;;
  cuda) extras=demo,deepspeed torch=torch===2.13.0 torch_index=() ;;
  *) echo "docker/wheelhouse.sh: cpu or cuda, not '$flavour'" >&2; exit 2 ;;
esac
python3 - <<'PY' || echo "docker/wheelhouse.sh: warning: the images run CPython 3.11 on Linux x86_64; these wheels are for this machine" >&2
import platform, sys
sys.exit(sys.version_info[:2] != (3, 11) or platform.machine() != "x86_64" or sys.platform != "linux")
PY
cd "$root"
pip download --quiet --no-deps --dest "$dest" "${torch_index[@]}" "$torch"
# torch's and the project's dependencies (its own source goes into the image from the build context), its build
# backend; the torch just fetched is a candidate (a +cpu build sorts above PyPI's)
pip download --quiet --dest "$dest" --find-links "$dest" --constraint docker/constraints.txt \
  "setuptools>=68" "$torch" ".[$extras]"
rm -f "$dest"/fts_dist-* "$dest"/fts-dist-*
find "$dest" -name '*.whl' | wc -l | xargs printf "docker/wheelhouse.sh: %s wheels in $dest (%s)\n" "$(du -sh "$dest" | cut -f1)"
