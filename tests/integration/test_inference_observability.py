"""The inference server seen from outside: the inference log, traces in Jaeger, readiness and
the dead letters of states no replica can load."""

# The fixtures imported from inference_helpers reach the tests by parameter name.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import uuid

import grpc
import numpy as np
import pytest
from opentelemetry import trace

from inference import grpc_service_pb2 as oip
from inference import grpc_service_pb2_grpc
from mlops.bus import EventPublisher
from mlops.event_catalog import spec_for
from mlops.events.v1 import deployment_pb2, monitoring_pb2
from mlops.grpc import open_channel
from mlops.settings import BusSettings, KafkaSettings
from mlops.store import open_store
from services.inference.app import InferenceApp
from tests.integration.bus_helpers import raw_reader
from tests.integration.conftest import eventually, jaeger_trace
from tests.integration.inference_helpers import (  # noqa: F401 - shared fixtures and helpers
    PRODUCTION,
    _records,
    harness,
    models,
    name,
    probabilities,
    request,
    sample,
    server_settings,
    state,
    topics_bus,
    triton_script,
    version,
)

# --- the inference log --------------------------------------------------------------------------------


async def test_inference_logged_carries_each_row_and_failures(kafka, harness, models):
    model = name()
    trained = models.wine_a
    await harness.serve(state(model, 1, version(trained, 1)))
    topic = harness.bus.topic_prefix + spec_for(monitoring_pb2.InferenceLogged).topic
    rows = trained.rows[:3]
    async with raw_reader(kafka, topic) as reader:
        await harness.stub.ModelInfer(request(model, rows, request_id="logged-7"))
        bad = request(model, rows[:1], request_id="logged-8")
        bad.raw_input_contents[0] = b"\0"
        with pytest.raises(grpc.aio.AioRpcError):
            await harness.stub.ModelInfer(bad)
        records = await _records(reader, model, want=lambda seen: len(seen) >= 4)
    by_id = {record.request_id: record for record in records}
    expected = trained.expected(rows)
    for row in range(3):
        record = by_id[f"logged-7/{row}"]
        assert record.version == 1 and record.role == PRODUCTION and not record.error
        np.testing.assert_allclose(record.features, rows[row], rtol=1e-6)
        np.testing.assert_allclose(record.outputs, expected["probabilities"][row], rtol=1e-5, atol=1e-6)
        assert record.label == trained.class_labels[expected["label"][row]]
        assert record.latency_us > 0 and record.timestamp.seconds > 0
    failed = by_id["logged-8"]
    assert failed.version == 1 and "INVALID_ARGUMENT" in failed.error and not failed.outputs
    # The counter moves once the broker has acknowledged the batch, which may be after a reader saw it.
    await eventually(
        lambda: sample("mlops_inference_log_records_total", model=model) >= 4,
        timeout_s=10,
        what="the logged records counted",
    )


async def test_logging_to_an_unreachable_kafka_drops_and_counts(
    kafka, topics_bus, artifact_settings, harness, models
):
    model = name()
    await harness.serve(state(model, 1, version(models.wine_a, 1)))
    dead = KafkaSettings(bootstrap="127.0.0.1:9", request_timeout_ms=1_000)
    app = InferenceApp(
        server_settings(log_queue_size=20, log_publish_timeout_s=1.0),
        kafka=kafka,
        bus=topics_bus,
        store=open_store(artifact_settings),
        log_kafka=dead,
    )
    port = await app.start(ready_timeout_s=60)
    try:
        async with open_channel(f"127.0.0.1:{port}", traced=False) as channel:
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            rows = models.wine_a.rows[:1]
            for _ in range(10):
                answers = await asyncio.gather(*(stub.ModelInfer(request(model, rows)) for _ in range(20)))
                assert all(answer.model_version == "1" for answer in answers)
        dropped = sample("mlops_inference_log_dropped_total", model=model, reason="queue_full") + sample(
            "mlops_inference_log_dropped_total", model=model, reason="publish_failed"
        )
        assert dropped >= 150, (
            f"200 requests, a queue of 20 and no Kafka: {dropped} records counted as dropped"
        )
    finally:
        await app.stop()


