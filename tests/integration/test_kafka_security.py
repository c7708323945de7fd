"""The local Kafka's only client listener (SASL_SSL, SCRAM-SHA-512, ACLs from mlops.bus.acl) on the real broker.

Clients are built from KafkaSettings with the stack's CA, so these tests also prove that the
settings make a working TLS context. Writes that must succeed go to the tests' twins of the topics
(prefix "tests.", which `stack.sh up` gives the same ACLs), never to the topics the running services
read; writes that must be refused aim at the real topics, since nothing lands there.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import create_conn
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
)
from aiokafka.protocol.admin import ApiVersionRequest

from mlops.bus import partitions_of
from mlops.settings import KafkaSettings
from tests.integration.conftest import TEST_TOPIC_PREFIX

ROOT = Path(__file__).resolve().parents[2]
STACK = Path(os.environ.get("MLOPS_STACK_DIR", ROOT / ".stack"))
SECURE = os.environ.get("MLOPS_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
CONTROLLER = f"127.0.0.1:{os.environ.get('MLOPS_KAFKA_CONTROLLER_PORT', '9093')}"


@pytest.fixture(scope="module")
def passwords() -> dict[str, str]:
    users = STACK / "pki" / "kafka-users.json"
    ca = STACK / "clients" / "ca.pem"
    if not users.exists() or not ca.exists():
        pytest.fail(f"{users} or {ca} is missing: the stack predates the secured listener; run `make up`")
    return json.loads(users.read_text())


def secure(identity: str, password: str) -> KafkaSettings:
    return KafkaSettings(
        bootstrap=SECURE,
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username=identity,
        sasl_password=password,
        ssl_cafile=STACK / "clients" / "ca.pem",
        request_timeout_ms=10_000,
    )


async def producer_for(settings: KafkaSettings) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(**settings.client_options())
    await producer.start()
    return producer


async def connect(settings: KafkaSettings):
    host, port = settings.bootstrap.rsplit(":", 1)
    options = settings.client_options()
    return await create_conn(
        host,
        int(port),
        request_timeout_ms=settings.request_timeout_ms,
        ssl_context=options.get("ssl_context"),
        security_protocol=settings.security_protocol,
        sasl_mechanism=settings.sasl_mechanism,
        sasl_plain_username=settings.sasl_username,
        sasl_plain_password=settings.sasl_password.get_secret_value() if settings.sasl_password else None,
    )


async def read_back(settings: KafkaSettings, topic: str, key: bytes, timeout_s: float = 20.0) -> bytes:
    """The value of the record with `key` in `topic`, read without a consumer group."""
    consumer = AIOKafkaConsumer(**settings.client_options(), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout_s
        partitions = await partitions_of(settings, topic)
        assert partitions, f"{topic} has no partitions visible to {settings.sasl_username}"
        consumer.assign(partitions)
        await consumer.seek_to_beginning()
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for record in (r for records in batch.values() for r in records):
                if record.key == key:
                    return record.value
        raise AssertionError(f"no record with key {key!r} in {topic} after {timeout_s}s")
    finally:
        await consumer.stop()


async def test_upstream_publishes_data_commits_over_sasl_ssl(passwords) -> None:
    producer = await producer_for(secure("upstream", passwords["upstream"]))
    key = uuid.uuid4().hex.encode()
    try:
        metadata = await producer.send_and_wait(TEST_TOPIC_PREFIX + "mlops.data.committed", b"{}", key=key)
    finally:
        await producer.stop()
    assert metadata.offset >= 0
    assert (
        await read_back(secure("admin", passwords["admin"]), TEST_TOPIC_PREFIX + "mlops.data.committed", key)
        == b"{}"
    )


async def test_upstream_may_not_publish_an_evaluation(passwords) -> None:
    producer = await producer_for(secure("upstream", passwords["upstream"]))
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            await producer.send_and_wait("mlops.model.evaluated", b'{"passed": true}', key=b"wine")
    finally:
        await producer.stop()


async def test_the_evaluator_writes_evaluations_but_not_desired_state(passwords) -> None:
    producer = await producer_for(secure("evaluator", passwords["evaluator"]))
    key = uuid.uuid4().hex.encode()
    try:
        await producer.send_and_wait(TEST_TOPIC_PREFIX + "mlops.model.evaluated", b"evaluation", key=key)
        with pytest.raises(TopicAuthorizationFailedError):
            await producer.send_and_wait("mlops.deployments.desired", b"desired", key=b"wine")
    finally:
        await producer.stop()
    assert await read_back(
        secure("admin", passwords["admin"]), TEST_TOPIC_PREFIX + "mlops.model.evaluated", key
    )


async def test_the_admin_sees_and_reads_every_topic(passwords, kafka) -> None:
    admin = secure("admin", passwords["admin"])
    key = uuid.uuid4().hex.encode()
    producer = await producer_for(admin)
    try:  # at least one topic with a record of this run, on a fresh stack too
        await producer.send_and_wait(TEST_TOPIC_PREFIX + "mlops.model.evaluated", b"by admin", key=key)
    finally:
        await producer.stop()
    assert kafka.sasl_username == "admin", "stack.sh env gives the local operator's identity"
    listing = AIOKafkaConsumer(**kafka.client_options(), group_id=None)
    consumer = AIOKafkaConsumer(**admin.client_options(), group_id=None, enable_auto_commit=False)
    await listing.start()
    await consumer.start()
    try:
        everything = {t for t in await listing.topics() if not t.startswith("__")}
        visible = await consumer.topics()
        assert everything <= visible, f"hidden from the admin: {sorted(everything - visible)}"
        partitions = [tp for topic in sorted(everything) for tp in await partitions_of(admin, topic)]
        assert len(partitions) >= len(everything)
        consumer.assign(partitions)
        await consumer.seek_to_beginning()
        for tp in partitions:
            assert await consumer.position(tp) >= 0  # offsets of every topic: DESCRIBE everywhere
    finally:
        await consumer.stop()
        await listing.stop()
    assert await read_back(admin, TEST_TOPIC_PREFIX + "mlops.model.evaluated", key) == b"by admin"


async def test_a_wrong_password_is_refused(passwords) -> None:
    with pytest.raises(SaslAuthenticationFailed, match=r"(?i)authentication failed"):
        conn = await connect(secure("upstream", passwords["upstream"] + "x"))
        conn.close()
    producer = AIOKafkaProducer(**secure("upstream", "not-the-password").client_options())
    with pytest.raises(KafkaConnectionError):
        await producer.start()
    await producer.stop()


@pytest.mark.parametrize("address", [SECURE, CONTROLLER], ids=["clients", "controller"])
async def test_a_plaintext_client_is_refused_by_every_listener(address) -> None:
    plaintext = KafkaSettings(bootstrap=address, security_protocol="PLAINTEXT", request_timeout_ms=5_000)
    with pytest.raises((KafkaConnectionError, asyncio.TimeoutError, ConnectionError)):
        conn = await connect(plaintext)
        try:
            await conn.send(ApiVersionRequest())  # any listener of its protocol answers it
        finally:
            conn.close()


async def test_tls_without_a_login_is_refused() -> None:
    anonymous = KafkaSettings(
        bootstrap=SECURE,
        security_protocol="SSL",
        ssl_cafile=STACK / "clients" / "ca.pem",
        request_timeout_ms=5_000,
    )
    with pytest.raises((KafkaConnectionError, asyncio.TimeoutError, ConnectionError)):
        conn = await connect(anonymous)
        try:
            await conn.send(_metadata_request())
        finally:
            conn.close()


async def test_a_service_cannot_read_another_services_subscription(passwords) -> None:
    # the evaluator subscribes to model.trained; the monitor does not, nor may it join the evaluator's group
    topic = TEST_TOPIC_PREFIX + "mlops.model.trained"
    producer = await producer_for(secure("trainer", passwords["trainer"]))
    try:  # the topic exists and holds a record, so that only the ACL stands in the way
        await producer.send_and_wait(topic, b"trained", key=uuid.uuid4().hex.encode())
    finally:
        await producer.stop()
    monitor = secure("monitor", passwords["monitor"])
    admin = AIOKafkaAdminClient(**monitor.client_options())
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    assert described["error_code"] == TopicAuthorizationFailedError.errno, described
    assert await partitions_of(secure("evaluator", passwords["evaluator"]), topic), "its subscriber sees it"
    grouped = AIOKafkaConsumer(
        "mlops.inference.logged",  # one the monitor does read, in a group that is not the monitor's
        **monitor.client_options(),
        group_id="mlops-evaluator",
        enable_auto_commit=False,
    )
    with pytest.raises(GroupAuthorizationFailedError):
        await grouped.start()
        try:
            await asyncio.wait_for(grouped.getone(), timeout=20)
        finally:
            await grouped.stop()


def _metadata_request():
    from aiokafka.protocol.metadata import MetadataRequest

    return MetadataRequest([])
