#!/usr/bin/env bash
# Installs what the registry benchmark drives and compares against, idempotently, cached under
# ${MLOPS_CACHE:-$HOME/.cache/mlops}:
#   - ghz (gRPC load generator) into $MLOPS_CACHE/bin, built with `go install` at a pinned version
#   - wrk (HTTP load generator) from Debian's packages when missing
#   - MLflow's tracking server in its own virtualenv, $MLOPS_CACHE/bench-venv, so that MLflow's
#     dependencies never touch the project's .venv (which runs protobuf 7)
#   - MLServer with onnxruntime in its own virtualenv, $MLOPS_CACHE/mlserver-venv (inference benchmark)
#   - tritonclient[grpc] in its own virtualenv, $MLOPS_CACHE/tritonclient-venv (the inference tests'
#     off-the-shelf client: it pins protobuf < 7 and registers the same `inference` descriptors as ours)
#   - Evidently in its own virtualenv, $MLOPS_CACHE/evidently-venv (the drift benchmark's contender;
#     it needs pandas < 3)
# Both load generators are native: on a small machine a Python client would starve the server it
# measures.
set -euo pipefail

GHZ_VERSION="${GHZ_VERSION:-v0.121.0}"
MLFLOW_VERSION="${MLFLOW_VERSION:-3.17.2}"
PSYCOPG2_VERSION="${PSYCOPG2_VERSION:-2.9.13}"
MLSERVER_VERSION="${MLSERVER_VERSION:-1.7.1}"
TRITONCLIENT_VERSION="${TRITONCLIENT_VERSION:-2.73.0}"
EVIDENTLY_VERSION="${EVIDENTLY_VERSION:-0.7.23}"

CACHE="${MLOPS_CACHE:-$HOME/.cache/mlops}"
BIN="$CACHE/bin"
VENV="$CACHE/bench-venv"
PYTHON="${PYTHON:-python3}"

log() { printf '[bench-setup] %s\n' "$*" >&2; }
fail() { log "error: $*"; exit 1; }

mkdir -p "$BIN"

# ghz: the version is part of the stamp, so changing GHZ_VERSION rebuilds
if [ -x "$BIN/ghz" ] && [ "$(cat "$BIN/.ghz-version" 2>/dev/null)" = "$GHZ_VERSION" ]; then
  log "ghz $GHZ_VERSION present"
else
  command -v go >/dev/null || fail "go is needed to build ghz"
  log "building ghz $GHZ_VERSION (go install)"
  GOBIN="$BIN" go install "github.com/bojand/ghz/cmd/ghz@$GHZ_VERSION"
  echo "$GHZ_VERSION" >"$BIN/.ghz-version"
fi

# wrk
if command -v wrk >/dev/null; then
  log "wrk present: $(command -v wrk)"
else
  log "installing wrk from Debian's packages"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq wrk >/dev/null
  command -v wrk >/dev/null || fail "wrk did not install"
fi

# MLflow in its own virtualenv
stamp="$VENV/.installed-mlflow-$MLFLOW_VERSION-psycopg2-$PSYCOPG2_VERSION"
if [ -x "$VENV/bin/mlflow" ] && [ -f "$stamp" ]; then
  log "MLflow $MLFLOW_VERSION present in $VENV"
else
  log "installing MLflow $MLFLOW_VERSION into $VENV"
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q "mlflow==$MLFLOW_VERSION" "psycopg2-binary==$PSYCOPG2_VERSION"
  rm -f "$VENV"/.installed-mlflow-*
  touch "$stamp"
fi

# MLServer, with the onnxruntime its custom runtime (tests/bench/mlserver_onnx/) imports
MLSERVER_VENV="$CACHE/mlserver-venv"
stamp="$MLSERVER_VENV/.installed-mlserver-$MLSERVER_VERSION"
if [ -x "$MLSERVER_VENV/bin/mlserver" ] && [ -f "$stamp" ]; then
  log "MLServer $MLSERVER_VERSION present in $MLSERVER_VENV"
else
  log "installing MLServer $MLSERVER_VERSION into $MLSERVER_VENV"
  [ -x "$MLSERVER_VENV/bin/python" ] || "$PYTHON" -m venv "$MLSERVER_VENV"
  "$MLSERVER_VENV/bin/python" -m pip install -q --upgrade pip
  "$MLSERVER_VENV/bin/python" -m pip install -q "mlserver==$MLSERVER_VERSION" onnxruntime numpy
  rm -f "$MLSERVER_VENV"/.installed-mlserver-*
  touch "$stamp"
fi

# tritonclient[grpc,http] (the inference tests' client too, so `make setup` installs it as well)
bash "$(dirname "${BASH_SOURCE[0]}")/../install-tritonclient.sh"
TRITON_VENV="$CACHE/tritonclient-venv"

# Evidently, pinned, with the pandas it supports
EVIDENTLY_VENV="$CACHE/evidently-venv"
stamp="$EVIDENTLY_VENV/.installed-evidently-$EVIDENTLY_VERSION"
if [ -x "$EVIDENTLY_VENV/bin/python" ] && [ -f "$stamp" ]; then
  log "Evidently $EVIDENTLY_VERSION present in $EVIDENTLY_VENV"
else
  log "installing Evidently $EVIDENTLY_VERSION into $EVIDENTLY_VENV"
  [ -x "$EVIDENTLY_VENV/bin/python" ] || "$PYTHON" -m venv "$EVIDENTLY_VENV"
  "$EVIDENTLY_VENV/bin/python" -m pip install -q --upgrade pip
  "$EVIDENTLY_VENV/bin/python" -m pip install -q "evidently==$EVIDENTLY_VERSION" "pandas<3"
  rm -f "$EVIDENTLY_VENV"/.installed-evidently-*
  touch "$stamp"
fi

log "ready: $BIN/ghz ($GHZ_VERSION), $(command -v wrk), $VENV/bin/mlflow ($MLFLOW_VERSION), $MLSERVER_VENV/bin/mlserver ($MLSERVER_VERSION), $TRITON_VENV (tritonclient $TRITONCLIENT_VERSION), $EVIDENTLY_VENV (Evidently $EVIDENTLY_VERSION)"
