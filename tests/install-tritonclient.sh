#!/usr/bin/env bash
# Installs tritonclient[grpc,http], the unmodified Triton clients (gRPC and REST) the inference tests
# call the server with, into a virtualenv of its own under
# ${MLOPS_CACHE:-$HOME/.cache/mlops}/tritonclient-venv: it pins protobuf below 7, which the project's
# .venv cannot share. Idempotent; `make setup` runs it.
set -euo pipefail

TRITONCLIENT_VERSION="${TRITONCLIENT_VERSION:-2.73.0}"
CACHE="${MLOPS_CACHE:-$HOME/.cache/mlops}"
PYTHON="${PYTHON_SYSTEM:-python3}"
log() { printf '[tritonclient] %s\n' "$*" >&2; }

TRITON_VENV="$CACHE/tritonclient-venv"
TRITONCLIENT_EXTRAS="grpc,http"
stamp="$TRITON_VENV/.installed-tritonclient-$TRITONCLIENT_VERSION-$TRITONCLIENT_EXTRAS"
if [ -x "$TRITON_VENV/bin/python" ] && [ -f "$stamp" ]; then
  log "tritonclient[$TRITONCLIENT_EXTRAS] $TRITONCLIENT_VERSION present in $TRITON_VENV"
else
  log "installing tritonclient[$TRITONCLIENT_EXTRAS] $TRITONCLIENT_VERSION into $TRITON_VENV"
  [ -x "$TRITON_VENV/bin/python" ] || "$PYTHON" -m venv "$TRITON_VENV"
  "$TRITON_VENV/bin/python" -m pip install -q --upgrade pip
  "$TRITON_VENV/bin/python" -m pip install -q "tritonclient[$TRITONCLIENT_EXTRAS]==$TRITONCLIENT_VERSION"
  rm -f "$TRITON_VENV"/.installed-tritonclient-*
  touch "$stamp"
fi

