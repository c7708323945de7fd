#!/usr/bin/env bash
# The local stack as plain processes (no containers), all on 127.0.0.1:
#   kafka     Apache Kafka, KRaft single node (broker + controller)   9092 (+ controller 9093),
#             and SASL_SSL with SCRAM-SHA-512 users and ACLs               9094
#   postgres  PostgreSQL, its own data directory                       5432
#   s3        versitygw, S3-compatible server (posix backend)          9000
#   jaeger    Jaeger v2 all-in-one, memory storage                      OTLP 4317/4318, UI+API 16686
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
# admin.properties: librdkafka / kcat -F).
# Binaries come from infra/local/install.sh (cache: ${MLOPS_CACHE:-~/.cache/mlops}).
# Ports: MLOPS_KAFKA_PORT, MLOPS_KAFKA_CONTROLLER_PORT, MLOPS_KAFKA_SECURE_PORT, MLOPS_PG_PORT, MLOPS_S3_PORT,
#   MLOPS_JAEGER_OTLP_GRPC_PORT, MLOPS_JAEGER_OTLP_HTTP_PORT, MLOPS_JAEGER_UI_PORT,
#   MLOPS_JAEGER_QUERY_GRPC_PORT.
# Other settings: MLOPS_KAFKA_HEAP (768m), MLOPS_PG_USER/MLOPS_PG_PASSWORD/MLOPS_PG_DB (mlops),
#   MLOPS_S3_ACCESS_KEY (mlops-local), MLOPS_S3_SECRET_KEY (mlops-local-secret),
#   MLOPS_S3_BUCKET (mlops), MLOPS_S3_SIDECAR=1 (keep S3 metadata in a sidecar directory instead
#   of extended attributes), MLOPS_STACK_TIMEOUT (readiness deadline per component, 120 s),
#   MLOPS_STACK_STOP_TIMEOUT (graceful stop deadline, 30 s), PYTHON (<repo>/.venv/bin/python).
set -Eeuo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck source-path=SCRIPTDIR source=install.sh
source "$HERE/install.sh"   # pinned versions, MLOPS_CACHE, pg_bin_dir (runs nothing)

STACK="${MLOPS_STACK_DIR:-$REPO/.stack}"
HOST=127.0.0.1
COMPONENTS=(postgres kafka s3 jaeger)

KAFKA_PORT="${MLOPS_KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${MLOPS_KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_SECURE_PORT="${MLOPS_KAFKA_SECURE_PORT:-9094}"
KAFKA_HEAP="${MLOPS_KAFKA_HEAP:-768m}"
PG_PORT="${MLOPS_PG_PORT:-5432}"
PG_USER="${MLOPS_PG_USER:-mlops}"
PG_PASSWORD="${MLOPS_PG_PASSWORD:-mlops}"
PG_DB="${MLOPS_PG_DB:-mlops}"
S3_PORT="${MLOPS_S3_PORT:-9000}"
S3_ACCESS_KEY="${MLOPS_S3_ACCESS_KEY:-mlops-local}"
S3_SECRET_KEY="${MLOPS_S3_SECRET_KEY:-mlops-local-secret}"
S3_BUCKET="${MLOPS_S3_BUCKET:-mlops}"
S3_REGION="us-east-1"
JAEGER_OTLP_GRPC_PORT="${MLOPS_JAEGER_OTLP_GRPC_PORT:-4317}"
JAEGER_OTLP_HTTP_PORT="${MLOPS_JAEGER_OTLP_HTTP_PORT:-4318}"
JAEGER_UI_PORT="${MLOPS_JAEGER_UI_PORT:-16686}"
JAEGER_QUERY_GRPC_PORT="${MLOPS_JAEGER_QUERY_GRPC_PORT:-16685}"
READY_TIMEOUT="${MLOPS_STACK_TIMEOUT:-120}"
STOP_TIMEOUT="${MLOPS_STACK_STOP_TIMEOUT:-30}"

