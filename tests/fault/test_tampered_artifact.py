"""R7: an artifact changed in S3 after it was recorded (its sha256 no longer matches) is refused; the
version before it keeps serving; `mlops_inference_load_failures_total{reason="IntegrityError"}` counts
it and the desired state goes to `mlops.deployments.desired.dlq` with the reason."""

from __future__ import annotations

import asyncio
from urllib.parse import urlparse

from mlops.event_catalog import spec_for
from mlops.events.v1 import deployment_pb2
from mlops.store import open_store
from tests.fault.conftest import figures
from tests.integration.bus_helpers import raw_reader, read_until
from tests.integration.conftest import artifact_settings, eventually, kafka, telemetry  # noqa: F401
from tests.integration.inference_helpers import (  # noqa: F401 - shared fixtures
    harness,
    models,
    name,
    probabilities,
    request,
    sample,
    state,
    topics_bus,
    triton_script,
    version,
)


async def test_a_tampered_artifact_is_refused_and_the_old_version_keeps_serving(
    kafka,  # noqa: F811 - the fixtures imported above
    artifact_settings,  # noqa: F811
    harness,  # noqa: F811
    models,  # noqa: F811
):
    model = name()
    a, b = models.wine_a, models.wine_b
    await harness.serve(state(model, 1, version(a, 1)))
    store = open_store(artifact_settings)
    recorded = await store.put_bytes(f"models/{model}", "model.onnx", b.onnx)
    location = urlparse(recorded.uri)
    # the bytes change after they were recorded: another model's, a valid ONNX file, so only the sha256 tells
    await asyncio.to_thread(
        store.client.put_object, Bucket=location.netloc, Key=location.path.lstrip("/"), Body=a.onnx + b"\0"
    )
    tampered = version(b, 2)
    tampered.artifact_uri, tampered.artifact_sha256 = recorded.uri, recorded.sha256
    failures = sample("mlops_inference_load_failures_total", model=model, reason="IntegrityError")
    desired = harness.bus.topic_prefix + spec_for(deployment_pb2.DesiredState).topic
    async with raw_reader(kafka, desired + ".dlq") as dead_letters:
        await harness.publish(state(model, 2, tampered))
        letter = await read_until(dead_letters, lambda record: record.key == model.encode())
    headers = dict(letter.headers)
    await eventually(
        lambda: (
            sample("mlops_inference_load_failures_total", model=model, reason="IntegrityError") > failures
        ),
        what="the refusal counted",
    )
    assert headers["mlops_dlq_error_type"] == b"IntegrityError", headers
    assert b"sha256" in headers["mlops_dlq_reason"], headers["mlops_dlq_reason"]
    rows = a.rows[:2]
    answer = await harness.stub.ModelInfer(request(model, rows), timeout=10)
    assert answer.model_version == "1" and harness.app.core.generation(model) == 1
    assert abs(probabilities(answer) - a.expected(rows)["probabilities"]).max() < 1e-5
    figures(
        "R7 tampered artifact",
        refused=1,
        counter=sample("mlops_inference_load_failures_total", model=model, reason="IntegrityError")
        - failures,
        dead_letter=desired + ".dlq",
        reason=headers["mlops_dlq_reason"].decode()[:120],
        serving_version=answer.model_version,
    )
