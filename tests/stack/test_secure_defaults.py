"""The running local stack is secure by default: the operator's identity in `.stack/env`, each service
its own Kafka principal, random credentials kept private, and `up` restarting a broker whose
configuration changed (how existing stacks move to a new listener set)."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlparse

ROOT = Path(__file__).resolve().parents[2]
STACK = Path(os.environ.get("MLOPS_STACK_DIR", ROOT / ".stack"))
SERVICES = sorted(path.parent.name for path in (ROOT / "services").glob("*/__main__.py"))


def exported(path: Path) -> dict[str, str]:
    """`export NAME=value` lines as a shell would read them."""
    script = f"set -a; . {path}; env -0"
    out = subprocess.run(["bash", "-c", script], capture_output=True, check=True, env={}).stdout
    return dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)


def private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


def test_the_env_file_gives_the_operator_admin_and_the_stacks_random_credentials() -> None:
    env = exported(STACK / "env")
    users = json.loads((STACK / "pki" / "kafka-users.json").read_text())
    generated = json.loads((STACK / "pki" / "local-secrets.json").read_text())
    assert env["MLOPS_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["MLOPS_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert env["MLOPS_KAFKA_SASL_USERNAME"] == "admin"
    assert env["MLOPS_KAFKA_SASL_PASSWORD"] == users["admin"]
    assert Path(env["MLOPS_KAFKA_SSL_CAFILE"]).is_absolute() and Path(env["MLOPS_KAFKA_SSL_CAFILE"]).is_file()
    if not os.environ.get("MLOPS_PG_PASSWORD"):
        assert unquote(urlparse(env["MLOPS_DATABASE_URL"]).password or "") == generated["pg_password"]
    if not os.environ.get("MLOPS_S3_SECRET_KEY"):
        assert env["AWS_SECRET_ACCESS_KEY"] == generated["s3_secret_key"]
    for path in (STACK / "env", STACK / "pki" / "local-secrets.json", STACK / "pki" / "kafka-users.json"):
        assert private(path), f"{path} is readable by others"


def test_each_service_logs_in_to_kafka_as_itself() -> None:
    users = json.loads((STACK / "pki" / "kafka-users.json").read_text())
    for name in SERVICES:
        state = json.loads((STACK / "run" / f"{name}.state").read_text())
        environ = Path(f"/proc/{state['pid']}/environ").read_bytes().split(b"\0")
        env = dict(item.decode().split("=", 1) for item in environ if b"=" in item)
        assert env.get("MLOPS_KAFKA_SASL_USERNAME") == name, name
        assert env.get("MLOPS_KAFKA_SASL_PASSWORD") == users[name], name


def kafka_pid() -> str:
    return (STACK / "run" / "kafka.pid").read_text().strip()


def test_up_restarts_a_broker_whose_configuration_changed() -> None:
    props = STACK / "kafka" / "server.properties"
    before = kafka_pid()
    with props.open("a") as f:
        f.write("# an older version of stack.sh wrote something else\n")
    up = subprocess.run(
        ["bash", "infra/local/stack.sh", "up", "kafka"], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert up.returncode == 0, up.stdout + up.stderr
    assert re.search(r"kafka\s+configuration changed .*restarting", up.stdout), up.stdout
    assert kafka_pid() != before
    assert "an older version" not in props.read_text()
    again = subprocess.run(
        ["bash", "infra/local/stack.sh", "up", "kafka"], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert again.returncode == 0 and "already running" in again.stdout, again.stdout + again.stderr
    status = subprocess.run(
        ["bash", "infra/local/stack.sh", "status", "kafka"], capture_output=True, cwd=ROOT
    )
    assert status.returncode == 0, "up returns when the broker is ready"
