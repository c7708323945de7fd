"""No secret reaches a log or a span: every credential of the local stack is searched for in every
service's log and in every span the services exported to Jaeger during the run (the end-to-end tests
before this one drive the whole loop, so every code path that could print a setting has run).

The stack's credentials are generated per stack (never the development defaults), so that finding a
value in a log means a leak, not a coincidence with a common word."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
STACK = Path(os.environ.get("MLOPS_STACK_DIR", ROOT / ".stack"))
SERVICES = ("registry", "trainer", "evaluator", "deployer", "monitor", "inference")
SHORTEST_SECRET = 16
DEVELOPMENT_DEFAULTS = frozenset({"mlops", "mlops-local-secret", "change-me", "change-me-too"})


def stack_secrets() -> dict[str, str]:
    """Every credential the stack holds, by where it comes from."""
    found: dict[str, str] = {}
    users = STACK / "pki" / "kafka-users.json"
    if users.exists():
        for name, entry in json.loads(users.read_text()).items():
            found[f"Kafka password of {name}"] = entry["password"] if isinstance(entry, dict) else entry
    roles = STACK / "pki" / "pg-users.json"
    if roles.exists():
        for name, value in json.loads(roles.read_text()).items():
            found[f"PostgreSQL password of {name}"] = value
    for token in sorted((STACK / "clients").glob("*.token")):
        found[f"gRPC token of {token.stem}"] = token.read_text().strip()
    for key in sorted((STACK / "pki" / "grpc").glob("*.key")) + sorted((STACK / "clients").glob("*.key")):
        # a private key's first line of base64: long enough to be unique, short enough to be found whole
        found[f"gRPC private key {key.parent.name}/{key.name}"] = key.read_text().splitlines()[1]
    password = urlparse(os.environ.get("MLOPS_DATABASE_URL", "")).password
    if password:
        found["PostgreSQL password"] = unquote(password)
    if os.environ.get("AWS_SECRET_ACCESS_KEY"):
        found["S3 secret key"] = os.environ["AWS_SECRET_ACCESS_KEY"]
    if os.environ.get("MLOPS_KAFKA_SASL_PASSWORD"):
        found["Kafka password of the local operator"] = os.environ["MLOPS_KAFKA_SASL_PASSWORD"]
    return found


@pytest.fixture(scope="module")
def secrets() -> dict[str, str]:
    found = stack_secrets()
    assert found, "the stack holds no credential at all"
    weak = sorted(
        name for name, value in found.items() if len(value) < SHORTEST_SECRET or value in DEVELOPMENT_DEFAULTS
    )
    assert not weak, f"development credentials in use (shorter than {SHORTEST_SECRET}): {weak}"
    return found


def leaks(text: str, secrets: dict[str, str]) -> list[str]:
    return sorted(name for name, value in secrets.items() if value in text)


def test_no_secret_in_any_service_log(secrets):
    searched = 0
    for service in SERVICES:
        log = STACK / "logs" / f"{service}.log"
        assert log.exists(), f"{service} has no log at {log}"
        text = log.read_text(errors="replace")
        searched += len(text)
        found = leaks(text, secrets)
        assert not found, f"{service}'s log holds: {found}"
    print(f"\n{len(secrets)} secrets searched in {searched:,} characters of service logs")


def test_no_secret_in_any_exported_span(secrets, jaeger_url):
    end = datetime.now(UTC)
    start = end - timedelta(hours=6)
    spans = 0
    with httpx.Client(base_url=jaeger_url, timeout=30) as client:
        for service in SERVICES:
            reply = client.get(
                "/api/v3/traces",
                params={
                    "query.service_name": f"mlops-{service}",
                    "query.start_time_min": start.isoformat().replace("+00:00", "Z"),
                    "query.start_time_max": end.isoformat().replace("+00:00", "Z"),
                    "query.num_traces": 500,
                },
            )
            if reply.status_code == 404:
                continue  # no trace of this service in the window
            assert reply.status_code == 200, reply.text[:500]
            spans += reply.text.count('"spanId"')
            found = leaks(reply.text, secrets)
            assert not found, f"spans of mlops-{service} hold: {found}"
    assert spans > 0, "no span exported by any service: nothing was searched"
    print(f"\n{len(secrets)} secrets searched in {spans:,} spans")
