"""An inference server loads only bytes the registry holds for the version a desired state names.

The server runs in-process with `confirm_artifacts` on, against the real registry, Kafka and S3, on
topics of its own. Desired states are published as anyone who can write the topic could publish them.
"""

# The models fixture is imported from inference_helpers, and pytest hands it to the tests by parameter name.
# ruff: noqa: F811

from __future__ import annotations

import uuid

import numpy as np

from inference import grpc_service_pb2 as oip
from inference import grpc_service_pb2_grpc
from mlops.bus import EventPublisher
from mlops.event_catalog import spec_for
from mlops.events.v1 import deployment_pb2
from mlops.grpc import open_channel
from mlops.registry.v1 import registry_pb2 as pb
from mlops.registry.v1 import registry_pb2_grpc
from mlops.settings import BusSettings
from mlops.store import open_store
from services.inference.app import InferenceApp
from tests.integration.bus_helpers import raw_reader, read_until
from tests.integration.conftest import eventually
from tests.integration.inference_helpers import (  # noqa: F401 - the models fixture
    Trained,
    models,
    name,
    probabilities,
    request,
    server_settings,
    state,
    version,
)


async def register(model: str, trained: Trained) -> int:
    """Register `trained` as a version of `model`; its number."""
    channel = open_channel(server_settings().registry_addr)
    try:
        reply = await registry_pb2_grpc.RegistryStub(channel).RegisterModelVersion(
            pb.RegisterModelVersionRequest(
                model=model,
                run_id=uuid.uuid4().hex,
                artifact_uri=trained.uri,
                artifact_sha256=trained.sha256,
                signature=pb.ModelSignature(
                    feature_names=trained.feature_names, class_labels=trained.class_labels, task=trained.task
                ),
            ),
            timeout=10,
        )
    finally:
        await channel.close()
    return reply.model_version.version


async def test_a_desired_state_naming_bytes_the_registry_does_not_hold_is_refused_and_the_last_keeps_serving(
    kafka, artifact_settings, models
):
    model = name()
    number = await register(model, models.wine_a)
    bus = BusSettings(topic_prefix=f"tests.inference.trust.{uuid.uuid4().hex[:8]}.")
    desired = bus.topic_prefix + spec_for(deployment_pb2.DesiredState).topic
    publisher = EventPublisher(kafka, bus, source="somebody")
    await publisher.start()
    app = InferenceApp(
        server_settings(confirm_artifacts=True, log_enabled=False),
        kafka=kafka,
        bus=bus,
        store=open_store(artifact_settings),
    )
    try:
        await publisher.publish(state(model, 1, version(models.wine_a, number)))
        port = await app.start(ready_timeout_s=60)
        await eventually(lambda: app.core.generation(model) == 1, timeout_s=30, what="generation 1 served")

        async with raw_reader(kafka, desired + ".dlq") as dead_letters:
            # Real, loadable bytes, but not the ones the registry holds for that version ...
            await publisher.publish(state(model, 2, version(models.wine_b, number)))
            swapped = await read_until(dead_letters, lambda r: r.key == model.encode(), timeout_s=30)
            # ... and a version the registry does not hold at all.
            await publisher.publish(state(model, 3, version(models.wine_a, number + 7)))
            unknown = await read_until(dead_letters, lambda r: r.key == model.encode(), timeout_s=30)

        reason = dict(swapped.headers)["mlops_dlq_reason"].decode()
        assert f"the desired state names artifact sha256 {models.wine_b.sha256}" in reason, reason
        assert f"registry holds {models.wine_a.sha256} for that version" in reason, reason
        reason = dict(unknown.headers)["mlops_dlq_reason"].decode()
        assert f"the registry holds no version {number + 7} of model {model!r}" in reason, reason

        assert app.core.generation(model) == 1, "the refused generations changed nothing"
        async with open_channel(f"127.0.0.1:{port}", traced=False) as channel:
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            rows = models.wine_a.rows[:4]
            answer = await stub.ModelInfer(request(model, rows), timeout=10)
            assert (await stub.ServerReady(oip.ServerReadyRequest(), timeout=10)).ready
        assert answer.model_version == str(number)
        np.testing.assert_allclose(
            probabilities(answer), models.wine_a.expected(rows)["probabilities"], rtol=1e-5, atol=1e-6
        )
    finally:
        await app.stop()
        await publisher.stop()
