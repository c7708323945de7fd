"""Models trained elsewhere on the real server: a scikit-learn pipeline with one input per column
(FP32, INT64 and text), skl2onnx's ZipMap classifier, LightGBM through onnxmltools and a regressor,
served from the stack's artifact store by desired states on Kafka, called over gRPC with the
project's stubs and with an unmodified tritonclient, logged to `mlops.inference.logged` in the
monitor's terms (numeric features, text features, probabilities in class_labels order or the value)."""

# The fixtures imported from inference_helpers reach the tests by parameter name.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import json
import uuid

import numpy as np
import pandas as pd
import pytest

from inference import grpc_service_pb2 as oip
from mlops.event_catalog import spec_for
from mlops.events.v1 import deployment_pb2, monitoring_pb2
from mlops.store import open_store
from tests.integration.bus_helpers import raw_reader
from tests.integration.inference_helpers import (  # noqa: F401 - shared fixtures and helpers
    PRODUCTION,
    SHADOW,
    _records,
    harness,
    models,
    sample,
    state,
    topics_bus,
    triton_script,
)
from tests.unit import inference_outside_models as outside
from tests.unit.test_inference_signatures import decoded, tensor_request


class Stored:
    def __init__(self, model: outside.Outside, uri: str, sha256: str) -> None:
        self.model = model
        self.uri = uri
        self.sha256 = sha256

    def version(self, number: int, percent: int = 100, role=PRODUCTION) -> deployment_pb2.ServingVersion:
        return deployment_pb2.ServingVersion(
            version=number,
            artifact_uri=self.uri,
            artifact_sha256=self.sha256,
            traffic_percent=percent,
            role=role,
            task=self.model.task,
            feature_names=self.model.feature_names,
            class_labels=self.model.class_labels,
        )


@pytest.fixture(scope="module")
async def stored(artifact_settings) -> dict[str, Stored]:
    store = open_store(artifact_settings)
    built = {
        "zipmap": await asyncio.to_thread(outside.logistic, True),
        "lightgbm": await asyncio.to_thread(outside.lightgbm),
        "regressor": await asyncio.to_thread(outside.regressor),
        "per_column": await asyncio.to_thread(outside.per_column),
    }
    result = {}
    for key, model in built.items():
        ref = await store.put_bytes("models/inference-outside-tests", "model.onnx", model.onnx)
        result[key] = Stored(model, ref.uri, ref.sha256)
    return result


def name() -> str:
    return f"outside-{uuid.uuid4().hex[:8]}"


def log_topic(harness) -> str:
    return harness.bus.topic_prefix + spec_for(monitoring_pb2.InferenceLogged).topic


