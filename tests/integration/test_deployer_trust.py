"""The deployer believes a `ModelEvaluated` only as far as the registry confirms it.

Forged events are written with a plain Kafka producer, as anyone who can write the topic could, to the
topics of the in-process deployer of `deployer_helpers` (its harness, the real registry, Kafka, PostgreSQL
and S3). Each is dead-lettered with the reason, and nothing is rolled out.
"""

# The deployer fixture is imported from deployer_helpers, and pytest hands it to the tests by parameter name.
# ruff: noqa: F811

from __future__ import annotations

import uuid

import grpc
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from mlops.bus import ensure_topics, partitions_of
from mlops.events.v1 import deployment_pb2, evaluation_pb2
from mlops.registry.v1 import registry_pb2 as pb
from mlops.settings import BusSettings
from tests.integration.conftest import eventually
from tests.integration.deployer_helpers import (
    Harness,
    evaluated,
    new_model,
    published,
    recorded,
    rollout_of,
)
from tests.integration.deployer_helpers import (  # noqa: F401 - the deployer in-process, as a fixture
    harness as deployer,
)


async def forge(h: Harness, event: evaluation_pb2.ModelEvaluated) -> None:
    """Write `event` as a bare record: no outbox, no envelope beyond its type."""
    producer = AIOKafkaProducer(**h.kafka.client_options())
    await producer.start()
    try:
        await producer.send_and_wait(
            h.topic(evaluation_pb2.ModelEvaluated),
            key=event.model.encode(),
            value=event.SerializeToString(),
            headers=[
                ("ce_type", b"mlops.model.evaluated.v1"),
                ("ce_id", str(uuid.uuid4()).encode()),
                ("ce_source", b"somebody"),
                ("content-type", b"application/protobuf"),
            ],
        )
    finally:
        await producer.stop()


async def dead_letter_of(h: Harness, model: str) -> str:
    """The reason of the dead letter of `model`'s ModelEvaluated."""
    dlq = h.topic(evaluation_pb2.ModelEvaluated) + ".dlq"
    await ensure_topics(h.kafka, BusSettings(), [dlq])
    reader = AIOKafkaConsumer(**h.kafka.client_options(), group_id=None, enable_auto_commit=False)
    await reader.start()
    reasons: list[str] = []
    try:
        partitions = await partitions_of(h.kafka, dlq)
        reader.assign(partitions)
        await reader.seek_to_beginning(*partitions)

        async def found():
            for records in (await reader.getmany(timeout_ms=200)).values():
                reasons.extend(
                    dict(r.headers)["mlops_dlq_reason"].decode() for r in records if r.key == model.encode()
                )
            return bool(reasons)

        await eventually(found, timeout_s=30, what=f"a dead letter of {model}")
    finally:
        await reader.stop()
    return reasons[0]


async def nothing_rolled_out(h: Harness, model: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await rollout_of(h, model)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND, raised.value.details()
    assert await published(h, deployment_pb2.DesiredState, model) == []
    aliases = await h.registry.ListAliases(pb.ListAliasesRequest(model=model))
    assert not aliases.aliases


async def test_a_pass_naming_an_evaluation_the_registry_does_not_hold_is_dead_lettered(deployer, unique):
    h = deployer
    model, (v1,) = await new_model(h, unique, versions=1)
    forged = evaluated(v1)  # a fresh evaluation id: nobody recorded it

    await forge(h, forged)

    reason = await dead_letter_of(h, model)
    assert (
        f"ModelEvaluated names evaluation {forged.evaluation_id}, which the registry does not hold" in reason
    )
    await nothing_rolled_out(h, model)


async def test_a_pass_naming_an_evaluation_the_registry_holds_as_failed_is_dead_lettered(deployer, unique):
    h = deployer
    model, (v1,) = await new_model(h, unique, versions=1)
    failed = await recorded(h, evaluated(v1, passed=False))
    forged = evaluation_pb2.ModelEvaluated()
    forged.CopyFrom(failed)
    forged.passed = True
    for gate in forged.gates:
        gate.passed = True

    await forge(h, forged)

    reason = await dead_letter_of(h, model)
    assert (
        f"ModelEvaluated names evaluation {forged.evaluation_id}, which the registry holds as failed"
        in reason
    )
    await nothing_rolled_out(h, model)


async def test_a_pass_of_another_artifact_than_the_registered_one_is_dead_lettered(deployer, unique):
    h = deployer
    model, (v1,) = await new_model(h, unique, versions=1)
    forged = await recorded(h, evaluated(v1))  # a real pass, of the registered artifact ...
    forged.artifact_uri = "s3://elsewhere/model.onnx"
    forged.artifact_sha256 = "e" * 64  # ... claimed for other bytes

    await forge(h, forged)

    reason = await dead_letter_of(h, model)
    assert f"names artifact sha256 {'e' * 64}, but the registry holds {v1.artifact_sha256}" in reason
    await nothing_rolled_out(h, model)