# --- tracing ---------------------------------------------------------------------------------------------


async def test_desired_state_and_requests_continue_their_traces(harness, models, jaeger_url):
    model = name()
    tracer = trace.get_tracer("tests")
    with tracer.start_as_current_span("deployer publishes") as span:
        await harness.publish(state(model, 1, version(models.wine_a, 1)))
        deploy_trace = format(span.get_span_context().trace_id, "032x")
    await eventually(lambda: harness.app.core.generation(model) == 1, what="served")
    client_trace = uuid.uuid4().hex
    traceparent = f"00-{client_trace}-{uuid.uuid4().hex[:16]}-01"
    answer = await harness.triton.call(
        op="infer",
        model=model,
        headers={"traceparent": traceparent},
        inputs=[
            {"name": "input", "datatype": "FP32", "shape": [1, 13], "data": models.wine_a.rows[:1].tolist()}
        ],
    )
    assert answer["ok"], answer
    trace.get_tracer_provider().force_flush()

    def spans_of(trace_id: str):
        return [s for s in jaeger_trace(jaeger_url, trace_id) or []]

    deploy = await eventually(
        lambda: (
            (found := spans_of(deploy_trace)) and any(s.name.startswith("load ") for s in found) and found
        ),
        timeout_s=30,
        what="the desired state's trace in Jaeger",
    )
    names = {s.name for s in deploy}
    assert f"process {harness.bus.topic_prefix}mlops.deployments.desired" in names
    load = next(s for s in deploy if s.name == f"load {model} v1")
    parents = [s for s in deploy if s.span_id == load.parent_id]
    assert parents and parents[0].name.startswith("process "), "loading is a child of the CONSUMER span"
    assert parents[0].parent_id is not None, "the CONSUMER span continues the publisher's trace"
    served = await eventually(
        lambda: (found := spans_of(client_trace)) and any("ModelInfer" in s.name for s in found) and found,
        timeout_s=30,
        what="the request's span in Jaeger",
    )
    infer = next(s for s in served if "ModelInfer" in s.name)
    assert infer.attributes.get("mlops.model.name") == model
    assert str(infer.attributes.get("mlops.model.version")) == "1"


# --- readiness, refused desired states, the inference log's byte bound ----------------------------------


async def _health(port: int) -> str:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with open_channel(f"127.0.0.1:{port}", traced=False) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def test_an_artifact_no_replica_can_load_is_dead_lettered_and_the_replica_stays_ready(
    kafka, artifact_settings, models
):
    """Its own topics: every other test's desired states would count towards this replica's readiness.
    Bytes that are not a model would be refused by every replica: the state is dead-lettered and the
    replica keeps serving what it can, rather than leave the Service with no replica at all."""
    from tests.integration.bus_helpers import read_until

    bus = BusSettings(topic_prefix=f"tests.inference.ready.{uuid.uuid4().hex[:8]}.")
    publisher = EventPublisher(kafka, bus, source="mlops-deployer-tests")
    await publisher.start()
    good, broken = name(), name()
    bad = version(models.wine_a, 1)
    bad.artifact_uri, bad.artifact_sha256 = models.not_onnx_uri, models.not_onnx_sha256
    desired = bus.topic_prefix + spec_for(deployment_pb2.DesiredState).topic
    app = InferenceApp(
        server_settings(log_enabled=False), kafka=kafka, bus=bus, store=open_store(artifact_settings)
    )
    try:
        async with raw_reader(kafka, desired + ".dlq") as dead_letters:
            await publisher.publish(state(good, 1, version(models.wine_a, 1)))
            await publisher.publish(state(broken, 1, bad))
            port = await app.start(ready_timeout_s=60)
            letter = await read_until(dead_letters, lambda record: record.key == broken.encode())
        headers = dict(letter.headers)
        assert b"ONNX" in headers["mlops_dlq_reason"], headers
        assert headers["mlops_dlq_error_type"] == b"ModelRejected"
        assert await _health(port) == "SERVING"
        async with open_channel(f"127.0.0.1:{port}", traced=False) as channel:
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            assert (await stub.ServerReady(oip.ServerReadyRequest())).ready
            assert not (await stub.ModelReady(oip.ModelReadyRequest(name=broken))).ready
            answer = await stub.ModelInfer(request(good, models.wine_a.rows[:1]), timeout=10)
            assert answer.model_version == "1", "what loaded keeps serving"
    finally:
        await app.stop()
        await publisher.stop()


