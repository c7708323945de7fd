# shellcheck shell=bash
# The local stack's s3: sourced by infra/local/stack.sh, which defines the settings and helpers
# used here. Each component provides <name>_ports/_comm/_sig/_addr/_pid/_check/_start/_ready/
# _up_check/_stop/_purge for the generic process handling in stack.sh.

# --- s3 (versitygw) ---------------------------------------------------------------------

S3_DIR="$STACK/s3"
# versitygw's internal IAM: the services' accounts (infra/local/s3_accounts.py), secrets inside (0600)
S3_IAM_DIR="$S3_DIR/iam"

s3_ports() { echo "$S3_PORT"; }
s3_comm() { echo versitygw; }
s3_sig() { echo "$S3_DIR/data"; }
s3_addr() { echo "$(s3_endpoint) bucket $S3_BUCKET"; }
# TLS with the stack's certificate (infra/local/pki.py: s3.pem for 127.0.0.1 and localhost); clients
# verify it against <stack>/clients/ca.pem (MLOPS_ARTIFACT_S3_CA_FILE)
s3_endpoint() { echo "https://$HOST:$S3_PORT"; }
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
  [ -f "$PKI/s3.pem" ] && [ -f "$PKI/s3.key" ] || fail "no $PKI/s3.pem or .key: infra/local/pki.py makes them"
  mkdir -p "$S3_DIR/data"
  if ! s3_sidecar && ! xattr_ok "$S3_DIR/data"; then
    fail "the filesystem of $S3_DIR/data ($(df -PT "$S3_DIR/data" | awk 'NR==2{print $2}')) has no user extended attributes, which versitygw's posix backend needs: put the stack on ext4/xfs/btrfs (MLOPS_STACK_DIR=...) or set MLOPS_S3_SIDECAR=1 to keep metadata in a sidecar directory"
  fi
}

# What the server is started with besides its keys; a server started otherwise (an older stack's,
# without the internal IAM or TLS, or with a certificate pki.py has since renewed) is restarted by `up`.
s3_options() { echo "iam-dir $S3_IAM_DIR tls $(short_hash "$(cat "$PKI/s3.pem")")"; }

s3_start() {
  local extra=()
  if s3_sidecar; then mkdir -p "$S3_DIR/meta"; extra=(--sidecar "$S3_DIR/meta"); fi
  mkdir -p "$S3_IAM_DIR"; chmod 0700 "$S3_IAM_DIR"
  # keys through the environment, not the command line (which any user can read)
  ROOT_ACCESS_KEY_ID="$S3_ACCESS_KEY" ROOT_SECRET_ACCESS_KEY="$S3_SECRET_KEY" \
    setsid nohup "$VERSITYGW_BIN" --port "$HOST:$S3_PORT" --region "$S3_REGION" --quiet \
    --cert "$PKI/s3.pem" --key "$PKI/s3.key" \
    --iam-dir "$S3_IAM_DIR" posix "${extra[@]}" "$S3_DIR/data" >>"$LOGS/s3.log" 2>&1 </dev/null 8>&- &
  echo $! >"$RUN/s3.pid"
  s3_credentials >"$RUN/s3.credentials"
  s3_options >"$RUN/s3.options"
}

# versitygw reads its root credentials and options at start only: `up` restarts it when they
# changed (a hash of the credentials is kept, not the secret)
s3_credentials() { short_hash "$S3_ACCESS_KEY:$S3_SECRET_KEY"; }
s3_changed() {
  if [ "$(cat "$RUN/s3.credentials" 2>/dev/null)" != "$(s3_credentials)" ]; then
    echo "its root credentials"; return 0
  fi
  local options
  options="$(cat "$RUN/s3.options" 2>/dev/null)"
  if [ "$options" != "$(s3_options)" ]; then
    case "$options" in
      *" tls "*) echo "its TLS certificate or options" ;;
      *iam-dir*) echo "TLS with the stack's certificate" ;;
      *) echo "internal IAM for the services' accounts" ;;
    esac
    return 0
  fi
  return 1
}

s3_ready() {
  port_open "$S3_PORT" || return 1
  local py rc=3
  if py="$(python_bin)"; then
    rc=0
    AWS_ACCESS_KEY_ID="$S3_ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$S3_SECRET_KEY" \
      "$py" "$HERE/probe.py" s3 "$(s3_endpoint)" --ca "$PKI/ca.pem" ${1:+"$1"} >/dev/null 2>&1 || rc=$?
  fi
  if [ "$rc" -ne 3 ]; then return "$rc"; fi
  # no boto3 (probe.py exits 3): curl signs with SigV4 too (the payload hash header is required)
  local req=(curl -fsS -o /dev/null --max-time 5 --cacert "$PKI/ca.pem" --aws-sigv4 "aws:amz:$S3_REGION:s3"
    -u "$S3_ACCESS_KEY:$S3_SECRET_KEY"
    -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
  "${req[@]}" "$(s3_endpoint)/" 2>/dev/null || return 1
  if [ -n "${1:-}" ]; then
    "${req[@]}" -I "$(s3_endpoint)/$1" 2>/dev/null \
      || "${req[@]}" -X PUT "$(s3_endpoint)/$1" 2>/dev/null
  fi
}
# The services' accounts and the bucket's policy, as the root account (infra/local/s3_accounts.py:
# keys through the environment; <stack>/pki/s3-users.json and <stack>/pki/s3/<service>.env, 0600).
s3_accounts() {
  ROOT_ACCESS_KEY_ID="$S3_ACCESS_KEY" ROOT_SECRET_ACCESS_KEY="$S3_SECRET_KEY" \
    "$(python_bin)" "$HERE/s3_accounts.py" apply --pki "$PKI" --endpoint "$(s3_endpoint)" \
    --ca "$PKI/ca.pem" --bucket "$S3_BUCKET" --region "$S3_REGION"
}
# ListBuckets, and the bucket; then the accounts and the policy (errors to the log: wait_ready polls
# this quietly)
s3_up_check() { s3_ready "$S3_BUCKET" && s3_accounts 2>>"$LOGS/s3.log"; }
s3_stop() { kill_gracefully "$1"; }
s3_purge() { rm -rf "$S3_DIR"; }
