#!/usr/bin/env bash
# The platform's services as background processes beside the local stack.
#
# Usage: infra/local/services.sh up|down|restart|status [service ...] | logs service
#   up       start every (named) service that is not running; return when each answers gRPC health SERVING
#            (and inference its REST health on port 8000)
#   down     SIGTERM (graceful: finish in-flight work, commit offsets), SIGKILL after a deadline
#   restart  down, then up
#   status   one line per service (its pid, restarts, why it last exited); exit 0 only when all are ready
#
# Each service runs under infra/local/supervise.py, which restarts it with a doubling back-off when it
# exits unasked (as Kubernetes restarts a container), and records the service's pid, its restart count
# and its last exit reason in <stack>/run/<name>.state. <name>.pid is the supervisor's.
#
# Services read the addresses `stack.sh up` writes to <stack>/env, but not its Kafka identity (the
# operator's, admin): each logs in to Kafka as itself (MLOPS_KAFKA_SASL_USERNAME=<name>, its password
# from <stack>/pki/kafka-users.json), so that the broker's ACLs (libs/mlops/bus/acl.py) hold it to
# what the design gives it. Logs and pid files live in
# ${MLOPS_STACK_DIR:-<repo>/.stack}/{logs,run}. A service is started when its package has a
# __main__.py; its gRPC port comes from the table below (each overridable by its own variable).
set -Eeuo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
STACK="${MLOPS_STACK_DIR:-$REPO/.stack}"
PKI="$STACK/pki"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
READY_TIMEOUT="${MLOPS_SERVICES_TIMEOUT:-90}"
STOP_TIMEOUT="${MLOPS_SERVICES_STOP_TIMEOUT:-20}"

# name  gRPC port
SERVICES=(
  "registry ${MLOPS_REGISTRY_GRPC_PORT:-50051}"
  "trainer ${MLOPS_TRAINER_GRPC_PORT:-50054}"
  "evaluator ${MLOPS_EVALUATOR_GRPC_PORT:-50055}"
  "deployer ${MLOPS_DEPLOYER_GRPC_PORT:-50052}"
  "monitor ${MLOPS_MONITOR_GRPC_PORT:-50053}"
  "inference ${MLOPS_INFERENCE_GRPC_PORT:-8001}"
  "console ${MLOPS_CONSOLE_PORT:-8080}"
)

# name  HTTP port, for a service that has one beside gRPC: inference's Open Inference Protocol over
# REST (TLS, the same certificate and tokens as its gRPC port; health open)
http_port_of() {
  case "$1" in
    inference) echo "${MLOPS_INFERENCE_HTTP_PORT:-8000}" ;;
  esac
}

mkdir -p "$STACK/logs" "$STACK/run"
[ -f "$STACK/env" ] && { set -a; . "$STACK/env"; set +a; }

available() { [ -f "$REPO/services/$1/__main__.py" ]; }
pid_of() { [ -f "$STACK/run/$1.pid" ] && cat "$STACK/run/$1.pid" || true; }
alive() {
  local pid; pid="$(pid_of "$1")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -q "services.$1" "/proc/$pid/cmdline" 2>/dev/null
}
state_of() {   # the supervisor's record of a service: "pid restarts last-exit"
  [ -f "$STACK/run/$1.state" ] || { echo "- 0 -"; return; }
  "$PYTHON" - "$STACK/run/$1.state" <<'PY' 2>/dev/null || echo "- 0 -"
import json, sys, time
state = json.load(open(sys.argv[1]))
last = state.get("last_exit") or "-"
if state.get("last_exit_at"):
    last += time.strftime(" at %H:%M:%SZ", time.gmtime(state["last_exit_at"]))
print(state.get("pid") or "-", state.get("restarts", 0), last)
PY
}
healthy() {   # gRPC health SERVING on 127.0.0.1:$1 (TLS, presenting the operator's certificate)
  "$PYTHON" - "$1" "$PKI" "$STACK/clients" <<'PY' >/dev/null 2>&1
import sys, grpc
from pathlib import Path
from grpc_health.v1 import health_pb2, health_pb2_grpc
pki, clients = Path(sys.argv[2]), Path(sys.argv[3])
credentials = grpc.ssl_channel_credentials(
    (pki / "ca.pem").read_bytes(), (clients / "admin.key").read_bytes(), (clients / "admin.pem").read_bytes()
)
with grpc.secure_channel(f"127.0.0.1:{sys.argv[1]}", credentials) as channel:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
sys.exit(0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1)
PY
}
http_ready() {   # the service's HTTP API answers /v2/health/ready over TLS (true when it has none)
  local port; port="$(http_port_of "$1")"
  [ -n "$port" ] || return 0
  "$PYTHON" - "$port" "$PKI/ca.pem" <<'PY' >/dev/null 2>&1
import http.client, ssl, sys
context = ssl.create_default_context(cafile=sys.argv[2])
connection = http.client.HTTPSConnection("127.0.0.1", int(sys.argv[1]), context=context, timeout=1)
connection.request("GET", "/v2/health/ready")
sys.exit(0 if connection.getresponse().status == 200 else 1)
PY
}
addresses() {   # where a service listens: its port, and its HTTP port beside gRPC if it has one
  local http; http="$(http_port_of "$1")"
  printf '127.0.0.1:%s' "$2"
  [ -z "$http" ] || printf ' (REST https://127.0.0.1:%s)' "$http"
}

