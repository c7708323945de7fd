"""The deployer's rollouts as events drive them, against the real stack (see `deployer_helpers`):
canary steps to production, automatic rollbacks, holds, failed gates, superseded candidates,
blue-green, and malformed events dead-lettered.
"""

# The harness fixture is imported from deployer_helpers, and pytest hands it to the tests by parameter name.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import itertools
import uuid

import grpc
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from opentelemetry import trace
from prometheus_client import REGISTRY
from sqlalchemy import text

from mlops.bus import ensure_topics, partitions_of
from mlops.deployer.v1 import deployer_pb2 as dpb
from mlops.events.v1 import evaluation_pb2
from mlops.registry.v1 import registry_pb2 as pb
from mlops.settings import BusSettings
from services.deployer.tables import SCHEMA
from tests.integration.conftest import eventually, jaeger_trace
from tests.integration.deployer_helpers import (
    FEATURES,
    STEP_SECONDS,
    S,
    claimed,
    deploy_first,
    finished,
    harness,  # noqa: F401 - the deployer in-process, as a fixture
    new_model,
    published,
    rollout_of,
    shares,
)


async def test_a_passed_version_goes_canary_10_50_100_to_production(harness, unique, jaeger_url, telemetry):
    h = harness
    model, (v1, v2) = await new_model(h, unique)

    first = await deploy_first(h, model, v1)
    assert first.strategy == "direct" and first.baseline_version == 0
    assert "first version" in first.reason and "no baseline to split traffic with" in first.reason

    tracer = trace.get_tracer("tests")
    with tracer.start_as_current_span("upstream data commit") as root:
        trace_id = format(root.get_span_context().trace_id, "032x")
        await h.publisher.publish(await claimed(h, v2))
    rollout = await finished(h, model, 2)

    assert rollout.state == S.ROLLOUT_STATE_PROMOTED, rollout.reason
    assert (rollout.strategy, list(rollout.steps), rollout.baseline_version) == ("canary", [10, 50, 100], 1)
    assert rollout.reason.startswith("canary healthy at 10%, 50%, 100%")
    assert [m.traffic_percent for m in rollout.history] == [10, 50, 100, 100]
    assert [m.state for m in rollout.history] == [S.ROLLOUT_STATE_PROGRESSING] * 3 + [
        S.ROLLOUT_STATE_PROMOTED
    ]
    steps_at = [m.progressed_at.ToDatetime() for m in rollout.history]
    assert all((b - a).total_seconds() >= STEP_SECONDS for a, b in itertools.pairwise(steps_at))
    assert rollout.candidate_health.request_count == 200 and rollout.baseline_health.version == 1
    assert rollout.max_prediction_drift == pytest.approx(0.25), (
        "the spec's rollout.max_prediction_drift bounds prediction drift"
    )

    desired = await published(h, S.DesiredState, model, until=lambda f: len(f) >= 5)
    assert [d.generation for d in desired] == [1, 2, 3, 4, 5]
    assert [shares(d) for d in desired] == [
        [(1, "PRODUCTION", 100)],
        [(1, "PRODUCTION", 90), (2, "CANARY", 10)],
        [(1, "PRODUCTION", 50), (2, "CANARY", 50)],
        [(1, "PRODUCTION", 0), (2, "CANARY", 100)],
        [(2, "PRODUCTION", 100)],
    ]
    last = desired[-1]
    assert last.rollout_id == rollout.rollout_id
    assert (last.batching.max_batch_size, last.batching.max_wait_us) == (32, 800)
    served = last.versions[0]
    assert (served.artifact_uri, served.artifact_sha256) == (v2.artifact_uri, v2.artifact_sha256)
    assert list(served.feature_names) == FEATURES and list(served.class_labels) == ["0", "1"]
    assert served.task == "classification"
    assert (await h.deployer.GetDesiredState(dpb.GetDesiredStateRequest(model=model))) == last

    progressed = await published(
        h,
        S.RolloutProgressed,
        model,
        until=lambda f: any(p.state == S.ROLLOUT_STATE_PROMOTED and p.candidate_version == 2 for p in f),
    )
    ours = [p for p in progressed if p.rollout_id == rollout.rollout_id]
    assert [(p.step_index, p.traffic_percent, p.generation) for p in ours] == [
        (0, 10, 2),
        (1, 50, 3),
        (2, 100, 4),
        (2, 100, 5),
    ]
    deployed = await published(h, S.ModelDeployed, model, until=lambda f: len(f) >= 2)
    assert [(d.version, d.previous_version, d.strategy) for d in deployed] == [
        (1, 0, "direct"),
        (2, 1, "canary"),
    ]
    assert deployed[1].generation == 5 and deployed[1].actor == "mlops-deployer"
    assert deployed[1].artifact_sha256 == v2.artifact_sha256

    aliases = await h.registry.ListAliases(pb.ListAliasesRequest(model=model))
    assert {(a.alias, a.version) for a in aliases.aliases} == {("production", 2)}, (
        "canary alias removed at the end"
    )
    ledger = await h.registry.GetAliasHistory(pb.GetAliasHistoryRequest(model=model))
    moves = [(c.alias, c.from_version, c.to_version, c.actor) for c in reversed(ledger.changes)]
    assert moves == [
        ("production", 0, 1, "mlops-deployer via svc:deployer"),
        ("canary", 0, 2, "mlops-deployer via svc:deployer"),
        ("production", 1, 2, "mlops-deployer via svc:deployer"),
        ("canary", 2, 0, "mlops-deployer via svc:deployer"),
    ]

    async def recorded():
        listed = await h.registry.ListDeployments(pb.ListDeploymentsRequest(model=model, version=2))
        return (
            listed.deployments
            if listed.deployments and listed.deployments[0].state == S.ROLLOUT_STATE_PROMOTED
            else None
        )

    records = await eventually(recorded, timeout_s=10, what="the registry's deployment record")
    assert records[0].rollout_id == rollout.rollout_id and records[0].generation == 5

    metric = REGISTRY.get_sample_value
    assert metric("mlops_rollout_state", {"model": model, "state": "PROMOTED"}) == 1
    assert metric("mlops_rollout_state", {"model": model, "state": "PROGRESSING"}) == 0
    assert metric("mlops_rollout_traffic_percent", {"model": model, "version": "2"}) == 100
    assert metric("mlops_rollout_step", {"model": model}) == 2
    assert metric("mlops_rollouts_finished_total", {"model": model, "outcome": "promoted"}) == 2

    calls = [c for c in h.monitor.calls if c.model == model and c.version == 2]
    assert calls and all(c.window_seconds == STEP_SECONDS and c.baseline_version == 1 for c in calls)

    telemetry.provider.force_flush()

    def rollout_spans():
        spans = jaeger_trace(jaeger_url, trace_id)
        names = {s.name for s in spans}
        wanted = {
            f"process {h.topic(evaluation_pb2.ModelEvaluated)}",
            "start rollout",
            "check rollout",
            "/mlops.monitor.v1.Monitor/GetHealth",
            "/mlops.registry.v1.Registry/SetAlias",
            "/mlops.registry.v1.Registry/RecordDeployment",
            f"publish {h.topic(S.DesiredState)}",
            f"publish {h.topic(S.ModelDeployed)}",
        }
        return spans if wanted <= names else None

    spans = await eventually(
        rollout_spans, timeout_s=30, what="the rollout's spans in the data commit's trace"
    )
    checks = [s for s in spans if s.name == "check rollout"]
    assert all(s.attributes["mlops.model.name"] == model for s in checks)
    assert all(int(s.attributes["mlops.model.version"]) == 2 for s in checks)


