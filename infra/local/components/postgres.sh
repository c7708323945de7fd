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