# The web console (services/console) serves HTTP and runs no gRPC server: it is ready when /readyz
# answers. It holds no gRPC credentials of its own; it calls the services' token ports with the token
# of the person signed in. `up` writes a viewer's token to clients/console-token for the sign-in link.
console_ready() {
  "$PYTHON" - "$1" <<'PY' >/dev/null 2>&1
import sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/readyz", timeout=1) as reply:
    sys.exit(0 if reply.status == 200 else 1)
PY
}
ready() { if [ "$1" = console ]; then console_ready "$2"; else healthy "$2" && http_ready "$1"; fi; }
console_security() {
  unset MLOPS_GRPC_CLIENT_TOKEN MLOPS_GRPC_CLIENT_CERT_FILE MLOPS_GRPC_CLIENT_KEY_FILE MLOPS_GRPC_TLS_CLIENT_CA
  export MLOPS_GRPC_CLIENT_CA_FILE="$PKI/ca.pem" MLOPS_CONSOLE_PORT="$1" \
    MLOPS_REGISTRY_ADDR="127.0.0.1:$((${MLOPS_REGISTRY_GRPC_PORT:-50051} + 10))" \
    MLOPS_DEPLOYER_ADDR="127.0.0.1:$((${MLOPS_DEPLOYER_GRPC_PORT:-50052} + 10))" \
    MLOPS_MONITOR_ADDR="127.0.0.1:$((${MLOPS_MONITOR_GRPC_PORT:-50053} + 10))" \
    MLOPS_CONSOLE_PROMETHEUS_URL="${MLOPS_CONSOLE_PROMETHEUS_URL:-http://127.0.0.1:${MLOPS_PROMETHEUS_PORT:-9090}}"
  # it reads no tables or buckets, and never the operator's Kafka identity from <stack>/env
  unset MLOPS_DATABASE_URL AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
  if [ -z "${MLOPS_CONSOLE_KAFKA:-}" ]; then
    unset MLOPS_KAFKA_SASL_USERNAME MLOPS_KAFKA_SASL_PASSWORD
    export MLOPS_CONSOLE_EVENTS=false
  fi
  if [ -f "$STACK/clients/viewer.token" ]; then
    (umask 077; cp "$STACK/clients/viewer.token" "$STACK/clients/console-token")
  fi
}