@pytest.mark.parametrize(
    ("mode", "bound", "words"),
    [
        ("erroring", "max_error_rate", "error rate 0.2 > max_error_rate 0.05"),
        ("slow", "max_p99_latency_ms", "p99 latency 180 ms > max_p99_latency_ms 50 ms"),
    ],
)
async def test_an_unhealthy_candidate_is_rolled_back_automatically(harness, unique, mode, bound, words):
    h = harness
    model, (v1, v2) = await new_model(h, unique, step_seconds=30)
    await deploy_first(h, model, v1)
    h.monitor.modes[(model, 2)] = mode
    await h.publisher.publish(await claimed(h, v2))
    rollout = await finished(h, model, 2)

    assert rollout.state == S.ROLLOUT_STATE_ROLLED_BACK
    assert rollout.reason == f"{words} at step 1 of 3 (10%)", (
        "broken mid-step: long before the 30 s step ends"
    )
    (event,) = await published(h, S.ModelRolledBack, model, until=lambda f: len(f) >= 1)
    assert (event.from_version, event.to_version, event.automatic, event.actor) == (
        2,
        1,
        True,
        "mlops-deployer",
    )
    assert event.reason == rollout.reason and words in event.reason
    assert event.candidate_health.request_count == 200 and event.baseline_health.version == 1
    desired = await published(h, S.DesiredState, model, until=lambda f: len(f) >= 3)
    assert shares(desired[-1]) == [(1, "PRODUCTION", 100)] and desired[-1].generation == 3
    production = await h.registry.GetModelVersion(pb.GetModelVersionRequest(model=model, alias="production"))
    assert production.version == 1
    aliases = await h.registry.ListAliases(pb.ListAliasesRequest(model=model))
    assert {a.alias for a in aliases.aliases} == {"production"}
    assert REGISTRY.get_sample_value("mlops_rollbacks_total", {"model": model, "automatic": "true"}) == 1
    assert REGISTRY.get_sample_value("mlops_rollout_traffic_percent", {"model": model, "version": "2"}) == 0