async def _messages(reader, model: str, *, records: int, timeout_s: float = 20.0) -> list:
    """InferenceLogged messages of `model` until they hold `records` records."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    seen: list = []
    while loop.time() < deadline:
        batch = await reader.getmany(timeout_ms=200)
        for items in batch.values():
            for item in items:
                message = monitoring_pb2.InferenceLogged.FromString(item.value)
                if message.model == model:
                    seen.append(message)
        if sum(len(m.records) for m in seen) >= records:
            return seen
    raise AssertionError(f"the inference log of {model} holds {seen}")


async def test_a_pipeline_with_text_and_integer_columns_is_served_and_logged(kafka, harness, stored):
    served = stored["per_column"]
    model, pipeline = name(), served.model
    await harness.serve(state(model, 1, served.version(1)))

    described = await harness.stub.ModelMetadata(oip.ModelMetadataRequest(name=model))
    assert [(t.name, t.datatype, list(t.shape)) for t in described.inputs] == [
        ("petal_length", "FP32", [-1, 1]),
        ("petal_width", "FP32", [-1, 1]),
        ("count", "INT64", [-1, 1]),
        ("colour", "BYTES", [-1, 1]),
    ]
    assert json.loads(described.parameters["text_features"].string_param) == ["colour"]

    rows = {key: values[:4] for key, values in pipeline.rows.items()}
    frame = pd.DataFrame(rows)
    request = tensor_request(rows, raw=False)
    request.model_name, request.id = model, "pipe-1"
    async with raw_reader(kafka, log_topic(harness)) as reader:
        answer = decoded(await harness.stub.ModelInfer(request))
        messages = await _messages(reader, model, records=4)
    np.testing.assert_allclose(
        answer["output_probability"], pipeline.expected.predict_proba(frame), atol=1e-5
    )
    assert answer["output_label"].tolist() == pipeline.expected.predict(frame).tolist()

    message = messages[0]
    assert list(message.feature_names) == ["petal_length", "petal_width", "count"]
    assert list(message.text_feature_names) == ["colour"]
    assert list(message.class_labels) == list(pipeline.class_labels)
    records = {r.request_id: r for m in messages for r in m.records}
    for row in range(4):
        record = records[f"pipe-1/{row}"]
        expected = [rows["petal_length"][row], rows["petal_width"][row], rows["count"][row]]
        np.testing.assert_allclose(record.features, expected, rtol=1e-6)
        assert list(record.text_features) == [rows["colour"][row]]
        np.testing.assert_allclose(record.outputs, answer["output_probability"][row], rtol=1e-5)
        assert record.label == answer["output_label"][row]


async def test_zipmap_lightgbm_and_a_regressor_answer_over_grpc_and_tritonclient(kafka, harness, stored):
    names = {key: name() for key in ("zipmap", "lightgbm", "regressor")}
    for key, model in names.items():
        await harness.serve(state(model, 1, stored[key].version(1)))

    async with raw_reader(kafka, log_topic(harness)) as reader:
        for key, model in names.items():
            served = stored[key].model
            x = np.column_stack([served.rows[c] for c in served.feature_names])
            graph_input = "input" if key == "lightgbm" else "X"
            answer = await harness.triton.call(
                op="infer",
                model=model,
                id=f"{key}-1",
                inputs=[
                    {"name": graph_input, "datatype": "FP32", "shape": list(x.shape), "data": x.tolist()}
                ],
            )
            assert answer["ok"], answer
            outputs = answer["outputs"]
            if key == "regressor":  # FP32 sent, the graph's FP64 answered
                assert outputs["variable"]["datatype"] == "FP64"
                np.testing.assert_allclose(
                    outputs["variable"]["data"],
                    served.expected.predict(x.astype(np.float32)).reshape(-1, 1),
                    rtol=1e-4,
                )
                continue
            probability = "output_probability" if key == "zipmap" else "probabilities"
            label = "output_label" if key == "zipmap" else "label"
            assert outputs[probability]["datatype"] == "FP32" and outputs[probability]["shape"] == [len(x), 3]
            np.testing.assert_allclose(
                outputs[probability]["data"], served.expected.predict_proba(x), atol=1e-5
            )
            assert outputs[label]["data"] == served.expected.predict(x).tolist()
        logged = {model: await _messages(reader, model, records=1) for model in names.values()}

    regression = logged[names["regressor"]][0]
    assert list(regression.feature_names) == list(stored["regressor"].model.feature_names)
    assert not regression.class_labels and len(regression.records[0].outputs) == 1
    for key in ("zipmap", "lightgbm"):
        message = logged[names[key]][0]
        assert list(message.class_labels) == ["0", "1", "2"]
        record = message.records[0]
        assert len(record.outputs) == 3 and record.label in ("0", "1", "2")

    metadata = await harness.triton.call(op="metadata", model=names["zipmap"])
    outputs = {o["name"]: (o["datatype"], o["shape"]) for o in metadata["metadata"]["outputs"]}
    assert outputs == {"output_label": ("INT64", ["-1"]), "output_probability": ("FP32", ["-1", "3"])}


async def test_requests_to_a_model_with_several_inputs_are_batched_and_shadowed(kafka, harness, stored):
    """Concurrent requests of several inputs share calls; a shadow that takes one [-1, F] input is fed
    the same columns."""
    model = name()
    champion, shadow = stored["lightgbm"], stored["zipmap"]
    await harness.serve(
        state(model, 1, champion.version(1), shadow.version(2, 0, SHADOW), batch=32, wait_us=20_000)
    )
    served = champion.model
    columns = served.rows
    requests = []
    for index in range(12):
        request = tensor_request({c: columns[c][index : index + 1] for c in served.feature_names})
        request.model_name, request.id = model, f"batched-{index}"
        requests.append(request)
    async with raw_reader(kafka, log_topic(harness)) as reader:
        answers = await asyncio.gather(*(harness.stub.ModelInfer(r) for r in requests))
        records = await _records(reader, model, want=lambda seen: len(seen) >= 24)
    x = np.column_stack([columns[c] for c in served.feature_names])[:12]
    calls = sample("mlops_inference_batch_size_count", model=model, version="1")
    assert 0 < calls < len(requests), f"{len(requests)} requests in {calls} calls"
    got = np.concatenate([decoded(a)["probabilities"] for a in answers])
    np.testing.assert_allclose(got, served.expected.predict_proba(x), atol=1e-5)
    shadows = [r for r in records if r.role == SHADOW]
    assert len(shadows) == 12 and not any(r.error for r in shadows), shadows[:2]
    by_id = {r.request_id: r for r in shadows}
    np.testing.assert_allclose(
        by_id["batched-3"].outputs, shadow.model.expected.predict_proba(x[3:4])[0], atol=1e-5
    )
