#!/usr/bin/env bash
# The local stack as plain processes (no containers), all on 127.0.0.1:
#   kafka     Apache Kafka, KRaft single node (broker + controller)   9092 (+ controller 9093),
#             SASL_SSL only: SCRAM-SHA-512 users and ACLs
#   postgres  PostgreSQL, its own data directory                       5432
#   s3        versitygw, S3-compatible server (posix backend)          9000
#   jaeger    Jaeger v2 all-in-one, memory storage                      OTLP 4317/4318, UI+API 16686
#   prometheus Prometheus, the services' /metrics (local.yml) and the   9090 (HTTP API)
#             rules of infra/prometheus/alerts.yml: what the console's /alerts page reads
#
# Usage: infra/local/stack.sh COMMAND [component ...]
#   up       start what is not running and wait until every component is ready (idempotent)
#   down     stop gracefully, keep the data (idempotent);  down --purge: delete the data too
#   purge    same as down --purge
#   restart  down, then up
#   status   one line per component; exit 0 only when all are ready
#   env      print the export lines the rest of the project reads (also written to <stack>/env)
#   logs     [component] [-f]: the last lines of the logs (-f: follow)
#   check    end-to-end smoke test of the running stack (Kafka produce/consume, SQL as the
#            application role, S3 put/get, a span through OTLP into Jaeger): infra/local/smoke.py
#
# Everything (data, logs, pid files, generated config) lives in ${MLOPS_STACK_DIR:-<repo>/.stack};
# the CA, the broker's certificate and the Kafka users' passwords in <stack>/pki (infra/local/pki.py),
# what clients need for the secured listener in <stack>/clients (ca.pem, upstream.properties,
# admin.properties: librdkafka / kcat -F), the random PostgreSQL and S3 secrets in
# <stack>/pki/local-secrets.json (made on the first up). `up` restarts a running component whose
# configuration changed (Kafka's server.properties, S3's credentials) and says so.
# Binaries come from infra/local/install.sh (cache: ${MLOPS_CACHE:-~/.cache/mlops}), Prometheus's
# from infra/k8s/install-tools.sh prometheus (built by the first `up` that lacks it).
# Ports: MLOPS_KAFKA_PORT, MLOPS_KAFKA_CONTROLLER_PORT, MLOPS_PG_PORT, MLOPS_S3_PORT,
#   MLOPS_JAEGER_OTLP_GRPC_PORT, MLOPS_JAEGER_OTLP_HTTP_PORT, MLOPS_JAEGER_UI_PORT,
#   MLOPS_JAEGER_QUERY_GRPC_PORT, MLOPS_PROMETHEUS_PORT.
# Other settings: MLOPS_KAFKA_HEAP (768m), MLOPS_PG_USER/MLOPS_PG_DB (mlops), MLOPS_PG_PASSWORD
#   (random, local-secrets.json), MLOPS_S3_ACCESS_KEY (mlops-local), MLOPS_S3_SECRET_KEY (random),
#   MLOPS_S3_BUCKET (mlops), MLOPS_S3_SIDECAR=1 (keep S3 metadata in a sidecar directory instead
#   of extended attributes), MLOPS_PROMETHEUS_RETENTION (7d), MLOPS_STACK_TIMEOUT (readiness
#   deadline per component, 120 s), MLOPS_STACK_STOP_TIMEOUT (graceful stop deadline, 30 s),
#   PYTHON (<repo>/.venv/bin/python).
set -Eeuo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck source-path=SCRIPTDIR source=install.sh
source "$HERE/install.sh"   # pinned versions, MLOPS_CACHE, pg_bin_dir (runs nothing)

STACK="${MLOPS_STACK_DIR:-$REPO/.stack}"
HOST=127.0.0.1
COMPONENTS=(postgres kafka s3 jaeger prometheus)

