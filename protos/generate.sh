#!/usr/bin/env bash
# Generates the Python modules for every .proto under protos/ into OUTDIR:
#   OUTDIR/mlops/events/v1/*_pb2.py(i), OUTDIR/mlops/registry/v1/..., OUTDIR/inference/...
# with *_pb2_grpc.py for the files that declare a service.
#
# Usage: protos/generate.sh OUTDIR        (make protos runs it with OUTDIR=libs)
#        PYTHON=/path/to/python protos/generate.sh OUTDIR
#
# The output depends only on the .proto files and the grpcio-tools version, so
# generating into a temporary directory and comparing with libs/ tells whether
# the checked-in code is stale. Generated files are never edited by hand.
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$1"
out="$(cd "$1" && pwd)"
cd "$repo_root"
python="${PYTHON:-.venv/bin/python}"

# Top-level packages whose __init__.py is written by hand and must not be
# created or touched here.
handwritten_packages=(mlops)

# Every .proto, relative to protos/, in a fixed order so that runs are identical.
mapfile -t protos < <(cd protos && find . -name '*.proto' -type f | sed 's|^\./||' | LC_ALL=C sort)
if [[ ${#protos[@]} -eq 0 ]]; then
  echo "no .proto files under protos/" >&2
  exit 1
fi
mapfile -t service_protos < <(cd protos && grep -lE '^[[:space:]]*service[[:space:]]+[A-Za-z_]' "${protos[@]}" | LC_ALL=C sort || true)
mapfile -t package_dirs < <(printf '%s\n' "${protos[@]}" | xargs -n1 dirname | LC_ALL=C sort -u)

# Remove what an earlier run generated, so that a deleted or renamed .proto
# leaves no stale module behind.
for dir in "${package_dirs[@]}"; do
  rm -f "$out/$dir"/*_pb2.py "$out/$dir"/*_pb2.pyi "$out/$dir"/*_pb2_grpc.py
done

"$python" -m grpc_tools.protoc -I protos \
  --python_out="$out" --pyi_out="$out" \
  "${protos[@]}"

if [[ ${#service_protos[@]} -gt 0 ]]; then
  "$python" -m grpc_tools.protoc -I protos \
    --grpc_python_out="$out" \
    "${service_protos[@]}"
fi

# Make every generated directory, and each of its parents, a regular package,
# except the hand-written top-level ones.
is_handwritten() {
  local pkg
  for pkg in "${handwritten_packages[@]}"; do
    [[ "$1" == "$pkg" ]] && return 0
  done
  return 1
}
for dir in "${package_dirs[@]}"; do
  while [[ "$dir" != "." ]]; do
    if ! is_handwritten "$dir" && [[ ! -e "$out/$dir/__init__.py" ]]; then
      : > "$out/$dir/__init__.py"
    fi
    dir="$(dirname "$dir")"
  done
done

echo "generated ${#protos[@]} proto files into $out"