@pytest.mark.parametrize(
    ("mode", "words"),
    [
        ("silent", "the monitor did not answer (DeadlineExceeded"),
        ("few", "only 3 requests answered, fewer than min_requests 20"),
    ],
)
async def test_no_answer_or_too_few_requests_hold_and_never_promote(harness, unique, mode, words):
    h = harness
    model, (_v1, v2) = await new_model(h, unique, steps=(100,), production=1)
    h.monitor.modes[(model, 2)] = mode
    await h.publisher.publish(await claimed(h, v2))

    async def holding():
        rollout = await rollout_of(h, model)
        return rollout if words in rollout.reason else None

    rollout = await eventually(holding, timeout_s=20, what="the hold")
    assert rollout.state == S.ROLLOUT_STATE_PROGRESSING and rollout.reason.startswith(
        "holding at step 1 of 1 (100%)"
    )
    await asyncio.sleep(3 * STEP_SECONDS)  # well past the step: still held, never promoted
    rollout = await rollout_of(h, model)
    assert rollout.state == S.ROLLOUT_STATE_PROGRESSING and not rollout.HasField("finished_at")
    holds = [m for m in rollout.history if words in m.reason]
    assert len(holds) == 1, "a hold is announced once, not every tick"
    production = await h.registry.GetModelVersion(pb.GetModelVersionRequest(model=model, alias="production"))
    assert production.version == 1

    h.monitor.modes[(model, 2)] = "healthy"  # the monitor answers again: the step is judged and passes
    rollout = await finished(h, model)
    assert rollout.state == S.ROLLOUT_STATE_PROMOTED


async def test_a_failed_gate_deploys_nothing(harness, unique):
    h = harness
    model, (v1,) = await new_model(h, unique, versions=1)
    event_id = str(uuid.uuid4())
    await h.publisher.publish(await claimed(h, v1, passed=False), event_id=event_id)

    async def handled():
        async with h.core.database.session() as session:
            count = await session.exec(
                text(f'SELECT count(*) FROM "{SCHEMA}".inbox WHERE event_id = :e'), params={"e": event_id}
            )
            return count.scalar_one() == 1

    await eventually(handled, what="the failed evaluation handled")
    await asyncio.sleep(1)  # and a few ticks of the watch
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await rollout_of(h, model)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND and "has no rollouts" in raised.value.details()
    assert await published(h, S.DesiredState, model) == []
    aliases = await h.registry.ListAliases(pb.ListAliasesRequest(model=model))
    assert not aliases.aliases


