"""The inference protocol against the real stack: an unmodified tritonclient, the answers of each task,
bad input refused with its code, and text features encoded with the registered vocabulary."""

# The fixtures imported from inference_helpers reach the tests by parameter name.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import json
import uuid

import grpc
import numpy as np
import pytest
from sklearn.datasets import load_wine

from inference import grpc_service_pb2 as oip
from inference import grpc_service_pb2_grpc
from mlops.grpc import open_channel
from mlops.store import open_store
from services.inference.app import InferenceApp
from services.inference.settings import InferenceSettings
from tests.integration.conftest import eventually
from tests.integration.inference_helpers import (  # noqa: F401 - shared fixtures and helpers
    Trained,
    _train,
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

# --- the protocol, through an unmodified tritonclient --------------------------------------------


@pytest.mark.parametrize("datatype", ["FP32", "FP64", "INT32", "INT64"])
async def test_tritonclient_infers_typed_and_raw_inputs_of_every_datatype(harness, models, datatype):
    model = name()
    trained = models.wine_a
    await harness.serve(state(model, 1, version(trained, 1)))
    rows = np.round(trained.rows[:5]) if datatype.startswith("INT") else trained.rows[:5]
    expected = trained.expected(rows)
    for typed in (False, True):
        data = rows.astype(np.int64 if datatype.startswith("INT") else np.float64).tolist()
        answer = await harness.triton.call(
            op="infer",
            model=model,
            id=f"req-{datatype}",
            inputs=[
                {
                    "name": "input",
                    "datatype": datatype,
                    "shape": list(rows.shape),
                    "data": data,
                    "typed": typed,
                }
            ],
        )
        assert answer["ok"], answer
        assert answer["version"] == "1" and answer["id"] == f"req-{datatype}"
        outputs = answer["outputs"]
        assert outputs["probabilities"]["datatype"] == "FP32"
        assert outputs["probabilities"]["shape"] == [5, 3]
        np.testing.assert_allclose(
            outputs["probabilities"]["data"], expected["probabilities"], rtol=1e-5, atol=1e-6
        )
        assert outputs["label"]["datatype"] == "BYTES" and outputs["label"]["shape"] == [5]
        assert outputs["label"]["data"] == [trained.class_labels[i] for i in expected["label"]]


async def test_tritonclient_sends_one_tensor_per_feature(harness, models):
    model = name()
    trained = models.wine_a
    await harness.serve(state(model, 1, version(trained, 1)))
    rows = trained.rows[:4].copy()
    for typed in (False, True):  # as Triton, one request is all raw or all typed
        inputs = []
        for column, feature in enumerate(trained.feature_names):
            shape = [4] if column % 2 else [4, 1]
            datatype = ("FP32", "FP64", "INT64")[column % 3] if typed else ("FP32", "FP64")[column % 2]
            values = rows[:, column].astype(np.float64)
            if datatype == "INT64":
                rows[:, column] = np.round(values)
                values = np.round(values).astype(np.int64)
            inputs.append(
                {
                    "name": feature,
                    "datatype": datatype,
                    "shape": shape,
                    "data": values.reshape(shape).tolist(),
                    "typed": typed,
                }
            )
        expected = trained.expected(rows)["probabilities"]
        answer = await harness.triton.call(op="infer", model=model, inputs=inputs, outputs=["probabilities"])
        assert answer["ok"], answer
        assert list(answer["outputs"]) == ["probabilities"], "only the requested output comes back"
        np.testing.assert_allclose(answer["outputs"]["probabilities"]["data"], expected, rtol=1e-5, atol=1e-6)


async def test_tritonclient_reads_metadata_and_readiness(harness, models):
    model = name()
    trained = models.wine_a
    await harness.serve(state(model, 1, version(trained, 3)))
    answer = await harness.triton.call(op="metadata", model=model)
    assert answer["ok"], answer
    metadata = answer["metadata"]
    assert metadata["name"] == model and metadata["versions"] == ["3"]
    (tensor,) = metadata["inputs"]
    assert tensor["name"] == "input" and tensor["datatype"] == "FP32"
    assert [int(d) for d in tensor["shape"]] == [-1, len(trained.feature_names)]
    outputs = {o["name"]: o for o in metadata["outputs"]}
    assert outputs["label"]["datatype"] == "BYTES"
    assert [int(d) for d in outputs["probabilities"]["shape"]] == [-1, 3]
    # Triton's own proto has no metadata parameters (tritonclient drops them): read them with ours.
    parameters = (await harness.stub.ModelMetadata(oip.ModelMetadataRequest(name=model))).parameters
    assert json.loads(parameters["class_labels"].string_param) == trained.class_labels
    assert json.loads(parameters["feature_names"].string_param) == trained.feature_names
    assert parameters["task"].string_param == "classification"

    assert (await harness.triton.call(op="ready", model=model))["ready"] is True
    assert (await harness.triton.call(op="ready", model=model, version="3"))["ready"] is True
    assert (await harness.triton.call(op="ready", model=model, version="9"))["ready"] is False
    assert (await harness.triton.call(op="ready", model="no-such-model"))["ready"] is False
    server = await harness.triton.call(op="server")
    assert server["live"] is True and server["ready"] is True
    missing = await harness.triton.call(op="metadata", model="no-such-model")
    assert not missing["ok"] and missing["status"] == "StatusCode.NOT_FOUND"


async def test_regression_answers_prediction(harness, models):
    model = f"diabetes-{uuid.uuid4().hex[:8]}"
    trained = models.diabetes
    await harness.serve(state(model, 1, version(trained, 1)))
    rows = trained.rows[:3]
    answer = await harness.triton.call(
        op="infer",
        model=model,
        inputs=[{"name": "input", "datatype": "FP32", "shape": [3, rows.shape[1]], "data": rows.tolist()}],
    )
    assert answer["ok"], answer
    assert list(answer["outputs"]) == ["prediction"]
    assert answer["outputs"]["prediction"]["shape"] == [3]
    np.testing.assert_allclose(
        answer["outputs"]["prediction"]["data"], trained.expected(rows)["prediction"], rtol=1e-5
    )


# --- bad input: the right code, a message naming the problem, and the server keeps answering -------


def _bad_requests(model: str, trained: Trained):
    width = len(trained.feature_names)
    row = trained.rows[:1]

    def base(**kwargs) -> oip.ModelInferRequest:
        return oip.ModelInferRequest(model_name=model, **kwargs)

    wrong_type = base()
    wrong_type.inputs.add(name="input", datatype="BYTES", shape=[1, width]).contents.bytes_contents.extend(
        [b"x"] * width
    )
    wrong_shape = request(model, np.zeros((1, width + 1), np.float32))
    wrong_shape.inputs[0].shape[:] = [1, width + 1]
    flat = base()
    flat.inputs.add(name="input", datatype="FP32", shape=[width]).contents.fp32_contents.extend([0.0] * width)
    missing = base()
    for feature in trained.feature_names[1:]:
        missing.inputs.add(name=feature, datatype="FP32", shape=[1]).contents.fp32_contents.append(1.0)
    unknown = request(model, row)
    unknown.inputs[0].name = "inputs"
    raw_short = request(model, row)
    raw_short.raw_input_contents[0] = raw_short.raw_input_contents[0][:-4]
    typed_count = base()
    typed_count.inputs.add(name="input", datatype="FP32", shape=[2, width]).contents.fp32_contents.extend(
        [0.0] * width
    )
    wrong_field = base()
    wrong_field.inputs.add(name="input", datatype="FP32", shape=[1, width]).contents.fp64_contents.extend(
        [0.0] * width
    )
    raw_count = request(model, row)
    raw_count.raw_input_contents.append(b"\0\0\0\0")
    no_inputs = base()
    bad_output = request(model, row)
    bad_output.outputs.add(name="logits")
    too_many_rows = request(model, np.zeros((2_001, width), np.float32))
    too_many_bytes = base()
    too_many_bytes.inputs.add(name="input", datatype="FP64", shape=[2_000, width])
    too_many_bytes.raw_input_contents.append(bytes(2_000 * width * 8))
    return [
        (
            "unknown model",
            oip.ModelInferRequest(model_name="no-such-model"),
            grpc.StatusCode.NOT_FOUND,
            "no-such-model",
        ),
        ("unknown version", request(model, row, version="42"), grpc.StatusCode.NOT_FOUND, "no version '42'"),
        ("wrong datatype", wrong_type, grpc.StatusCode.INVALID_ARGUMENT, "datatype 'BYTES'"),
        ("wrong width", wrong_shape, grpc.StatusCode.INVALID_ARGUMENT, f"expected [-1, {width}]"),
        ("one-dimensional input", flat, grpc.StatusCode.INVALID_ARGUMENT, "has shape"),
        (
            "missing feature",
            missing,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"missing input '{trained.feature_names[0]}'",
        ),
        ("unknown input", unknown, grpc.StatusCode.INVALID_ARGUMENT, "unknown input 'inputs'"),
        ("raw size mismatch", raw_short, grpc.StatusCode.INVALID_ARGUMENT, "needs"),
        ("typed count mismatch", typed_count, grpc.StatusCode.INVALID_ARGUMENT, "needs"),
        ("contents in the wrong field", wrong_field, grpc.StatusCode.INVALID_ARGUMENT, "fp64_contents"),
        (
            "raw entries per input",
            raw_count,
            grpc.StatusCode.INVALID_ARGUMENT,
            "raw_input_contents has 2 entries",
        ),
        ("no inputs", no_inputs, grpc.StatusCode.INVALID_ARGUMENT, "no inputs"),
        ("unknown output", bad_output, grpc.StatusCode.INVALID_ARGUMENT, "unknown output 'logits'"),
        ("too many rows", too_many_rows, grpc.StatusCode.RESOURCE_EXHAUSTED, "at most 2000"),
        ("too many bytes", too_many_bytes, grpc.StatusCode.RESOURCE_EXHAUSTED, "bytes"),
    ]


async def test_bad_input_gets_its_code_and_the_server_keeps_answering(
    kafka, topics_bus, artifact_settings, harness, models
):
    app = InferenceApp(
        server_settings(max_request_rows=2_000, max_request_bytes=200_000, log_enabled=False),
        kafka=kafka,
        bus=topics_bus,
        store=open_store(artifact_settings),
    )
    model = name()
    trained = models.wine_a
    await harness.publish(state(model, 1, version(trained, 1)))
    port = await app.start(ready_timeout_s=60)
    try:
        await eventually(lambda: app.core.generation(model) == 1, what="model served")
        async with open_channel(f"127.0.0.1:{port}", traced=False) as channel:
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            for case, message, code, words in _bad_requests(model, trained):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.ModelInfer(message, timeout=10)
                assert caught.value.code() == code, f"{case}: {caught.value.code()} {caught.value.details()}"
                assert words in caught.value.details(), f"{case}: {caught.value.details()!r} lacks {words!r}"
                answer = await stub.ModelInfer(request(model, trained.rows[:1]), timeout=10)
                assert answer.model_version == "1", f"the server stopped answering after {case}"
        assert (
            sample("mlops_inference_requests_total", model=model, version="1", code="INVALID_ARGUMENT") >= 10
        )
        assert sample("mlops_inference_requests_total", model="_unknown", version="", code="NOT_FOUND") >= 1
    finally:
        await app.stop()


async def test_a_model_known_but_not_loaded_is_unavailable(harness, models):
    model = name()
    bad = version(models.wine_a, 1)
    bad.artifact_uri, bad.artifact_sha256 = models.not_onnx_uri, models.not_onnx_sha256
    await harness.publish(state(model, 1, bad))
    unavailable = None
    for _ in range(100):
        try:
            await harness.stub.ModelInfer(request(model, models.wine_a.rows[:1]), timeout=10)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNAVAILABLE and "cannot be loaded" in error.details():
                unavailable = error
                break
        await asyncio.sleep(0.1)
    assert unavailable is not None, "a model whose only version cannot load should answer UNAVAILABLE"
    assert "ONNX" in unavailable.details()
    assert harness.app.core.ready, "no replica could load it: this one stays in service for the others"


# --- text features: vocabularies from the registry --------------------------------------------------


async def test_text_features_are_encoded_with_the_registered_vocabulary(
    kafka, topics_bus, artifact_settings, harness, models
):
    from mlops.grpc import open_channel
    from mlops.registry.v1 import registry_pb2 as pb
    from mlops.registry.v1 import registry_pb2_grpc

    store = open_store(artifact_settings)
    frame = load_wine(as_frame=True).frame[["alcohol", "hue", "target"]]
    frame.insert(
        1, "colour", np.where(frame["target"] == 0, "red", np.where(frame["target"] == 1, "white", "rose"))
    )
    trained = await _train(store, frame, "classification", seed=4, hidden=(8,))
    categories = {"colour": ["red", "rose", "white"]}
    assert trained.feature_names == ["alcohol", "colour", "hue"]
    model = name()
    settings = InferenceSettings()
    channel = open_channel(settings.registry_addr)
    try:
        registered = await registry_pb2_grpc.RegistryStub(channel).RegisterModelVersion(
            pb.RegisterModelVersionRequest(
                model=model,
                run_id=uuid.uuid4().hex,
                artifact_uri=trained.uri,
                artifact_sha256=trained.sha256,
                signature=pb.ModelSignature(
                    feature_names=trained.feature_names,
                    class_labels=trained.class_labels,
                    task="classification",
                    categories={k: pb.Vocabulary(values=v) for k, v in categories.items()},
                ),
            ),
            timeout=10,
        )
    finally:
        await channel.close()
    number = registered.model_version.version
    app = InferenceApp(
        server_settings(signatures_from_registry=True, log_enabled=False),
        kafka=kafka,
        bus=topics_bus,
        store=open_store(artifact_settings),
    )
    await harness.publish(state(model, 1, version(trained, number)))
    port = await app.start(ready_timeout_s=60)
    try:
        await eventually(lambda: app.core.generation(model) == 1, what="served")
        colours = ["white", "red", "violet"]  # violet: never seen, the trainer's unseen code
        codes = np.array([[13.0, 2, 1.0], [13.0, 0, 1.0], [13.0, -1, 1.0]], np.float32)
        request_ = oip.ModelInferRequest(model_name=model)
        request_.inputs.add(name="alcohol", datatype="FP32", shape=[3]).contents.fp32_contents.extend(
            [13.0] * 3
        )
        request_.inputs.add(name="colour", datatype="BYTES", shape=[3]).contents.bytes_contents.extend(
            [c.encode() for c in colours]
        )
        request_.inputs.add(name="hue", datatype="FP32", shape=[3]).contents.fp32_contents.extend([1.0] * 3)
        async with open_channel(f"127.0.0.1:{port}", traced=False) as channel:
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            answer = await stub.ModelInfer(request_, timeout=10)
            metadata = await stub.ModelMetadata(oip.ModelMetadataRequest(name=model), timeout=10)
        np.testing.assert_allclose(
            probabilities(answer), trained.expected(codes)["probabilities"], rtol=1e-5, atol=1e-6
        )
        assert json.loads(metadata.parameters["categories"].string_param) == categories
    finally:
        await app.stop()