KAFKA_PORT="${MLOPS_KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${MLOPS_KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_HEAP="${MLOPS_KAFKA_HEAP:-768m}"
PG_PORT="${MLOPS_PG_PORT:-5432}"
PG_USER="${MLOPS_PG_USER:-mlops}"
PG_PASSWORD="${MLOPS_PG_PASSWORD:-}"            # else local-secrets.json (load_local_secrets)
PG_DB="${MLOPS_PG_DB:-mlops}"
S3_PORT="${MLOPS_S3_PORT:-9000}"
S3_ACCESS_KEY="${MLOPS_S3_ACCESS_KEY:-mlops-local}"
S3_SECRET_KEY="${MLOPS_S3_SECRET_KEY:-}"        # else local-secrets.json
S3_BUCKET="${MLOPS_S3_BUCKET:-mlops}"
S3_REGION="us-east-1"
JAEGER_OTLP_GRPC_PORT="${MLOPS_JAEGER_OTLP_GRPC_PORT:-4317}"
JAEGER_OTLP_HTTP_PORT="${MLOPS_JAEGER_OTLP_HTTP_PORT:-4318}"
JAEGER_UI_PORT="${MLOPS_JAEGER_UI_PORT:-16686}"
JAEGER_QUERY_GRPC_PORT="${MLOPS_JAEGER_QUERY_GRPC_PORT:-16685}"
PROMETHEUS_PORT="${MLOPS_PROMETHEUS_PORT:-9090}"
READY_TIMEOUT="${MLOPS_STACK_TIMEOUT:-120}"
STOP_TIMEOUT="${MLOPS_STACK_STOP_TIMEOUT:-30}"

KAFKA_LIBS="$MLOPS_CACHE/kafka-$KAFKA_VERSION/libs"
VERSITYGW_BIN="$MLOPS_CACHE/bin/versitygw"
JAEGER_BIN="$MLOPS_CACHE/bin/jaeger"
PROMETHEUS_BIN="$MLOPS_CACHE/bin/prometheus"   # infra/k8s/install-tools.sh prometheus

RUN="$STACK/run"
LOGS="$STACK/logs"
PKI="$STACK/pki"
CLIENTS="$STACK/clients"

# --- small helpers ----------------------------------------------------------------------

log() { printf '%-9s %s\n' "$1" "$2"; }
fail() { printf 'stack: %s\n' "$*" >&2; exit 1; }
now() { echo "${EPOCHREALTIME/./}"; }                       # microseconds
elapsed() { local us=$(( $(now) - $1 )); printf '%d.%01ds' $((us / 1000000)) $((us % 1000000 / 100000)); }

python_bin() {
  local p="${PYTHON:-$REPO/.venv/bin/python}"
  if [ -x "$p" ]; then echo "$p"; elif command -v python3 >/dev/null 2>&1; then command -v python3
  else return 1; fi
}