async def test_a_newer_candidate_supersedes_the_running_rollout(harness, unique):
    h = harness
    model, (_v1, v2, v3) = await new_model(h, unique, versions=3, step_seconds=30, production=1)
    await h.publisher.publish(await claimed(h, v2))
    await eventually(lambda: rollout_of(h, model), what="v2's rollout")
    await h.publisher.publish(await claimed(h, v3))

    async def v3_running():
        rollout = await rollout_of(h, model)
        return rollout if rollout.candidate_version == 3 else None

    newer = await eventually(v3_running, what="v3's rollout")
    assert newer.baseline_version == 1 and newer.state == S.ROLLOUT_STATE_PROGRESSING
    listed = await h.deployer.ListRollouts(dpb.ListRolloutsRequest(model=model))
    assert [r.candidate_version for r in listed.rollouts] == [3, 2]
    older = listed.rollouts[1]
    assert older.state == S.ROLLOUT_STATE_ABORTED
    assert older.reason == f"superseded by v3 (rollout {newer.rollout_id})"
    desired = await published(h, S.DesiredState, model, until=lambda f: len(f) >= 2)
    assert shares(desired[-1]) == [(1, "PRODUCTION", 90), (3, "CANARY", 10)]
    canary = await h.registry.GetModelVersion(pb.GetModelVersionRequest(model=model, alias="canary"))
    assert canary.version == 3

    async def recorded():
        listed = await h.registry.ListDeployments(pb.ListDeploymentsRequest(model=model))
        return {(d.version, d.state) for d in listed.deployments} == {
            (2, S.ROLLOUT_STATE_ABORTED),
            (3, S.ROLLOUT_STATE_PROGRESSING),
        }

    await eventually(recorded, timeout_s=10, what="both rollouts recorded in the registry")
    # an older passed candidate arriving late changes nothing
    await h.publisher.publish(await claimed(h, v2))
    await asyncio.sleep(1.5)
    assert (await rollout_of(h, model)).rollout_id == newer.rollout_id


async def test_blue_green_switches_at_once_and_keeps_blue_for_one_step(harness, unique):
    h = harness
    model, (_v1, v2) = await new_model(h, unique, strategy="blue_green", production=1)
    h.monitor.modes[(model, 2)] = "unknown"  # green sees no traffic at first: the monitor has no figures
    await h.publisher.publish(await claimed(h, v2))
    await eventually(lambda: rollout_of(h, model), what="the rollout")

    async def switched():
        rollout = await rollout_of(h, model)
        return rollout if rollout.step_index == 1 else None

    await eventually(switched, timeout_s=15, what="all traffic on green")
    h.monitor.modes[(model, 2)] = "healthy"
    rollout = await finished(h, model)
    assert rollout.state == S.ROLLOUT_STATE_PROMOTED
    desired = await published(h, S.DesiredState, model, until=lambda f: len(f) >= 3)
    assert [shares(d) for d in desired] == [
        [(1, "PRODUCTION", 100), (2, "CANARY", 0)],
        [(1, "PRODUCTION", 0), (2, "CANARY", 100)],
        [(2, "PRODUCTION", 100)],
    ]


async def test_malformed_model_evaluated_events_go_to_the_dead_letters(harness, unique):
    h = harness
    dlq = h.topic(evaluation_pb2.ModelEvaluated) + ".dlq"
    key = f"broken-{unique}"
    producer = AIOKafkaProducer(**h.kafka.client_options())
    await producer.start()
    try:
        await producer.send_and_wait(
            h.topic(evaluation_pb2.ModelEvaluated),
            key=key.encode(),
            value=b"\xff\x00 not protobuf",
            headers=[("ce_type", b"mlops.model.evaluated.v1"), ("content-type", b"application/protobuf")],
        )
    finally:
        await producer.stop()
    # Refused at decode by the bus's event checks, before the deployer sees it ...
    await h.publisher.publish(evaluation_pb2.ModelEvaluated(model="", version=0, passed=True), key=key)
    # ... and refused by the deployer itself: a version 0 is well formed but names nothing to roll out.
    await h.publisher.publish(evaluation_pb2.ModelEvaluated(model=key, version=0, passed=True), key=key)

    reader = AIOKafkaConsumer(**h.kafka.client_options(), group_id=None, enable_auto_commit=False)
    await reader.start()
    reasons = []
    try:
        await ensure_topics(h.kafka, BusSettings(), [dlq])
        partitions = await partitions_of(h.kafka, dlq)
        reader.assign(partitions)
        await reader.seek_to_beginning(*partitions)

        async def both():
            for records in (await reader.getmany(timeout_ms=200)).values():
                for record in records:
                    if record.key == key.encode():
                        reasons.append(dict(record.headers)["mlops_dlq_reason"].decode())
            return len(reasons) >= 3

        await eventually(both, timeout_s=30, what="three dead letters")
    finally:
        await reader.stop()
    assert any("does not parse as ModelEvaluated" in r for r in reasons), reasons
    assert any("model: is required" in r for r in reasons), reasons
    assert any(
        "ModelEvaluated cannot be rolled out: version must be 1 or more, got 0" in r for r in reasons
    ), reasons
