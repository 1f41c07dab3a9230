#!/usr/bin/env bash
# Inside an image build: install torch and fts-dist[EXTRAS] into the active environment.
#   docker/install.sh WHEELHOUSE EXTRAS [pip options for torch, e.g. --index-url URL]
# With wheels in WHEELHOUSE, from them alone (--no-index: a missing wheel fails the build, it is never fetched);
# otherwise from the network, torch with the given options.
set -euo pipefail
wheelhouse=$1 extras=$2
shift 2
pins=(--constraint docker/constraints.txt)
if compgen -G "$wheelhouse/*.whl" > /dev/null; then
  echo "fts-dist image: installing offline from the wheelhouse ($(find "$wheelhouse" -name '*.whl' | wc -l) wheels)"
  pip install --no-index --find-links "$wheelhouse" "${pins[@]}" torch==2.13.0 ".[$extras]"
else
  echo "fts-dist image: no wheelhouse; installing from the network"
  pip install "$@" torch==2.13.0
  pip install "${pins[@]}" ".[$extras]"
fi