async def test_a_replica_that_cannot_read_what_it_is_asked_to_serve_is_not_ready(
    kafka, artifact_settings, models, monkeypatch
):
    """A refusal that is this replica's own (a wrong S3 secret: PERMISSION_DENIED) takes it out of
    service: another replica may well serve the same state. It comes back once the state is withdrawn."""
    from tests.integration.bus_helpers import read_until

    bus = BusSettings(topic_prefix=f"tests.inference.denied.{uuid.uuid4().hex[:8]}.")
    publisher = EventPublisher(kafka, bus, source="mlops-deployer-tests")
    await publisher.start()
    model = name()
    desired = bus.topic_prefix + spec_for(deployment_pb2.DesiredState).topic
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    app = InferenceApp(
        server_settings(log_enabled=False), kafka=kafka, bus=bus, store=open_store(artifact_settings)
    )
    try:
        async with raw_reader(kafka, desired + ".dlq") as dead_letters:
            await publisher.publish(state(model, 1, version(models.wine_a, 1)))
            port = await app.start(ready_timeout_s=60)
            letter = await read_until(dead_letters, lambda record: record.key == model.encode())
        assert dict(letter.headers)["mlops_dlq_error_type"] == b"PermissionDenied"
        assert await _health(port) == "NOT_SERVING"
        async with open_channel(f"127.0.0.1:{port}", traced=False) as channel:
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            assert not (await stub.ServerReady(oip.ServerReadyRequest())).ready
            await publisher.publish_encoded(desired, model, None, [])  # type: ignore[arg-type]
            await eventually(lambda: not app.core.not_ready(), what="the state withdrawn")
            deadline = asyncio.get_running_loop().time() + 10  # health follows in a task of its own
            while await _health(port) != "SERVING":
                assert asyncio.get_running_loop().time() < deadline, "health did not turn SERVING"
                await asyncio.sleep(0.05)
    finally:
        await app.stop()
        await publisher.stop()


async def test_a_large_request_is_logged_in_messages_under_the_byte_bound(
    kafka, topics_bus, artifact_settings, harness, models
):
    model = name()
    await harness.serve(state(model, 1, version(models.wine_a, 1)))
    app = InferenceApp(
        server_settings(log_max_message_bytes=8_192, log_batch_records=10),
        kafka=kafka,
        bus=topics_bus,
        store=open_store(artifact_settings),
    )
    topic = topics_bus.topic_prefix + spec_for(monitoring_pb2.InferenceLogged).topic
    rows = np.repeat(models.wine_a.rows, 10, axis=0)[:600]
    port = await app.start(ready_timeout_s=60)
    try:
        async with (
            raw_reader(kafka, topic) as reader,
            open_channel(f"127.0.0.1:{port}", traced=False) as channel,
        ):
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            await stub.ModelInfer(request(model, rows, request_id="big-1"), timeout=10)
            sizes: list[int] = []
            seen: list = []
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while len(seen) < 600 and loop.time() < deadline:
                for records in (await reader.getmany(timeout_ms=200)).values():
                    for record in records:
                        message = monitoring_pb2.InferenceLogged.FromString(record.value)
                        if message.model == model:
                            sizes.append(len(record.value))
                            seen.extend(message.records)
        assert [r.request_id for r in seen] == [f"big-1/{i}" for i in range(600)], len(seen)
        assert len(sizes) > 1 and max(sizes) <= 8_192, sizes
    finally:
        await app.stop()
