#!/usr/bin/env bash
# Writes the registry's protocol as a serialized FileDescriptorSet into the package:
#   src/mlops_client/registry_descriptors.binpb
# from protos/mlops/registry/v1/registry.proto and every file it imports (the well-known types too).
#
# The client builds its message classes from this file in a private descriptor pool, so that it needs
# no generated modules and can share a process with the platform's own (which register the same file
# names in protobuf's default pool). A unit test fails when the shipped file is stale against protos/.
#
# Usage: libs/mlops-client/generate.sh [OUTFILE]
#        PYTHON=/path/to/python libs/mlops-client/generate.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$here/../.." && pwd)"
out="${1:-$here/src/mlops_client/registry_descriptors.binpb}"
python="${PYTHON:-$repo_root/.venv/bin/python}"

cd "$repo_root"
"$python" -m grpc_tools.protoc -I protos \
  --include_imports \
  --descriptor_set_out="$out" \
  mlops/registry/v1/registry.proto
echo "wrote $out"