# gRPC as itself: its server speaks TLS with its certificate and checks every call (mutual TLS on its
# port for services and people with certificates; bearer tokens on port+10 for people with tokens);
# the inference server takes tokens on its one port (OIP clients such as tritonclient carry no
# certificate). Its client certificate is the same identity, svc:<name>; never the operator's token.
grpc_security() {
  local name="$1" port="$2"
  unset MLOPS_GRPC_CLIENT_TOKEN MLOPS_GRPC_TLS_CLIENT_CA MLOPS_GRPC_TOKEN_PORT
  export MLOPS_GRPC_TLS_CERT="$PKI/grpc/$name.pem" MLOPS_GRPC_TLS_KEY="$PKI/grpc/$name.key" \
    MLOPS_GRPC_AUTH=true MLOPS_GRPC_TOKEN_FILE="$PKI/grpc/tokens" \
    MLOPS_GRPC_CLIENT_CA_FILE="$PKI/ca.pem" MLOPS_GRPC_CLIENT_CERT_FILE="$PKI/grpc/$name.pem" \
    MLOPS_GRPC_CLIENT_KEY_FILE="$PKI/grpc/$name.key"
  if [ "$name" != inference ]; then
    export MLOPS_GRPC_TLS_CLIENT_CA="$PKI/ca.pem" MLOPS_GRPC_TOKEN_PORT=$((port + 10))
  fi
}

up() {
  local started=() entry name port
  for entry in "${SERVICES[@]}"; do
    read -r name port <<<"$entry"
    available "$name" || continue
    if alive "$name"; then
      printf '%-9s %s\n' "$name" "already running (pid $(pid_of "$name"))"
      continue
    fi
    printf '\n=== %s start\n' "$(date -u +%FT%TZ)" >>"$STACK/logs/$name.log"
    wc -l <"$STACK/logs/$name.log" >"$STACK/run/$name.logstart"
    cd "$REPO"
    local kafka_password=""
    if [ "$name" = console ]; then   # a Kafka identity of its own where the stack made one
      kafka_password="$("$PYTHON" "$HERE/kafka_secure.py" password "$STACK/pki/kafka-users.json" console 2>/dev/null)" || true
    elif [ "${MLOPS_KAFKA_SECURITY_PROTOCOL:-PLAINTEXT}" != PLAINTEXT ]; then
      kafka_password="$("$PYTHON" "$HERE/kafka_secure.py" password "$STACK/pki/kafka-users.json" "$name")" \
        || { echo "services: $name has no Kafka identity in $STACK/pki/kafka-users.json: run infra/local/stack.sh up" >&2; exit 1; }
    fi
    # Each service names itself in traces (mlops-<name>); a caller's OTEL_SERVICE_NAME is not theirs.
    rm -f "$STACK/run/$name.state"
    (
      # exported, not on a command line (which any user can read)
      if [ -n "$kafka_password" ]; then
        export MLOPS_KAFKA_SASL_USERNAME="$name" MLOPS_KAFKA_SASL_PASSWORD="$kafka_password"
        if [ "$name" = console ]; then
          # its own identity reads the topics; replays of dead letters go out as the operators'
          # (admin: the only identity that may write another's topic), for operators alone
          export MLOPS_CONSOLE_KAFKA=1 MLOPS_CONSOLE_REPLAY_SASL_USERNAME=admin
          MLOPS_CONSOLE_REPLAY_SASL_PASSWORD="$("$PYTHON" "$HERE/kafka_secure.py" password "$STACK/pki/kafka-users.json" admin)"
          export MLOPS_CONSOLE_REPLAY_SASL_PASSWORD
        fi
      fi
      # PostgreSQL as its own role, where the stack made one (<stack>/pki/pg/<name>.url, mode 0600)
      if [ -f "$STACK/pki/pg/$name.url" ]; then
        MLOPS_DATABASE_URL="$(cat "$STACK/pki/pg/$name.url")"; export MLOPS_DATABASE_URL
      fi
      # S3 as its own account, where the stack made one (<stack>/pki/s3/<name>.env, mode 0600:
      # AWS_ACCESS_KEY_ID=… and AWS_SECRET_ACCESS_KEY=… lines)
      if [ -f "$STACK/pki/s3/$name.env" ]; then
        set -a; . "$STACK/pki/s3/$name.env"; set +a
      fi
      if [ "$name" = console ]; then console_security "$port"; else grpc_security "$name" "$port"; fi
      # None of the caller's descriptors but the standard three: a lock held around this script
      # (`flock LOCK services.sh restart NAME`) would otherwise stay held for as long as the service runs.
      for fd in /proc/$BASHPID/fd/*; do
        fd="${fd##*/}"
        if [ "$fd" -gt 2 ] && [ "$fd" -ne 255 ]; then eval "exec $fd>&-" 2>/dev/null || true; fi
      done
      # setsid: the supervisor is nobody's child process group, so that the end of the shell (or CI
      # job) that ran `up` does not take the services with it.
      setsid nohup env -u OTEL_SERVICE_NAME "$PYTHON" "$HERE/supervise.py" "$STACK/run/$name.state" -- \
        "$PYTHON" -m "services.$name" >>"$STACK/logs/$name.log" 2>&1 </dev/null &
      echo $! >"$STACK/run/$name.pid"
    )
    started+=("$entry")
  done
  local deadline=$((SECONDS + READY_TIMEOUT))
  for entry in "${started[@]}"; do
    read -r name port <<<"$entry"
    until ready "$name" "$port"; do
      local restarts; restarts="$(state_of "$name" | cut -d' ' -f2)"
      if ! alive "$name" || [ "$restarts" -ge 2 ] || [ $SECONDS -ge $deadline ]; then
        printf 'services: %s did not become ready on port %s; its log since start:\n' "$name" "$port" >&2
        tail -n +"$(cat "$STACK/run/$name.logstart")" "$STACK/logs/$name.log" | tail -n 40 >&2
        kill -TERM "$(pid_of "$name")" 2>/dev/null || true
        rm -f "$STACK/run/$name.pid"
        exit 1
      fi
      sleep 0.2
    done
    printf '%-9s %s\n' "$name" "ready on $(addresses "$name" "$port") (pid $(state_of "$name" | cut -d' ' -f1))"
  done
}