# A process is running when /proc has it and it is not a zombie.
pid_running() {
  local pid="$1" state
  [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
  state="$(sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]).*/\1/' "/proc/$pid/stat" 2>/dev/null)" || return 1
  [ "$state" != "Z" ] && [ "$state" != "X" ]
}

# The pid's command line contains the signature that makes it ours (a path in this stack).
pid_is() {
  local pid="$1" sig="$2"
  pid_running "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$sig"
}

port_open() {   # something accepts TCP connections on 127.0.0.1:$1
  (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

port_owner() {
  if command -v ss >/dev/null 2>&1; then
    ss -ltnpH "sport = :$1" 2>/dev/null | awk '{print $4, $6}' | head -1
  fi
}

http_ok() {
  if command -v curl >/dev/null 2>&1; then
    curl -fsS -o /dev/null --max-time 3 "$1" 2>/dev/null
  else
    "$(python_bin)" -c 'import sys,urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3)' "$1" 2>/dev/null
  fi
}

is_root() { [ "$(id -u)" -eq 0 ]; }

short_hash() { printf '%s' "$1" | sha256sum | cut -c1-10; }

# PG_PASSWORD and S3_SECRET_KEY, unless given, from <stack>/pki/local-secrets.json: made by
# `load_local_secrets create` (up), only read otherwise (a stack never started has none yet).
load_local_secrets() {
  local out name value py
  py="$(python_bin)" || fail "the local secrets need Python (.venv or python3)"
  out="$("$py" "$HERE/local_secrets.py" "$1" "$PKI/local-secrets.json")" || fail "cannot read $PKI/local-secrets.json"
  while read -r name value; do
    case "$name" in
      pg_password) [ -n "${MLOPS_PG_PASSWORD:-}" ] || PG_PASSWORD="$value" ;;
      s3_secret_key) [ -n "${MLOPS_S3_SECRET_KEY:-}" ] || S3_SECRET_KEY="$value" ;;
    esac
  done <<<"$out"
}

# --- components (one file each: what runs, how it starts, when it is ready) -------------

for component in "${COMPONENTS[@]}"; do
  # shellcheck source=/dev/null
  source "$HERE/components/$component.sh"
done

# --- generic process handling -----------------------------------------------------------

# A process of this stack's component $1 without (valid) pid file: its executable's name and
# the stack path on its command line.
find_pid() {
  local comm="$1" sig="$2" d
  for d in /proc/[0-9]*; do
    [ "$(cat "$d/comm" 2>/dev/null)" = "$comm" ] || continue
    if pid_is "${d#/proc/}" "$sig"; then echo "${d#/proc/}"; return 0; fi
  done
  return 1
}

# the pid of the component when it is running and ours, else nothing (stale pid files go)
running_pid() {
  local c="$1" pid found
  pid="$("${c}_pid")"
  if [ -n "$pid" ] && pid_is "$pid" "$("${c}_sig")"; then echo "$pid"; return 0; fi
  if [ -f "$RUN/$c.pid" ]; then
    rm -f "$RUN/$c.pid"
    log "$c" "removed a stale pid file (pid ${pid:-?} is not this stack's $c)" >&2
  fi
  if found="$(find_pid "$("${c}_comm")" "$("${c}_sig")")"; then
    echo "$found" >"$RUN/$c.pid"
    log "$c" "found running without its pid file (pid $found): adopted" >&2
    echo "$found"; return 0
  fi
  return 1
}

kill_gracefully() {   # PID [SIGNAL]: SIGNAL (TERM), wait up to STOP_TIMEOUT, then SIGKILL
  local pid="$1" sig="${2:-TERM}" deadline=$((SECONDS + STOP_TIMEOUT))
  pid_running "$pid" || return 0
  kill -"$sig" "$pid" 2>/dev/null || true
  while pid_running "$pid"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "" "pid $pid still running after ${STOP_TIMEOUT}s: SIGKILL" >&2
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  # whatever the process group still holds (children)
  kill -KILL -- "-$pid" 2>/dev/null || true
}

# Polls component $1's up-check (its readiness check plus idempotent set-up: role and
# database, bucket) until it passes, the process exits, or the deadline passes.
wait_ready() {
  local c="$1" t0="$2" deadline=$((SECONDS + READY_TIMEOUT)) pid
  while :; do
    pid="$("${c}_pid")"
    # Only whether it runs: its command line may be empty for an instant while setsid and nohup exec it.
    if ! pid_running "$pid"; then
      echo "exited during start-up"
      return 1
    fi
    if "${c}_up_check" >/dev/null 2>&1; then
      echo "ready in $(elapsed "$t0")  pid $pid  $("${c}_addr")"
      return 0
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "not ready after ${READY_TIMEOUT}s"
      return 1
    fi
    sleep 0.2
  done
}

select_components() {
  SELECTED=()
  local c k
  for c in "$@"; do
    for k in "${COMPONENTS[@]}"; do [ "$c" = "$k" ] && continue 2; done
    fail "unknown component '$c' (known: ${COMPONENTS[*]})"
  done
  if [ $# -eq 0 ]; then SELECTED=("${COMPONENTS[@]}"); else SELECTED=("$@"); fi
}

lock_stack() {
  exec 8>"$STACK/.lock"
  flock -w 300 8 || fail "another stack.sh holds $STACK/.lock"
}

init_stack_dir() {
  mkdir -p "$STACK" "$RUN" "$LOGS"
  [ -f "$STACK/.mlops-stack" ] || echo "local stack of $REPO (infra/local/stack.sh)" >"$STACK/.mlops-stack"
}

# --- commands ---------------------------------------------------------------------------

urlquote() {   # percent-encodes everything but unreserved characters (RFC 3986)
  local s="$1" out="" ch i
  for ((i = 0; i < ${#s}; i++)); do
    ch="${s:i:1}"
    case "$ch" in [A-Za-z0-9._~-]) out+="$ch" ;; *) out+="$(printf '%%%02X' "'$ch")" ;; esac
  done
  printf '%s' "$out"
}

# The local operator's identity (Kafka's admin) for whoever sources it: tests, the CLI, the demo.
# The services get their own Kafka identity from services.sh instead.
env_lines() {
  local kv kafka_auth=() admin_password
  if admin_password="$(kafka_secure password "$ADMIN_IDENTITY" 2>/dev/null)"; then
    kafka_auth=(
      "MLOPS_KAFKA_SECURITY_PROTOCOL=SASL_SSL"
      "MLOPS_KAFKA_SASL_MECHANISM=SCRAM-SHA-512"
      "MLOPS_KAFKA_SASL_USERNAME=$ADMIN_IDENTITY"
      "MLOPS_KAFKA_SASL_PASSWORD=$admin_password"
      "MLOPS_KAFKA_SSL_CAFILE=$CLIENTS/ca.pem")
  fi
  local grpc_auth=()   # gRPC as the local admin: certificate (mutual TLS) and token (token-only servers)
  if [ -f "$CLIENTS/admin.pem" ] && [ -f "$CLIENTS/admin.token" ]; then
    grpc_auth=(
      "MLOPS_GRPC_CLIENT_CA_FILE=$CLIENTS/ca.pem"
      "MLOPS_GRPC_CLIENT_CERT_FILE=$CLIENTS/admin.pem"
      "MLOPS_GRPC_CLIENT_KEY_FILE=$CLIENTS/admin.key"
      "MLOPS_GRPC_CLIENT_TOKEN=$(cat "$CLIENTS/admin.token")")
  fi
  for kv in \
    "MLOPS_KAFKA_BOOTSTRAP=$HOST:$KAFKA_PORT" \
    "${kafka_auth[@]}" \
    "${grpc_auth[@]}" \
    "MLOPS_DATABASE_URL=postgresql+asyncpg://$(urlquote "$PG_USER"):$(urlquote "$PG_PASSWORD")@$HOST:$PG_PORT/$(urlquote "$PG_DB")?sslmode=verify-full&sslrootcert=$(urlquote "$CLIENTS/ca.pem")" \
    "MLOPS_ARTIFACT_ROOT=s3://$S3_BUCKET" \
    "MLOPS_ARTIFACT_S3_ENDPOINT_URL=https://$HOST:$S3_PORT" \
    "MLOPS_ARTIFACT_S3_CA_FILE=$CLIENTS/ca.pem" \
    "AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY" \
    "AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY" \
    "AWS_DEFAULT_REGION=$S3_REGION" \
    "OTEL_EXPORTER_OTLP_ENDPOINT=http://$HOST:$JAEGER_OTLP_GRPC_PORT" \
    "OTEL_EXPORTER_OTLP_PROTOCOL=grpc" \
    "MLOPS_JAEGER_QUERY_URL=http://$HOST:$JAEGER_UI_PORT"; do
    printf 'export %s=%q\n' "${kv%%=*}" "${kv#*=}"
  done
}

cmd_env() { load_local_secrets read; env_lines; }

write_env() {   # <stack>/env holds passwords: private to the user
  (umask 077; env_lines >"$STACK/env.tmp")
  mv -f "$STACK/env.tmp" "$STACK/env"
}

cmd_up() {
  select_components "$@"
  init_stack_dir
  lock_stack
  pg_setup_paths
  load_local_secrets create
  # the CA and every certificate and token of the stack (kept while valid; see infra/local/pki.py)
  "$(python_bin)" "$HERE/pki.py" "$PKI" | while read -r line; do log pki "$line"; done
  local t0 c pid port owner to_start=() reason
  t0="$(now)"
  # preflight, before anything starts: binaries, filesystem, ports
  for c in "${SELECTED[@]}"; do
    "${c}_check"
    if pid="$(running_pid "$c")"; then
      # started with another configuration (a new version of this script, other secrets): restart it
      if declare -F "${c}_changed" >/dev/null && reason="$("${c}_changed")"; then
        log "$c" "configuration changed ($reason): restarting (pid $pid)"
        "${c}_stop" "$pid"
        rm -f "$RUN/$c.pid" "$RUN/$c.ports"
      elif [ -f "$RUN/$c.ports" ] && [ "$(cat "$RUN/$c.ports")" != "$("${c}_ports")" ]; then
        fail "$c is running (pid $pid) on ports $(cat "$RUN/$c.ports"), not the configured $("${c}_ports"): stack.sh restart $c"
      else
        continue
      fi
    fi
    for port in $("${c}_ports"); do
      if port_open "$port"; then
        owner="$(port_owner "$port")"
        fail "$c: port $port on $HOST is already in use${owner:+ by $owner}, not by this stack; stop it or choose another port (see infra/local/stack.sh --help)"
      fi
    done
    to_start+=("$c")
  done
  for c in "${SELECTED[@]}"; do
    if pid="$(running_pid "$c")"; then
      log "$c" "already running (pid $pid)"
    fi
  done
  # start all at once (first start: initdb and Kafka's storage format run side by side)
  local -A starter=()
  for c in "${to_start[@]}"; do
    (
      "${c}_start"
      "${c}_ports" >"$RUN/$c.ports"
      log "$c" "started (pid $(cat "$RUN/$c.pid"), log $LOGS/$c.log)"
    ) &
    starter[$c]=$!
  done
  for c in "${to_start[@]}"; do
    wait "${starter[$c]}" || fail "$c could not be started (log: $LOGS/$c.log)"
  done
  # then wait for all at once
  local -A waiter=()
  for c in "${SELECTED[@]}"; do
    wait_ready "$c" "$t0" >"$RUN/$c.wait" 2>&1 &
    waiter[$c]=$!
  done
  local failed=()
  for c in "${SELECTED[@]}"; do
    if wait "${waiter[$c]}"; then log "$c" "$(cat "$RUN/$c.wait")"
    else failed+=("$c"); log "$c" "FAILED: $(cat "$RUN/$c.wait")" >&2; fi
    rm -f "$RUN/$c.wait"
  done
  write_env
  if [ "${#failed[@]}" -gt 0 ]; then
    for c in "${failed[@]}"; do
      printf '\n--- last lines of %s ---\n' "$LOGS/$c.log" >&2
      tail -n 40 "$LOGS/$c.log" >&2 || true
    done
    printf '\nstack: not ready: %s (the others are left running; stack.sh down stops them)\n' "${failed[*]}" >&2
    exit 1
  fi
  log stack "ready in $(elapsed "$t0"); environment: source $STACK/env  (or: eval \"\$(infra/local/stack.sh env)\")"
}

cmd_down() {
  local purge=0 args=() a
  for a in "$@"; do
    case "$a" in --purge) purge=1 ;; *) args+=("$a") ;; esac
  done
  select_components "${args[@]}"
  if [ ! -d "$STACK" ]; then log stack "nothing to stop ($STACK does not exist)"; return 0; fi
  [ -f "$STACK/.mlops-stack" ] || fail "$STACK does not look like a stack folder (no .mlops-stack): refusing"
  lock_stack
  pg_setup_paths
  local c pid t0; t0="$(now)"
  local -A stopper=()
  for c in "${SELECTED[@]}"; do
    if pid="$(running_pid "$c")"; then
      ( "${c}_stop" "$pid"; rm -f "$RUN/$c.pid" "$RUN/$c.ports"; log "$c" "stopped (pid $pid) in $(elapsed "$t0")" ) &
      stopper[$c]=$!
    else
      rm -f "$RUN/$c.pid"
      log "$c" "not running"
    fi
  done
  for c in "${!stopper[@]}"; do wait "${stopper[$c]}" || true; done
  if [ "$purge" -eq 1 ]; then
    for c in "${SELECTED[@]}"; do "${c}_purge"; log "$c" "data deleted"; done
    if [ "${#args[@]}" -eq 0 ]; then rm -rf "$STACK"; log stack "deleted $STACK"; fi
  fi
}

cmd_status() {
  select_components "$@"
  local c pid rc=0 state
  pg_setup_paths
  load_local_secrets read
  for c in "${SELECTED[@]}"; do
    if [ -d "$STACK" ] && pid="$(running_pid "$c")"; then
      if "${c}_ready" 2>/dev/null; then state=ready; else state="running, NOT READY"; rc=1; fi
      printf '%-9s %-19s pid %-8s %s\n' "$c" "$state" "$pid" "$("${c}_addr")"
    else
      printf '%-9s %-19s %-12s %s\n' "$c" stopped "" "$("${c}_addr")"
      rc=1
    fi
  done
  return "$rc"
}

cmd_logs() {
  local follow=0 args=() a c files=()
  for a in "$@"; do case "$a" in -f|--follow) follow=1 ;; *) args+=("$a") ;; esac; done
  select_components "${args[@]}"
  for c in "${SELECTED[@]}"; do [ -f "$LOGS/$c.log" ] && files+=("$LOGS/$c.log"); done
  [ "${#files[@]}" -gt 0 ] || fail "no logs in $LOGS"
  if [ "$follow" -eq 1 ]; then exec tail -n 20 -F "${files[@]}"; fi
  if [ "${#files[@]}" -eq 1 ]; then tail -n "${MLOPS_LOG_LINES:-100}" "${files[0]}"
  else tail -n "${MLOPS_LOG_LINES:-20}" "${files[@]}"; fi
}

cmd_check() {
  local py="${PYTHON:-$REPO/.venv/bin/python}"
  [ -x "$py" ] || fail "check needs the project's virtual environment ($py) or PYTHON=..."
  load_local_secrets read
  eval "$(env_lines)"
  "$py" "$HERE/smoke.py"
}

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

main() {
  local cmd="${1:-}"; shift || true
  case "$cmd" in
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    purge) cmd_down --purge "$@" ;;
    restart) cmd_down "$@"; cmd_up "$@" ;;
    status) cmd_status "$@" ;;
    env) cmd_env ;;
    logs) cmd_logs "$@" ;;
    check) cmd_check ;;
    -h|--help|help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"
