# shellcheck shell=bash
# The local stack's postgres: sourced by infra/local/stack.sh, which defines the settings and helpers
# used here. Each component provides <name>_ports/_comm/_sig/_addr/_pid/_check/_start/_ready/
# _up_check/_stop/_purge for the generic process handling in stack.sh.

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

# Who may connect, and how: the superuser only through the unix socket in a 0700 directory (the
# scripts' admin path); every other role by password (SCRAM) over TLS on 127.0.0.1, the only
# address the server listens on; a TCP connection without TLS is refused before it authenticates.
pg_hba() {
  cat <<'EOF'
# Written by infra/local/components/postgres.sh on every start: edits here do not last.
# TYPE     DATABASE  USER      ADDRESS        METHOD
local      all       postgres                 trust
hostssl    all       all       127.0.0.1/32   scram-sha-256
hostnossl  all       all       all            reject
EOF
}

# The server's certificate (infra/local/pki.py: 127.0.0.1 and localhost, signed by the stack's CA)
# lives in <stack>/pki, which is private to the user; the server reads a copy in its data directory,
# owned by the user it runs as, the key 0600 as PostgreSQL demands.
pg_install_tls() {
  local owner=()
  if is_root; then owner=(-o postgres -g postgres); fi
  [ -f "$PKI/postgres.pem" ] && [ -f "$PKI/postgres.key" ] || fail "no $PKI/postgres.pem or .key: infra/local/pki.py makes them"
  install -m 0644 "${owner[@]}" "$PKI/postgres.pem" "$PGDATA/server.crt"
  install -m 0600 "${owner[@]}" "$PKI/postgres.key" "$PGDATA/server.key"
}

# A running server started otherwise than postgres_start would start it now (by an older stack
# without TLS, or with a certificate pki.py has since renewed): `up` restarts it, data kept.
postgres_changed() {
  if [ "$(cat "$PGDATA/pg_hba.conf" 2>/dev/null)" != "$(pg_hba)" ]; then
    echo "pg_hba.conf: TCP over TLS only"; return 0
  fi
  if ! cmp -s "$PKI/postgres.pem" "$PGDATA/server.crt" || ! cmp -s "$PKI/postgres.key" "$PGDATA/server.key"; then
    echo "its TLS certificate"; return 0
  fi
  if [ "$(pg_super -tAc 'SHOW ssl' 2>/dev/null)" != on ]; then
    echo "TLS is off"; return 0
  fi
  return 1
}

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
  fi
  pg_install_tls
  # written on every start, so that a data directory of an older stack is upgraded in place
  pg_hba | as_pg_user tee "$PGDATA/pg_hba.conf" >/dev/null
  if [ "$PGSOCK" != "$PGDATA" ]; then
    mkdir -p "$PGSOCK"; chmod 0700 "$PGSOCK"
    if is_root; then chown postgres: "$PGSOCK"; fi
  fi
  local runas=()
  if is_root; then runas=(setpriv --reuid=postgres --regid=postgres --init-groups --reset-env --); fi
  setsid nohup "${runas[@]}" "$PGBIN/postgres" -D "$PGDATA" \
    -c listen_addresses="$HOST" -c port="$PG_PORT" -c unix_socket_directories="$PGSOCK" \
    -c max_connections=200 -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key \
    -c ssl_min_protocol_version=TLSv1.2 -c password_encryption=scram-sha-256 \
    >>"$LOGS/postgres.log" 2>&1 </dev/null 8>&- &
  echo $! >"$RUN/postgres.pid"
}

pg_super() {   # psql as the superuser through the unix socket, in database postgres
  pg_super_in postgres "$@"
}

pg_super_in() {   # DB [psql args]: psql as the superuser through the unix socket, in database DB
  local db="$1"; shift
  "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PGSOCK" -p "$PG_PORT" -U postgres -d "$db" "$@"
}

pg_as_app() {   # psql as the operator's role over TCP, verifying the server against the stack's CA
  PGPASSWORD="$PG_PASSWORD" PGCONNECT_TIMEOUT=3 PGSSLMODE=verify-full PGSSLROOTCERT="$PKI/ca.pem" \
    "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$HOST" -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" "$@"
}

# infra/local/pg_roles.py: the roles' SQL (passwords as SCRAM verifiers, on stdin: never on a command
# line nor in the server's log) and the services' URL files. The operator's password goes to it
# through the environment.
pg_roles() {
  MLOPS_PG_PASSWORD="$PG_PASSWORD" "$(python_bin)" "$HERE/pg_roles.py" "$1" --pki "$PKI" \
    --operator "$PG_USER" --database "$PG_DB" --host "$HOST" --port "$PG_PORT"
}

postgres_ready() {
  "$PGBIN/pg_isready" -q -h "$HOST" -p "$PG_PORT" -t 2 && [ "$(pg_as_app -tAc 'select 1' 2>/dev/null)" = 1 ]
}

# Idempotently: the operator's role and every service's, the database, each service's schema owned
# by its role (an older stack's handed over) and the grants, the services' URL files; then the real
# check as the operator over TLS. Errors go to the log (wait_ready polls this quietly).
postgres_up_check() {
  "$PGBIN/pg_isready" -q -h "$HOST" -p "$PG_PORT" -t 2 || return 1
  {
    pg_roles roles | pg_super || return 1
    if [ "$(pg_super -tAc "SELECT 1 FROM pg_database WHERE datname = '$(printf '%s' "$PG_DB" | sed "s/'/''/g")'")" != 1 ]; then
      pg_super -c "CREATE DATABASE \"$(printf '%s' "$PG_DB" | sed 's/"/""/g')\" OWNER \"$(printf '%s' "$PG_USER" | sed 's/"/""/g')\"" || return 1
    fi
    pg_roles grants | pg_super_in "$PG_DB" || return 1
    pg_roles urls || return 1
  } 2>>"$LOGS/postgres.log"
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