KAFKA_LIBS="$MLOPS_CACHE/kafka-$KAFKA_VERSION/libs"
VERSITYGW_BIN="$MLOPS_CACHE/bin/versitygw"
JAEGER_BIN="$MLOPS_CACHE/bin/jaeger"

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

# --- postgres ---------------------------------------------------------------------------
# PostgreSQL refuses to run as root: as root the server runs as the `postgres` system user,
# which owns the data directory. That user must be able to reach the directory: when the
# stack folder is not traversable by it (e.g. a repository under /root, mode 0700), the data
# directory goes to /var/tmp/mlops-pg-<hash of the stack path> and <stack>/postgres/data is a
# symlink to it, so that no permission of the user's own folders has to be widened.

pg_setup_paths() {
  PGBIN="$(pg_bin_dir)" || fail "PostgreSQL server binaries not found: run infra/local/install.sh"
  PGROOT="$STACK/postgres"
  if is_root && ! id postgres >/dev/null 2>&1; then
    fail "running as root needs the 'postgres' system user (the postgresql package creates it)"
  fi
  PG_EXTERNAL="/var/tmp/mlops-pg-$(short_hash "$STACK")"
  if [ -L "$PGROOT/data" ]; then
    PGDATA="$(readlink "$PGROOT/data")"
  elif [ -d "$PGROOT/data" ] || as_pg_user test -x "$STACK" 2>/dev/null; then
    PGDATA="$PGROOT/data"
  else
    PGDATA="$PG_EXTERNAL/data"
  fi
  # unix socket (superuser access, trust) inside the 0700 data directory, unless the
  # path would be too long for a socket address
  if [ $(( ${#PGDATA} + 20 )) -lt 100 ]; then PGSOCK="$PGDATA"; else PGSOCK="$PG_EXTERNAL/socket"; fi
}

as_pg_user() {
  if is_root; then runuser -u postgres -- "$@"; else "$@"; fi
}

postgres_ports() { echo "$PG_PORT"; }
postgres_comm() { echo postgres; }
postgres_sig() { echo "-D $PGDATA"; }
postgres_addr() { echo "$HOST:$PG_PORT"; }

postgres_pid() {
  local pid=""
  [ -f "$RUN/postgres.pid" ] && pid="$(cat "$RUN/postgres.pid")"
  if ! pid_is "$pid" "$(postgres_sig)" && [ -f "$PGDATA/postmaster.pid" ]; then
    pid="$(head -1 "$PGDATA/postmaster.pid" 2>/dev/null || true)"   # started by other means
  fi
  echo "$pid"
}

postgres_check() { :; }

postgres_start() {
  mkdir -p "$PGROOT"
  if [ ! -f "$PGDATA/PG_VERSION" ]; then
    if [ "$PGDATA" != "$PGROOT/data" ]; then
      mkdir -p "$PG_EXTERNAL"; chmod 0711 "$PG_EXTERNAL"
      rm -rf "$PGROOT/data"; ln -s "$PGDATA" "$PGROOT/data"
      log postgres "$STACK is not traversable by user postgres: data in $PGDATA"
    fi
    mkdir -p "$PGDATA"; chmod 0700 "$PGDATA"
    if is_root; then chown postgres: "$PGDATA"; fi
    log postgres "initdb $PGDATA"
    as_pg_user "$PGBIN/initdb" -D "$PGDATA" -U postgres -E UTF8 --locale=C.UTF-8 \
      --auth-local=trust --auth-host=scram-sha-256 --no-instructions >>"$LOGS/postgres.log" 2>&1 \
      || { tail -n 20 "$LOGS/postgres.log" >&2; fail "initdb failed"; }
    # superuser only through the unix socket in a 0700 directory; everyone else by password
    # over TCP on 127.0.0.1 (the server listens nowhere else)
    as_pg_user tee "$PGDATA/pg_hba.conf" >/dev/null <<'EOF'
# TYPE  DATABASE  USER  ADDRESS        METHOD
local   all       all                  trust
host    all       all   127.0.0.1/32   scram-sha-256
EOF
  fi
  if [ "$PGSOCK" != "$PGDATA" ]; then
    mkdir -p "$PGSOCK"; chmod 0700 "$PGSOCK"
    if is_root; then chown postgres: "$PGSOCK"; fi
  fi
  local runas=()
  if is_root; then runas=(setpriv --reuid=postgres --regid=postgres --init-groups --reset-env --); fi
  setsid nohup "${runas[@]}" "$PGBIN/postgres" -D "$PGDATA" \
    -c listen_addresses="$HOST" -c port="$PG_PORT" -c unix_socket_directories="$PGSOCK" \
    -c max_connections=200 \
    >>"$LOGS/postgres.log" 2>&1 </dev/null 8>&- &
  echo $! >"$RUN/postgres.pid"
}

pg_super() {   # psql as the superuser through the unix socket
  "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PGSOCK" -p "$PG_PORT" -U postgres -d postgres "$@"
}

pg_as_app() {
  PGPASSWORD="$PG_PASSWORD" PGCONNECT_TIMEOUT=3 "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 \
    -h "$HOST" -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" "$@"
}

postgres_ready() {
  "$PGBIN/pg_isready" -q -h "$HOST" -p "$PG_PORT" -t 2 && [ "$(pg_as_app -tAc 'select 1' 2>/dev/null)" = 1 ]
}

postgres_up_check() {   # role and database, idempotently; then the real check as that role
  "$PGBIN/pg_isready" -q -h "$HOST" -p "$PG_PORT" -t 2 || return 1
  local q_user q_pass
  q_user="$(printf '%s' "$PG_USER" | sed 's/"/""/g')"
  q_pass="$(printf '%s' "$PG_PASSWORD" | sed "s/'/''/g")"
  pg_super -c "DO \$\$ BEGIN
      IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$(printf '%s' "$PG_USER" | sed "s/'/''/g")') THEN
        CREATE ROLE \"$q_user\" LOGIN PASSWORD '$q_pass';
      ELSE
        ALTER ROLE \"$q_user\" LOGIN PASSWORD '$q_pass';
      END IF;
    END \$\$;" || return 1
  if [ "$(pg_super -tAc "SELECT 1 FROM pg_database WHERE datname = '$(printf '%s' "$PG_DB" | sed "s/'/''/g")'")" != 1 ]; then
    pg_super -c "CREATE DATABASE \"$(printf '%s' "$PG_DB" | sed 's/"/""/g')\" OWNER \"$q_user\"" || return 1
  fi
  [ "$(pg_as_app -tAc 'select 1')" = 1 ]
}

postgres_stop() {
  local pid="$1"
  if [ -f "$PGDATA/postmaster.pid" ] && as_pg_user "$PGBIN/pg_ctl" stop -D "$PGDATA" -m fast -w -t "$STOP_TIMEOUT" >/dev/null 2>&1; then
    return 0
  fi
  kill_gracefully "$pid" INT   # SIGINT is PostgreSQL's fast shutdown
}

postgres_purge() {
  rm -rf "$PGROOT"
  [ -d "$PG_EXTERNAL" ] && rm -rf "$PG_EXTERNAL"
  return 0
}

# --- kafka ------------------------------------------------------------------------------

KAFKA_DIR="$STACK/kafka"
KAFKA_PROPS="$KAFKA_DIR/server.properties"
KAFKA_USERS="$PKI/kafka-users.json"

kafka_ports() { echo "$KAFKA_PORT $KAFKA_CONTROLLER_PORT $KAFKA_SECURE_PORT"; }
kafka_comm() { echo java; }
kafka_sig() { echo "$KAFKA_PROPS"; }
kafka_addr() { echo "$HOST:$KAFKA_PORT (controller $KAFKA_CONTROLLER_PORT, SASL_SSL $KAFKA_SECURE_PORT)"; }
kafka_pid() { [ -f "$RUN/kafka.pid" ] && cat "$RUN/kafka.pid" || true; }

kafka_check() {
  [ -f "$KAFKA_LIBS/.complete" ] || fail "Kafka $KAFKA_VERSION not installed: run infra/local/install.sh"
  command -v java >/dev/null 2>&1 || fail "java not found: run infra/local/install.sh"
}

# java command line for Kafka's classes: kafka_java_cmd HEAP MAIN-CLASS ARGS... (sets KAFKA_JAVA)
kafka_java_cmd() {
  KAFKA_JAVA=(java -Xmx"$1" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError
    -Djava.awt.headless=true
    -Dorg.slf4j.simpleLogger.showDateTime=true
    "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd'T'HH:mm:ss.SSS"
    -cp "$KAFKA_LIBS/*" "${@:2}")
}
kafka_java() { kafka_java_cmd "$@"; "${KAFKA_JAVA[@]}"; }

# The CA and the broker's certificate (kept while valid), and the SCRAM users' passwords, made
# once per stack: one identity per service, `upstream` and `admin` (libs/mlops/bus/acl.py).
kafka_secrets() {
  local py
  py="$(python_bin)" || fail "kafka: the secured listener needs Python with the project installed (.venv)"
  "$py" "$HERE/pki.py" "$PKI" | while read -r line; do log kafka "$line"; done
  kafka_secure users
}

# infra/local/kafka_secure.py with the secured listener's address, its CA and the users' file
kafka_secure() {
  MLOPS_KAFKA_SECURE_BOOTSTRAP="$HOST:$KAFKA_SECURE_PORT" MLOPS_KAFKA_CA="$PKI/ca.pem" \
    "$(python_bin)" "$HERE/kafka_secure.py" "$1" "$KAFKA_USERS" "${@:2}"
}

kafka_write_props() {
  mkdir -p "$KAFKA_DIR/data"
  # holds the keystore's password: private to the user, like the keystore itself
  (umask 077; : >"$KAFKA_PROPS")
  chmod 0600 "$KAFKA_PROPS"
  cat >"$KAFKA_PROPS" <<EOF
# generated by infra/local/stack.sh on every start; edit the script, not this file
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT,SASL_SSL://$HOST:$KAFKA_SECURE_PORT
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT,SASL_SSL://$HOST:$KAFKA_SECURE_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL
log.dirs=$KAFKA_DIR/data

# SASL_SSL: TLS with the local CA's certificate for 127.0.0.1/localhost, SCRAM-SHA-512 logins
# (users live in the cluster's metadata: created at format time, or by kafka_secure_setup)
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PKCS12
listener.name.sasl_ssl.ssl.keystore.location=$PKI/broker.p12
listener.name.sasl_ssl.ssl.keystore.password=$(cat "$PKI/broker.p12.password")
listener.name.sasl_ssl.ssl.client.auth=none

# ACLs (KRaft's authorizer), from libs/mlops/bus/acl.py, applied on every up. Whatever no ACL
# allows is refused. super.users: the broker itself and clients of the PLAINTEXT and CONTROLLER
# listeners authenticate as User:ANONYMOUS, so the PLAINTEXT listener stays fully privileged while
# the services move to SASL_SSL (next step: they do, and PLAINTEXT goes); User:admin is operators'.
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS;User:admin
allow.everyone.if.no.acl.found=false

num.network.threads=2
num.io.threads=4
num.partitions=3
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0

# a development machine: keep a day, at most 256 MiB per partition, in 64 MiB segments
log.retention.hours=24
log.retention.bytes=268435456
log.segment.bytes=67108864
log.retention.check.interval.ms=60000
log.cleaner.dedupe.buffer.size=33554432
EOF
}

kafka_start() {
  kafka_secrets
  kafka_write_props
  if [ ! -f "$KAFKA_DIR/data/meta.properties" ]; then
    local cluster_id scram=() arg
    # every SCRAM user into the first metadata (KIP-900); the passwords are on this one short
    # command line, which only a process of the same machine could read during the format
    while read -r arg; do scram+=(--add-scram "$arg"); done < <(kafka_secure scram-args)
    cluster_id="$(kafka_java 256m kafka.tools.StorageTool random-uuid 2>>"$LOGS/kafka.log" | tail -1)"
    [ -n "$cluster_id" ] || { tail -n 20 "$LOGS/kafka.log" >&2; fail "kafka: random-uuid failed"; }
    log kafka "format storage, cluster id $cluster_id"
    kafka_java 256m kafka.tools.StorageTool format --standalone -t "$cluster_id" -c "$KAFKA_PROPS" "${scram[@]}" \
      >>"$LOGS/kafka.log" 2>&1 || { tail -n 20 "$LOGS/kafka.log" >&2; fail "kafka: storage format failed"; }
    printf 'cluster_id=%s\nformatted_at=%s\n' "$cluster_id" "$(date -u +%FT%TZ)" >"$KAFKA_DIR/formatted"
  fi
  kafka_java_cmd "$KAFKA_HEAP" kafka.Kafka "$KAFKA_PROPS"
  setsid nohup "${KAFKA_JAVA[@]}" >>"$LOGS/kafka.log" 2>&1 </dev/null 8>&- &
  echo $! >"$RUN/kafka.pid"
}

kafka_ready() {
  port_open "$KAFKA_PORT" && port_open "$KAFKA_SECURE_PORT" \
    && "$(python_bin)" "$HERE/probe.py" kafka "$HOST:$KAFKA_PORT" >/dev/null 2>&1
}

# The secured listener's users, ACLs and client files, idempotently; polled by wait_ready until it
# passes. A cluster formatted before the listener existed gets its missing SCRAM users here, over
# the PLAINTEXT listener (a super user's), with the password in a 0600 file rather than on a command
# line; then the ACLs as admin over SASL_SSL (stale ones of our principals go), then the clients' files.
kafka_secure_setup() {
  local missing user cfg
  missing="$(kafka_secure missing-users 2>>"$LOGS/kafka.log")" || return 1
  for user in $missing; do   # side by side: each is a JVM start, and all must fit the readiness deadline
    (
      cfg="$(mktemp "$KAFKA_DIR/scram.XXXXXX")"
      trap 'rm -f "$cfg"' EXIT
      kafka_secure scram-file "$user" "$cfg" \
        && kafka_java 256m kafka.admin.ConfigCommand --bootstrap-server "$HOST:$KAFKA_PORT" --alter \
          --entity-type users --entity-name "$user" --add-config-file "$cfg" >>"$LOGS/kafka.log" 2>&1 \
        && log kafka "SCRAM user $user added" >>"$LOGS/kafka.log"
    ) &
  done
  wait
  [ -z "$missing" ] || return 1   # their logins are checked again at the next poll
  # the same table for the tests' topics (tests/integration: prefix "tests."), so that they prove
  # each rule without writing into the topics the running services read
  kafka_secure acls "" tests. >>"$LOGS/kafka.log" 2>&1 && kafka_secure clients "$CLIENTS" 2>>"$LOGS/kafka.log"
}
kafka_up_check() { kafka_ready && kafka_secure_setup; }
kafka_stop() { kill_gracefully "$1"; }
kafka_purge() { rm -rf "$KAFKA_DIR"; }

# --- s3 (versitygw) ---------------------------------------------------------------------

S3_DIR="$STACK/s3"

s3_ports() { echo "$S3_PORT"; }
s3_comm() { echo versitygw; }
s3_sig() { echo "$S3_DIR/data"; }
s3_addr() { echo "http://$HOST:$S3_PORT bucket $S3_BUCKET"; }
s3_pid() { [ -f "$RUN/s3.pid" ] && cat "$RUN/s3.pid" || true; }

# The posix backend keeps object metadata in user extended attributes.
xattr_ok() {
  local f="$1/.xattr-check" rc=0
  : >"$f"
  if command -v setfattr >/dev/null 2>&1; then
    setfattr -n user.mlops-check -v 1 "$f" 2>/dev/null || rc=1
  else
    "$(python_bin)" -c 'import os,sys; os.setxattr(sys.argv[1], "user.mlops-check", b"1")' "$f" 2>/dev/null || rc=1
  fi
  rm -f "$f"
  return "$rc"
}

# Sidecar metadata when asked for, and from then on for that data directory (its objects'
# metadata lives there).
s3_sidecar() { [ "${MLOPS_S3_SIDECAR:-0}" = 1 ] || [ -d "$S3_DIR/meta" ]; }

s3_check() {
  [ -x "$VERSITYGW_BIN" ] || fail "versitygw not installed: run infra/local/install.sh"
  mkdir -p "$S3_DIR/data"
  if ! s3_sidecar && ! xattr_ok "$S3_DIR/data"; then
    fail "the filesystem of $S3_DIR/data ($(df -PT "$S3_DIR/data" | awk 'NR==2{print $2}')) has no user extended attributes, which versitygw's posix backend needs: put the stack on ext4/xfs/btrfs (MLOPS_STACK_DIR=...) or set MLOPS_S3_SIDECAR=1 to keep metadata in a sidecar directory"
  fi
}

s3_start() {
  local extra=()
  if s3_sidecar; then mkdir -p "$S3_DIR/meta"; extra=(--sidecar "$S3_DIR/meta"); fi
  # keys through the environment, not the command line (which any user can read)
  ROOT_ACCESS_KEY_ID="$S3_ACCESS_KEY" ROOT_SECRET_ACCESS_KEY="$S3_SECRET_KEY" \
    setsid nohup "$VERSITYGW_BIN" --port "$HOST:$S3_PORT" --region "$S3_REGION" --quiet \
    posix "${extra[@]}" "$S3_DIR/data" >>"$LOGS/s3.log" 2>&1 </dev/null 8>&- &
  echo $! >"$RUN/s3.pid"
}

s3_ready() {
  port_open "$S3_PORT" || return 1
  local py rc=3
  if py="$(python_bin)"; then
    rc=0
    AWS_ACCESS_KEY_ID="$S3_ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$S3_SECRET_KEY" \
      "$py" "$HERE/probe.py" s3 "http://$HOST:$S3_PORT" ${1:+"$1"} >/dev/null 2>&1 || rc=$?
  fi
  if [ "$rc" -ne 3 ]; then return "$rc"; fi
  # no boto3 (probe.py exits 3): curl signs with SigV4 too (the payload hash header is required)
  local req=(curl -fsS -o /dev/null --max-time 5 --aws-sigv4 "aws:amz:$S3_REGION:s3"
    -u "$S3_ACCESS_KEY:$S3_SECRET_KEY"
    -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
  "${req[@]}" "http://$HOST:$S3_PORT/" 2>/dev/null || return 1
  if [ -n "${1:-}" ]; then
    "${req[@]}" -I "http://$HOST:$S3_PORT/$1" 2>/dev/null \
      || "${req[@]}" -X PUT "http://$HOST:$S3_PORT/$1" 2>/dev/null
  fi
}
s3_up_check() { s3_ready "$S3_BUCKET"; }   # ListBuckets, and the bucket
s3_stop() { kill_gracefully "$1"; }
s3_purge() { rm -rf "$S3_DIR"; }

# --- jaeger -----------------------------------------------------------------------------
# With no --config the binary runs its embedded all-in-one configuration, which opens 16
# ports (jaeger/zipkin receivers, sampling, health, zpages, metrics...) and binds the query
# ports 16686/16685 on every interface whatever JAEGER_LISTEN_HOST says. So the stack writes
# the same pipeline (OTLP in, memory storage, query API/UI) with only the ports it needs, all
# on 127.0.0.1 and each overridable.

JAEGER_DIR="$STACK/jaeger"
JAEGER_CONFIG="$JAEGER_DIR/config.yaml"

jaeger_ports() { echo "$JAEGER_OTLP_GRPC_PORT $JAEGER_OTLP_HTTP_PORT $JAEGER_UI_PORT $JAEGER_QUERY_GRPC_PORT"; }
jaeger_comm() { echo jaeger; }
jaeger_sig() { echo "$JAEGER_CONFIG"; }
jaeger_addr() { echo "OTLP $HOST:$JAEGER_OTLP_GRPC_PORT/$JAEGER_OTLP_HTTP_PORT, UI http://$HOST:$JAEGER_UI_PORT"; }
jaeger_pid() { [ -f "$RUN/jaeger.pid" ] && cat "$RUN/jaeger.pid" || true; }

jaeger_check() {
  [ -x "$JAEGER_BIN" ] || fail "jaeger not installed: run infra/local/install.sh"
}

jaeger_start() {
  mkdir -p "$JAEGER_DIR"
  cat >"$JAEGER_CONFIG" <<EOF
# generated by infra/local/stack.sh on every start; edit the script, not this file
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    resource:
      service.name: jaeger
    metrics:
      level: none
    logs:
      level: info

extensions:
  jaeger_query:
    enable_tracing: false   # no traces of the query service itself among the project's
    storage:
      traces: memstore
    http:
      endpoint: "$HOST:$JAEGER_UI_PORT"
    grpc:
      endpoint: "$HOST:$JAEGER_QUERY_GRPC_PORT"
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: ${MLOPS_JAEGER_MAX_TRACES:-100000}

receivers:
  otlp:
    protocols:
      grpc:
        endpoint: "$HOST:$JAEGER_OTLP_GRPC_PORT"
      http:
        endpoint: "$HOST:$JAEGER_OTLP_HTTP_PORT"

processors:
  batch:

exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
EOF
  JAEGER_LISTEN_HOST="$HOST" setsid nohup "$JAEGER_BIN" --config "file:$JAEGER_CONFIG" \
    >>"$LOGS/jaeger.log" 2>&1 </dev/null 8>&- &
  echo $! >"$RUN/jaeger.pid"
}

jaeger_ready() {
  port_open "$JAEGER_OTLP_GRPC_PORT" && port_open "$JAEGER_OTLP_HTTP_PORT" \
    && http_ok "http://$HOST:$JAEGER_UI_PORT/api/v3/services"
}
jaeger_up_check() { jaeger_ready; }
jaeger_stop() { kill_gracefully "$1"; }
jaeger_purge() { rm -rf "$JAEGER_DIR"; }

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

env_lines() {
  local kv
  for kv in \
    "MLOPS_KAFKA_BOOTSTRAP=$HOST:$KAFKA_PORT" \
    "MLOPS_KAFKA_SECURE_BOOTSTRAP=$HOST:$KAFKA_SECURE_PORT" \
    "MLOPS_DATABASE_URL=postgresql+asyncpg://$(urlquote "$PG_USER"):$(urlquote "$PG_PASSWORD")@$HOST:$PG_PORT/$(urlquote "$PG_DB")" \
    "MLOPS_ARTIFACT_ROOT=s3://$S3_BUCKET" \
    "MLOPS_ARTIFACT_S3_ENDPOINT_URL=http://$HOST:$S3_PORT" \
    "AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY" \
    "AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY" \
    "AWS_DEFAULT_REGION=$S3_REGION" \
    "OTEL_EXPORTER_OTLP_ENDPOINT=http://$HOST:$JAEGER_OTLP_GRPC_PORT" \
    "OTEL_EXPORTER_OTLP_PROTOCOL=grpc" \
    "MLOPS_JAEGER_QUERY_URL=http://$HOST:$JAEGER_UI_PORT"; do
    printf 'export %s=%q\n' "${kv%%=*}" "${kv#*=}"
  done
}

cmd_env() { env_lines; }

cmd_up() {
  select_components "$@"
  init_stack_dir
  lock_stack
  pg_setup_paths
  local t0 c pid port owner to_start=()
  t0="$(now)"
  # preflight, before anything starts: binaries, filesystem, ports
  for c in "${SELECTED[@]}"; do
    "${c}_check"
    if pid="$(running_pid "$c")"; then
      if [ -f "$RUN/$c.ports" ] && [ "$(cat "$RUN/$c.ports")" != "$("${c}_ports")" ]; then
        fail "$c is running (pid $pid) on ports $(cat "$RUN/$c.ports"), not the configured $("${c}_ports"): stack.sh restart $c"
      fi
      continue
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
  env_lines >"$STACK/env"
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
