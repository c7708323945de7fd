# shellcheck shell=bash
# The local stack's prometheus: sourced by infra/local/stack.sh, which defines the settings and helpers
# used here. Each component provides <name>_ports/_comm/_sig/_addr/_pid/_check/_start/_ready/
# _up_check/_stop/_purge for the generic process handling in stack.sh.

# --- prometheus -------------------------------------------------------------------------
# Prometheus scraping every service's /metrics with infra/prometheus/local.yml, which loads the
# alerting rules of infra/prometheus/alerts.yml: the console's /alerts page reads which are firing
# (MLOPS_CONSOLE_PROMETHEUS_URL, set by services.sh). The binary is built from the Prometheus Go
# module by infra/k8s/install-tools.sh (no web UI assets: the HTTP API is what is used).

PROMETHEUS_DIR="$STACK/prometheus"
PROMETHEUS_CONFIG="$REPO/infra/prometheus/local.yml"
PROMETHEUS_RULES="$REPO/infra/prometheus/alerts.yml"

prometheus_ports() { echo "$PROMETHEUS_PORT"; }
prometheus_comm() { echo prometheus; }
prometheus_sig() { echo "$PROMETHEUS_DIR"; }
prometheus_addr() { echo "http://$HOST:$PROMETHEUS_PORT"; }
prometheus_pid() { [ -f "$RUN/prometheus.pid" ] && cat "$RUN/prometheus.pid" || true; }

# Not in install-tools.sh's default set (a long first build): built here on the first up, cached after.
prometheus_check() {
  [ -x "$PROMETHEUS_BIN" ] && return 0
  log prometheus "not installed: bash infra/k8s/install-tools.sh prometheus"
  MLOPS_CACHE="$MLOPS_CACHE" bash "$REPO/infra/k8s/install-tools.sh" prometheus \
    || fail "prometheus could not be installed: run infra/k8s/install-tools.sh prometheus"
  [ -x "$PROMETHEUS_BIN" ] || fail "prometheus not installed at $PROMETHEUS_BIN"
}

# Prometheus reads its configuration and rules at start only: `up` restarts it when they changed.
prometheus_config_hash() { short_hash "$(cat "$PROMETHEUS_CONFIG" "$PROMETHEUS_RULES" 2>/dev/null)"; }
prometheus_changed() {
  [ "$(cat "$RUN/prometheus.config" 2>/dev/null)" != "$(prometheus_config_hash)" ] || return 1
  echo "infra/prometheus/local.yml or alerts.yml"
}

prometheus_start() {
  mkdir -p "$PROMETHEUS_DIR"
  prometheus_config_hash >"$RUN/prometheus.config"   # what it reads now
  setsid nohup "$PROMETHEUS_BIN" \
    --config.file="$PROMETHEUS_CONFIG" \
    --storage.tsdb.path="$PROMETHEUS_DIR/data" \
    --storage.tsdb.retention.time="${MLOPS_PROMETHEUS_RETENTION:-7d}" \
    --web.listen-address="$HOST:$PROMETHEUS_PORT" \
    >>"$LOGS/prometheus.log" 2>&1 </dev/null 8>&- &
  echo $! >"$RUN/prometheus.pid"
}

prometheus_ready() { http_ok "http://$HOST:$PROMETHEUS_PORT/-/ready"; }
prometheus_up_check() { prometheus_ready; }
prometheus_stop() { kill_gracefully "$1"; rm -f "$RUN/prometheus.config"; }
prometheus_purge() { rm -rf "$PROMETHEUS_DIR"; }
