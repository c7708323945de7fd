#!/usr/bin/env bash
# Installs what the registry benchmark drives and compares against, idempotently, cached under
# ${MLOPS_CACHE:-$HOME/.cache/mlops}:
#   - ghz (gRPC load generator) into $MLOPS_CACHE/bin, built with `go install` at a pinned version
#   - wrk (HTTP load generator) from Debian's packages when missing
#   - MLflow's tracking server in its own virtualenv, $MLOPS_CACHE/bench-venv, so that MLflow's
#     dependencies never touch the project's .venv (which runs protobuf 7)
# Both load generators are native: on a small machine a Python client would starve the server it
# measures.
set -euo pipefail

GHZ_VERSION="${GHZ_VERSION:-v0.121.0}"
MLFLOW_VERSION="${MLFLOW_VERSION:-3.17.2}"
PSYCOPG2_VERSION="${PSYCOPG2_VERSION:-2.9.13}"

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

log "ready: $BIN/ghz ($GHZ_VERSION), $(command -v wrk), $VENV/bin/mlflow ($MLFLOW_VERSION)"
