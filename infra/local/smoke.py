"""End-to-end smoke test of the running local stack (``infra/local/stack.sh check``).

Reads the same environment the services read (``stack.sh env``) and exercises each component
the way the platform uses it: Kafka produce + consume (aiokafka, idempotent producer, a consumer
group), PostgreSQL through asyncpg as the application role, S3 put/get/delete with boto3
against the endpoint, and one OTLP/gRPC span exported to Jaeger and read back from its API v3.
Exit status 0 when every check passes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from urllib.parse import urlsplit


def env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        sys.exit(f'{name} is not set: eval "$(infra/local/stack.sh env)" first')
    return value


async def check_kafka() -> str:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient

    from mlops.settings import KafkaSettings

    env("MLOPS_KAFKA_BOOTSTRAP")
    options = KafkaSettings().client_options()  # SASL_SSL as the operator (admin), from stack.sh env
    topic = f"mlops.smoke.{uuid.uuid4().hex[:8]}"
    payload = uuid.uuid4().bytes
    producer = AIOKafkaProducer(**options, enable_idempotence=True)
    await producer.start()
    try:
        # auto.create.topics.enable: the first send creates the topic (3 partitions)
        meta = await producer.send_and_wait(topic, payload, key=b"smoke", headers=[("ce_id", b"1")])
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        **options,
        group_id=f"smoke-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), timeout=30)
        await consumer.commit()
        partitions = consumer.partitions_for_topic(topic) or set()
    finally:
        await consumer.stop()
    admin = AIOKafkaAdminClient(**options)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()
    assert record.value == payload, "consumed a different value"
    return f"produced and consumed on {topic} (partition {meta.partition}, {len(partitions)} partitions)"


async def check_postgres() -> str:
    import asyncpg

    url = env("MLOPS_DATABASE_URL").replace("postgresql+asyncpg://", "postgresql://", 1)
    conn = await asyncpg.connect(url, timeout=10)
    try:
        version = await conn.fetchval("show server_version")
        user = await conn.fetchval("select current_user")
        await conn.execute("create temporary table smoke (id int primary key, v text)")
        await conn.execute("insert into smoke values (1, 'ok')")
        value = await conn.fetchval("select v from smoke where id = 1")
    finally:
        await conn.close()
    assert value == "ok"
    return f"PostgreSQL {version} as {user}: create/insert/select ok"


def check_s3() -> str:
    import boto3

    root = urlsplit(env("MLOPS_ARTIFACT_ROOT"))
    bucket = root.netloc
    s3 = boto3.client(
        "s3",
        endpoint_url=env("MLOPS_ARTIFACT_S3_ENDPOINT_URL"),
        verify=os.environ.get("MLOPS_ARTIFACT_S3_CA_FILE") or None,
    )
    key = f"smoke/{uuid.uuid4().hex}/blob.bin"
    body = os.urandom(256 * 1024)
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    got = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    s3.delete_object(Bucket=bucket, Key=key)
    assert got == body, "read back different bytes"
    return f"put/get/delete s3://{bucket}/{key} ({len(body)} bytes)"


def check_jaeger() -> str:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    service = f"mlops-smoke-{uuid.uuid4().hex[:6]}"
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=env("OTEL_EXPORTER_OTLP_ENDPOINT"), insecure=True))
    )
    with provider.get_tracer("smoke").start_as_current_span("smoke check") as span:
        trace_id = format(span.get_span_context().trace_id, "032x")
    provider.shutdown()

    query = env("MLOPS_JAEGER_QUERY_URL").rstrip("/")
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(f"{query}/api/v3/traces/{trace_id}", timeout=5) as resp:
                data = json.load(resp)
            spans = [
                s for rs in data["result"]["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]
            ]
            break
        except urllib.error.HTTPError as exc:  # 404 until the batch processor flushes
            if exc.code != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    with urllib.request.urlopen(f"{query}/api/v3/services", timeout=5) as resp:
        services = json.load(resp).get("services", [])
    assert service in services, f"{service} not in {services}"
    return f"span exported over OTLP/gRPC, trace {trace_id} read back ({len(spans)} span) from API v3"


async def main() -> int:
    checks = [
        ("kafka", check_kafka()),
        ("postgres", check_postgres()),
        ("s3", asyncio.to_thread(check_s3)),
        ("jaeger", asyncio.to_thread(check_jaeger)),
    ]
    results = await asyncio.gather(*(c for _, c in checks), return_exceptions=True)
    failed = 0
    for (name, _), result in zip(checks, results, strict=True):
        if isinstance(result, BaseException):
            failed += 1
            print(f"{name:<9} FAILED: {type(result).__name__}: {result}")
        else:
            print(f"{name:<9} ok: {result}")
    return 1 if failed else 0


if __name__ == "__main__":
    # aiokafka logs errors it recovers from (a topic about to be auto-created, the group
    # coordinator of a fresh cluster): the checks assert the outcome
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    sys.exit(asyncio.run(main()))
