"""Integration tests run against the real local stack (`make up`); a missing server is a failure."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest

from mlops.db import Database
from mlops.jaeger import JaegerClient
from mlops.settings import ArtifactSettings, BusSettings, DatabaseSettings, GrpcClientSettings, KafkaSettings
from mlops.telemetry import setup_telemetry

JAEGER_DEFAULT = "http://127.0.0.1:16686"


def _reachable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


@pytest.fixture(scope="session", autouse=True)
def stack() -> None:
    """Fail (never skip) with a clear message when a component of the stack is down."""
    import os

    kafka = KafkaSettings().bootstrap.split(",")[0]
    database = urlparse(DatabaseSettings().url)
    s3 = urlparse(os.environ.get("MLOPS_ARTIFACT_S3_ENDPOINT_URL", "http://127.0.0.1:9000"))
    jaeger = urlparse(os.environ.get("MLOPS_JAEGER_QUERY_URL", JAEGER_DEFAULT))
    wanted = {
        "Kafka": (kafka.rsplit(":", 1)[0], int(kafka.rsplit(":", 1)[1])),
        "PostgreSQL": (database.hostname, database.port or 5432),
        "S3": (s3.hostname, s3.port or 80),
        "Jaeger": (jaeger.hostname, jaeger.port or 80),
    }
    down = [f"{name} at {host}:{port}" for name, (host, port) in wanted.items() if not _reachable(host, port)]
    if down:
        pytest.fail(
            "the local stack is not running (" + ", ".join(down) + "); run `make up` first", pytrace=False
        )


@pytest.fixture(scope="session")
def telemetry():
    handle = setup_telemetry("tests")
    yield handle
    handle.shutdown()


@pytest.fixture(scope="session")
def kafka() -> KafkaSettings:
    return KafkaSettings()


TEST_TOPIC_PREFIX = "tests."
"""Bus tests use their own topics, so that running services never see their synthetic events."""


@pytest.fixture(scope="session")
def bus() -> BusSettings:
    return BusSettings(
        retry_backoff_ms=20,
        retry_backoff_max_ms=100,
        max_attempts=3,
        outbox_poll_interval_ms=200,
        topic_prefix=TEST_TOPIC_PREFIX,
    )


@pytest.fixture(scope="session")
def artifact_settings() -> ArtifactSettings:
    return ArtifactSettings()


@pytest.fixture(scope="session")
async def database():
    db = Database(DatabaseSettings())
    await db.wait_ready(deadline_s=30)
    yield db
    await db.close()


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture(scope="session")
def jaeger_url() -> str:
    import os

    return os.environ.get("MLOPS_JAEGER_QUERY_URL", JAEGER_DEFAULT)


async def eventually(check, *, timeout_s: float = 30.0, interval_s: float = 0.1, what: str = "condition"):
    """Poll `check()` (sync or async) until it returns a truthy value or the deadline passes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last_error: Exception | None = None
    while loop.time() < deadline:
        try:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
        except Exception as error:
            last_error = error
        await asyncio.sleep(interval_s)
    raise AssertionError(
        f"{what} not met within {timeout_s}s" + (f" (last error: {last_error})" if last_error else "")
    )


def service_identity(service: str) -> GrpcClientSettings:
    """Channel security of the stack's service `service`: its own certificate (`svc:<service>`), for a
    test that runs a service's core in process and lets it call peers as that service does."""
    pki = Path(os.environ.get("MLOPS_STACK_DIR", Path(__file__).resolve().parents[2] / ".stack")) / "pki"
    return GrpcClientSettings(
        ca_file=pki / "ca.pem",
        cert_file=pki / "grpc" / f"{service}.pem",
        key_file=pki / "grpc" / f"{service}.key",
        token=None,  # not the operator's, which the tests' environment carries
    )


def jaeger_trace(jaeger_url: str, trace_id: str):
    """Every span of a trace, read back over Jaeger's API v3."""
    client = JaegerClient(jaeger_url)
    try:
        return client.trace(trace_id)
    finally:
        client.close()
