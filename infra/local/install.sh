#!/usr/bin/env bash
# Installs the components of the local stack (no containers):
#   postgres   PostgreSQL server from the distribution's packages (Debian/Ubuntu: apt)
#   kafka      Apache Kafka broker jars resolved from Maven Central (KRaft mode, no ZooKeeper)
#   versitygw  Versity S3 gateway, an S3-compatible server (go install)
#   jaeger     Jaeger v2 all-in-one (go build of the released module)
#   ghz        gRPC load generator the soak test (R10) and the benchmarks drive (go install; only when named)
#
# Usage: infra/local/install.sh [component ...]     (default: all four)
#
# Idempotent: everything is cached under ${MLOPS_CACHE:-$HOME/.cache/mlops} and checked
# before any work is done, so a re-run finishes in seconds. Pinned versions can be
# overridden with MLOPS_KAFKA_VERSION, MLOPS_VERSITYGW_VERSION, MLOPS_JAEGER_VERSION.
set -Eeuo pipefail

MLOPS_CACHE="${MLOPS_CACHE:-$HOME/.cache/mlops}"
KAFKA_VERSION="${MLOPS_KAFKA_VERSION:-4.1.2}"
SLF4J_VERSION="1.7.36"
VERSITYGW_VERSION="${MLOPS_VERSITYGW_VERSION:-v1.8.0}"
# The Jaeger module has no /v2 path, so the v2 binary (cmd/jaeger) is built from the
# v1.x tag released together with it: v1.76.0 is released with Jaeger v2.13.0.
JAEGER_VERSION="${MLOPS_JAEGER_VERSION:-v1.76.0}"
GHZ_VERSION="${GHZ_VERSION:-v0.121.0}"   # the same pin as tests/bench/setup.sh
GO_MIN="1.25"

BIN_DIR="$MLOPS_CACHE/bin"
LOG_DIR="$MLOPS_CACHE/logs"
mkdir -p "$BIN_DIR" "$LOG_DIR"

say() { printf '%-10s %s\n' "$1" "$2"; }
die() { printf 'install: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root (or sudo) to run: $*"; fi
}

apt_updated=0
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install $* with your package manager"
  if [ "$apt_updated" -eq 0 ]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- helpers shared with stack.sh -------------------------------------------------------

pg_bin_dir() {
  local d
  for d in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r); do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ]; then
      echo "$d"; return 0
    fi
  done
  if command -v pg_config >/dev/null 2>&1; then
    d="$(pg_config --bindir 2>/dev/null || true)"
    if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
  fi
  d="$(command -v initdb 2>/dev/null)" || return 1
  dirname "$d"
}

# prints "major.minor" of the go on PATH, or nothing
go_version() {
  command -v go >/dev/null 2>&1 || return 0
  GOTOOLCHAIN=local go env GOVERSION 2>/dev/null | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/'
}

version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1)" = "$2" ]; }

# Go builds need Go >= GO_MIN. A Go >= 1.21 that is older fetches a newer toolchain
# itself from the module proxy when GOTOOLCHAIN asks for one.
go_env_for_build() {
  local v; v="$(go_version)"
  [ -n "$v" ] || die "go not found: install Go >= $GO_MIN (https://go.dev/doc/install) and re-run"
  if version_ge "$v" "$GO_MIN"; then
    export GOTOOLCHAIN=local
  elif version_ge "$v" "1.21"; then
    export GOTOOLCHAIN="go${GO_MIN}.0+auto"
  else
    die "go $v is too old: install Go >= $GO_MIN (https://go.dev/doc/install) and re-run"
  fi
}

# --- components -------------------------------------------------------------------------

