"""What the docker-compose.yml tests share: the compose file read and interpolated as Compose does, its
`pki` job run as a script into a folder (the volume, a module fixture), and each service's environment
mapped onto that folder."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from tests.unit.test_deploy_tools import REPO

sys.path.insert(0, str(REPO / "infra/local"))
import pg_roles

COMPOSE = REPO / "docker-compose.yml"
MOUNT = "/etc/mlops/pki"
"""Where each service finds its part of the volume `pki`."""
KAFKA_MOUNT = "/etc/kafka/mlops"
KAFKA_FILES = {"ca.pem", "broker.p12", "cluster-id", "scram", "admin.properties", "server.properties"}
SERVICE_FILES = {
    "ca.pem",
    "cert.pem",
    "key.pem",
    "tokens",
    "aws-credentials",
    "secrets",
    "secrets/MLOPS_KAFKA_SASL_PASSWORD",
}
DATABASE_URL_FILE = "secrets/MLOPS_DATABASE_URL"
"""Every service's but inference's, which has no database."""
POSTGRES_MOUNT = "/etc/postgresql/mlops"
POSTGRES_FILES = {"server.crt", "server.key", "pg_hba.conf"}

_VARIABLE = re.compile(r"\$(?:\$|\{(\w+)(?:(:?[-?])([^}]*))?\}|(\w+))")


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def example_env() -> dict[str, str]:
    text = (REPO / ".env.example").read_text()
    return dict(re.findall(r"^(\w+)=(.*)$", text, re.M))


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation: `$$`, `$X`, `${X}`, `${X:-default}`, `${X-default}`, `${X:?error}`."""

    def one(match: re.Match) -> str:
        if match[0] == "$$":
            return "$"
        name, operator, argument = match[1] or match[4], match[2], match[3]
        value = env.get(name)
        if operator in (":-", "-") and (value is None or (operator == ":-" and not value)):
            return argument
        if operator in (":?", "?") and not value:
            raise ValueError(f"{name}: {argument}")
        return value or ""

    return _VARIABLE.sub(one, text)


def script(anchor: str) -> str:
    return interpolate(compose()[anchor], {})


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the local stack's settings (tests/conftest.py loads them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "OTEL_", "AWS_", "GRPC_"))}
    return env | extra


def service_env(name: str, out: Path, **overrides: str) -> dict[str, str]:
    """The service's environment as compose gives it, its mount mapped onto the job's output folder."""
    env = compose()["services"][name]["environment"]
    values = {key: interpolate(str(value), example_env()) for key, value in env.items()}
    mapped = {key: value.replace(MOUNT, str(out / "services" / name)) for key, value in values.items()}
    return mapped | overrides


def run_pki_job(out: Path) -> subprocess.CompletedProcess[str]:
    job_env = compose()["services"]["pki"]["environment"]
    result = subprocess.run(
        [sys.executable, "-c", script("x-pki-init"), str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=clean_env(**{k: interpolate(v, example_env()) for k, v in job_env.items()}),
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    """The volume `pki` after the job ran once."""
    folder = tmp_path_factory.mktemp("volume")
    made = run_pki_job(folder).stdout
    assert "made ca.pem" in made and "made grpc/registry.key" in made, made
    return folder


def users(out: Path) -> dict[str, str]:
    return json.loads((out / "pki" / "kafka-users.json").read_text())


def s3_secrets(out: Path) -> dict[str, str]:
    return json.loads((out / "pki" / "s3-users.json").read_text())


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def names(cert: x509.Certificate) -> set[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} | set(
        san.get_values_for_type(x509.DNSName)
    )


def uids() -> tuple[int, int, int]:
    """The owners the job gives the broker's, the services' and PostgreSQL's parts, as its script states them."""
    found = re.search(r"KAFKA_UID, SERVICE_UID, POSTGRES_UID = (\d+), (\d+), (\d+)", compose()["x-pki-init"])
    assert found, "the pki job no longer names KAFKA_UID, SERVICE_UID and POSTGRES_UID"
    return int(found[1]), int(found[2]), int(found[3])


def service_files(name: str) -> set[str]:
    return SERVICE_FILES | ({DATABASE_URL_FILE} if name in pg_roles.SERVICES else set())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def use_env(monkeypatch, env: dict[str, str]) -> None:
    for key in list(os.environ):
        if key.startswith(("MLOPS_", "OTEL_", "AWS_")):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