down() {
  local entry name port pid deadline
  for entry in "${SERVICES[@]}"; do
    read -r name port <<<"$entry"
    if alive "$name"; then
      pid="$(pid_of "$name")"
      child="$(state_of "$name" | cut -d' ' -f1)"
      # The supervisor passes SIGTERM on and gives the service STOP_TIMEOUT before SIGKILL.
      kill -TERM "$pid" 2>/dev/null || true
      deadline=$((SECONDS + STOP_TIMEOUT + 5))
      while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
      [ "$child" != "-" ] && kill -0 "$child" 2>/dev/null && kill -KILL "$child" 2>/dev/null || true
      printf '%-9s %s\n' "$name" "stopped"
    fi
    rm -f "$STACK/run/$name.pid"
  done
}

status() {
  local rc=0 entry name port
  for entry in "${SERVICES[@]}"; do
    read -r name port <<<"$entry"
    available "$name" || continue
    local child restarts last
    read -r child restarts last <<<"$(state_of "$name")"
    if alive "$name" && ready "$name" "$port"; then
      printf '%-9s %-19s pid %-8s %-16s restarts %-3s last exit: %s\n' \
        "$name" ready "$child" "$(addresses "$name" "$port")" "$restarts" "$last"
    elif alive "$name"; then
      printf '%-9s %-19s pid %-8s %-16s restarts %-3s last exit: %s\n' \
        "$name" "running, not ready" "$child" "$(addresses "$name" "$port")" "$restarts" "$last"; rc=1
    else
      printf '%-9s %s\n' "$name" stopped; rc=1
    fi
  done
  return $rc
}

command="${1:-}"
[ $# -gt 0 ] && shift
if [ "$command" != logs ] && [ $# -gt 0 ]; then   # only the named services
  chosen=()
  for wanted in "$@"; do
    found=""
    for entry in "${SERVICES[@]}"; do
      [ "${entry%% *}" = "$wanted" ] && { chosen+=("$entry"); found=1; }
    done
    [ -n "$found" ] || { echo "services: no service named '$wanted'" >&2; exit 2; }
  done
  SERVICES=("${chosen[@]}")
fi

case "$command" in
  up) up ;;
  down) down ;;
  restart) down; up ;;
  status) status ;;
  logs) tail -n "${LINES:-50}" "$STACK/logs/${1:?which service}.log" ;;
  *) echo "usage: $0 up|down|restart|status [SERVICE ...] | logs SERVICE" >&2; exit 2 ;;
esac