install_postgres() {
  local bin
  if bin="$(pg_bin_dir)"; then
    say postgres "present: $("$bin/postgres" --version | awk '{print $3}') in $bin"
    return 0
  fi
  # Debian's postgresql package creates and starts a "main" cluster on 5432, which would
  # take the stack's port: ask postgresql-common not to create it (documented switch).
  as_root mkdir -p /etc/postgresql-common/createcluster.d
  echo "create_main_cluster = false" \
    | as_root tee /etc/postgresql-common/createcluster.d/50-mlops-no-main-cluster.conf >/dev/null
  apt_install postgresql
  bin="$(pg_bin_dir)" || die "postgresql installed but initdb/pg_ctl not found"
  say postgres "installed: $("$bin/postgres" --version | awk '{print $3}') in $bin"
}

jar_count() { local f n=0; for f in "$1"/*.jar; do [ -e "$f" ] && n=$((n + 1)); done; echo "$n"; }

install_kafka() {
  local home="$MLOPS_CACHE/kafka-$KAFKA_VERSION"
  local libs="$home/libs" marker="$home/libs/.complete"
  if [ -f "$marker" ] && [ -f "$libs/kafka_2.13-$KAFKA_VERSION.jar" ]; then
    say kafka "present: $KAFKA_VERSION ($(jar_count "$libs") jars in $libs)"
    return 0
  fi
  if ! command -v java >/dev/null 2>&1 || ! command -v mvn >/dev/null 2>&1; then
    apt_install openjdk-17-jre-headless maven
  fi
  local jv; jv="$(java -XshowSettings:properties -version 2>&1 | awk -F' = ' '/java.specification.version/{print $2}')"
  version_ge "${jv:-0}" "17" || die "java $jv found, Kafka 4.x needs Java >= 17"
  mkdir -p "$home"
  cat >"$home/pom.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="http://maven.apache.org/POM/4.0.0 https://maven.apache.org/xsd/maven-4.0.0.xsd">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.mlops</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>$KAFKA_VERSION</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-simple</artifactId>
      <version>$SLF4J_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
  rm -rf "$libs.tmp"
  local log="$LOG_DIR/kafka-$KAFKA_VERSION-mvn.log"
  if ! mvn -q -B -f "$home/pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
      -DoutputDirectory="$libs.tmp" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    die "maven could not resolve kafka_2.13:$KAFKA_VERSION (log: $log)"
  fi
  [ -f "$libs.tmp/kafka_2.13-$KAFKA_VERSION.jar" ] || die "kafka_2.13-$KAFKA_VERSION.jar missing after maven"
  date -u +%FT%TZ >"$libs.tmp/.complete"
  rm -rf "$libs"
  mv "$libs.tmp" "$libs"
  say kafka "installed: $KAFKA_VERSION ($(jar_count "$libs") jars in $libs)"
}

install_versitygw() {
  local bin="$BIN_DIR/versitygw" have=""
  if [ -x "$bin" ] && "$bin" --version >/dev/null 2>&1; then
    if command -v go >/dev/null 2>&1; then
      have="$(GOTOOLCHAIN=local go version -m "$bin" 2>/dev/null | awk '$1=="mod"{print $3; exit}')"
    fi
    if [ -z "$have" ] || [ "$have" = "$VERSITYGW_VERSION" ]; then
      say versitygw "present: ${have:-version unknown} at $bin"
      return 0
    fi
  fi
  go_env_for_build
  local log="$LOG_DIR/versitygw-build.log"
  say versitygw "building $VERSITYGW_VERSION with go install (log: $log)"
  if ! GOBIN="$BIN_DIR" go install "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    die "versitygw build failed (log: $log)"
  fi
  say versitygw "installed: $VERSITYGW_VERSION at $bin"
}

install_jaeger() {
  local bin="$BIN_DIR/jaeger" marker="$BIN_DIR/jaeger.version"
  local log="$LOG_DIR/jaeger-build.log" lock="$MLOPS_CACHE/.jaeger-build.lock"
  # Another build of the same binary (e.g. a parallel run of this script): wait for it.
  exec 9>"$lock"
  if ! flock -n 9; then
    say jaeger "another build holds $lock, waiting for it (log: $log)"
    flock 9
  fi
  # A build started by hand (same output path, not under the lock): wait for it too.
  local waited=0
  while command -v pgrep >/dev/null 2>&1 && pgrep -f "go build -o $bin( |\$)" >/dev/null 2>&1; do
    [ "$waited" -eq 1 ] || say jaeger "a go build of $bin is running, waiting for it"
    waited=1; sleep 5
  done
  if [ -x "$bin" ] && "$bin" --help >/dev/null 2>&1; then
    local have="unknown"; [ -f "$marker" ] && have="$(cat "$marker")"
    if [ "$have" = "unknown" ] || [ "$have" = "$JAEGER_VERSION" ]; then
      say jaeger "present: module $have at $bin"
      flock -u 9; return 0
    fi
  fi
  go_env_for_build
  local src="$MLOPS_CACHE/src/jaeger" rc
  say jaeger "building cmd/jaeger from module $JAEGER_VERSION (a long first build; log: $log)"
  set +e
  (
    set -e
    echo "== $(date -u +%FT%TZ) go mod download github.com/jaegertracing/jaeger@$JAEGER_VERSION"
    # `go install ...@version` refuses this module (replace directives in its go.mod), so
    # fetch the module source and build it as the main module.
    dir="$(go mod download -json "github.com/jaegertracing/jaeger@$JAEGER_VERSION" \
      | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
    [ -n "$dir" ] && [ -d "$dir/cmd/jaeger" ] || { echo "module dir not found"; exit 1; }
    rm -rf "$src"; mkdir -p "$(dirname "$src")"
    cp -R "$dir" "$src"; chmod -R u+w "$src"
    cd "$src"
    # stamp the version the way upstream's Makefile does (`jaeger version` prints it)
    v2="$(sed -n "s|^$JAEGER_VERSION / \(v2\.[0-9.]*\).*|\1|p" CHANGELOG.md | head -1)"
    pkg=github.com/jaegertracing/jaeger/internal/version
    echo "== $(date -u +%FT%TZ) go build ./cmd/jaeger (${v2:-v2 of $JAEGER_VERSION}) in $src"
    go build -ldflags "-X $pkg.latestVersion=${v2:-$JAEGER_VERSION} -X $pkg.date=$(date -u +%FT%TZ)" \
      -o "$bin.tmp" ./cmd/jaeger
    mv "$bin.tmp" "$bin"
    echo "$JAEGER_VERSION" >"$marker"
  ) >"$log" 2>&1
  rc=$?
  set -e
  echo "rc=$rc" >>"$log"
  if [ "$rc" -ne 0 ]; then tail -n 30 "$log" >&2; die "jaeger build failed (log: $log)"; fi
  flock -u 9
  say jaeger "installed: module $JAEGER_VERSION at $bin"
}

install_ghz() {
  local bin="$BIN_DIR/ghz" stamp="$BIN_DIR/.ghz-version"
  if [ -x "$bin" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$GHZ_VERSION" ]; then
    say ghz "present: $GHZ_VERSION at $bin"
    return 0
  fi
  go_env_for_build
  local log="$LOG_DIR/ghz-build.log"
  say ghz "building $GHZ_VERSION with go install (log: $log)"
  if ! GOBIN="$BIN_DIR" go install "github.com/bojand/ghz/cmd/ghz@$GHZ_VERSION" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    die "ghz build failed (log: $log)"
  fi
  echo "$GHZ_VERSION" >"$stamp"
  say ghz "installed: $GHZ_VERSION at $bin"
}

# --- main -------------------------------------------------------------------------------

main() {
  local all=(postgres kafka versitygw jaeger) c
  [ $# -gt 0 ] || set -- "${all[@]}"
  for c in "$@"; do
    case "$c" in
      postgres|kafka|versitygw|jaeger|ghz) ;;
      -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
      *) die "unknown component '$c' (known: ${all[*]})" ;;
    esac
  done
  local t0=$SECONDS
  for c in "$@"; do "install_$c"; done
  say "done" "in $((SECONDS - t0))s; cache: $MLOPS_CACHE"
}

# Sourced (by stack.sh) for its helpers: do nothing else.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then main "$@"; fi
