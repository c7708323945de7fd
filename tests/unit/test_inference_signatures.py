"""Serving models trained elsewhere, any signature: several and per-column inputs, INT64 and text
inputs, skl2onnx's outputs with and without ZipMap, LightGBM's through onnxmltools, a regressor's
`variable`; the graph's real inputs and outputs in ModelMetadata. Real ONNX models built here, the real
onnxruntime runtime and core, the gRPC codec; no server."""

from __future__ import annotations

import struct
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from inference import grpc_service_pb2 as oip
from mlops.errors import InvalidArgument
from mlops.registry.v1 import registry_pb2 as pb
from services.inference import codec
from services.inference.core import InferenceCore, ModelState, Serving, VersionSpec
from services.inference.runtime import OnnxRuntime
from services.inference.signatures import Categories
from tests.unit import inference_outside_models as outside

LIMITS = codec.Limits(max_rows=1_000, max_bytes=1_000_000)
DATATYPES = {"f": "FP32", "d": "FP64", "q": "INT64", "l": "INT64", "O": "BYTES"}


def spec_of(model: outside.Outside, version: int = 1) -> VersionSpec:
    return VersionSpec(
        version=version,
        artifact_uri=f"s3://models/{version}",
        artifact_sha256=f"{version:064d}",
        traffic_percent=100,
        role="production",
        task=model.task,
        feature_names=model.feature_names,
        class_labels=model.class_labels,
    )


async def serve(
    model: outside.Outside, registered: pb.ModelSignature | None = None, **batching
) -> InferenceCore:
    async def read(uri: str, sha256: str) -> bytes:
        return model.onnx

    async def confirm(name: str, version: int, sha256: str) -> Categories:
        found = Categories()
        found.signature = registered
        return found

    core = InferenceCore(
        runtime=OnnxRuntime(provider="cpu", warmup_runs=2),
        read_artifact=read,
        executor=ThreadPoolExecutor(2),
        confirm_version=confirm,
    )
    outcome = await core.apply(ModelState("m", 1, (spec_of(model),), **batching))
    assert outcome.kind == "applied", outcome.reason
    return core


def tensor_request(
    columns: dict[str, np.ndarray], *, raw: bool = True, column: bool = True
) -> oip.ModelInferRequest:
    """One tensor per entry; [-1, 1] for a column, the array's own shape otherwise."""
    request = oip.ModelInferRequest(model_name="m")
    for name, values in columns.items():
        values = np.asarray(values)
        shape = [len(values), 1] if column and values.ndim == 1 else list(values.shape)
        datatype = DATATYPES[values.dtype.char]
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        if datatype == "BYTES":
            encoded = [str(v).encode() for v in values.reshape(-1)]
            if raw:
                request.raw_input_contents.append(b"".join(struct.pack("<I", len(e)) + e for e in encoded))
            else:
                request.inputs[-1].contents.bytes_contents.extend(encoded)
        elif raw:
            request.raw_input_contents.append(np.ascontiguousarray(values).tobytes())
        else:
            field = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT64": "int64_contents"}[datatype]
            getattr(request.inputs[-1].contents, field).extend(values.reshape(-1).tolist())
    return request


async def infer(core: InferenceCore, request: oip.ModelInferRequest) -> dict[str, np.ndarray]:
    target = core.route("m")
    serving = target.serving
    rows = codec.decode_inputs(request, serving, LIMITS)
    names = codec.requested_outputs(request, serving)
    outputs = await core.predict(target, rows, request_id="r", arrived_ns=0)
    return decoded(codec.encode_response(request, serving, outputs, names))


def decoded(response: oip.ModelInferResponse) -> dict[str, np.ndarray]:
    answer = {}
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        if tensor.datatype == "BYTES":
            values = codec._split_bytes(raw, tensor.name)
            answer[tensor.name] = np.array([v.decode() for v in values], dtype=object).reshape(
                list(tensor.shape)
            )
        else:
            dtype = codec.NUMERIC[tensor.datatype]
            answer[tensor.name] = np.frombuffer(raw, dtype=dtype).reshape(list(tensor.shape))
        answer[tensor.name + ":datatype"] = tensor.datatype
    return answer


def metadata(core: InferenceCore) -> oip.ModelMetadataResponse:
    return codec.model_metadata(*core.metadata("m"))


def matrix(model: outside.Outside) -> np.ndarray:
    return np.column_stack([model.rows[name] for name in model.feature_names])


@pytest.mark.parametrize("zipmap", [True, False])
async def test_skl2onnx_classifier_answers_its_label_and_probabilities_as_tensors(zipmap):
    model = outside.logistic(zipmap)
    core = await serve(model)
    x = matrix(model)
    label, probability = ("output_label", "output_probability") if zipmap else ("label", "probabilities")
    described = metadata(core)
    assert [(t.name, t.datatype, list(t.shape)) for t in described.inputs] == [("X", "FP32", [-1, 4])]
    assert [(t.name, t.datatype, list(t.shape)) for t in described.outputs] == [
        (label, "INT64", [-1]),
        (probability, "FP32", [-1, 3]),
    ]
    for request in (tensor_request({"X": x}, column=False), tensor_request(model.rows, raw=False)):
        answer = await infer(core, request)
        assert answer[probability + ":datatype"] == "FP32" and answer[probability].shape == (len(x), 3)
        np.testing.assert_allclose(answer[probability], model.expected.predict_proba(x), atol=1e-5)
        assert answer[label].tolist() == model.expected.predict(x).tolist()

    only = tensor_request({"X": x}, column=False)
    only.outputs.add(name=probability)
    assert [k for k in await infer(core, only) if ":" not in k] == [probability]


async def test_lightgbm_through_onnxmltools_is_served():
    model = outside.lightgbm()
    core = await serve(model)
    x = matrix(model)
    answer = await infer(core, tensor_request({"input": x}, column=False))
    np.testing.assert_allclose(answer["probabilities"], model.expected.predict_proba(x), atol=1e-5)
    assert answer["label"].tolist() == model.expected.predict(x).tolist()
    assert answer["label:datatype"] == "INT64"
    outputs = {t.name: (t.datatype, list(t.shape)) for t in metadata(core).outputs}
    assert outputs == {"label": ("INT64", [-1]), "probabilities": ("FP32", [-1, 3])}


async def test_a_regressor_takes_fp64_and_answers_its_variable():
    model = outside.regressor()
    core = await serve(model)
    x = matrix(model)
    described = metadata(core)
    assert [(t.name, t.datatype) for t in described.inputs] == [("X", "FP64")]
    assert [(t.name, t.datatype, list(t.shape)) for t in described.outputs] == [("variable", "FP64", [-1, 1])]
    as_fp32 = tensor_request({"X": x.astype(np.float32)}, column=False)  # converted to the graph's FP64
    for request in (tensor_request({"X": x}, column=False), as_fp32):
        answer = await infer(core, request)
        np.testing.assert_allclose(answer["variable"].reshape(-1), model.expected.predict(x), rtol=1e-4)


async def test_a_pipeline_with_one_input_per_column_takes_numbers_integers_and_text():
    model = outside.per_column()
    core = await serve(model)
    described = metadata(core)
    assert [(t.name, t.datatype, list(t.shape)) for t in described.inputs] == [
        ("petal_length", "FP32", [-1, 1]),
        ("petal_width", "FP32", [-1, 1]),
        ("count", "INT64", [-1, 1]),
        ("colour", "BYTES", [-1, 1]),
    ]
    assert [(t.name, t.datatype) for t in described.outputs] == [
        ("output_label", "BYTES"),
        ("output_probability", "FP32"),
    ]
    frame = __import__("pandas").DataFrame(model.rows)
    expected = model.expected.predict_proba(frame)
    for raw in (True, False):
        answer = await infer(core, tensor_request(model.rows, raw=raw))
        np.testing.assert_allclose(answer["output_probability"], expected, atol=1e-5)
        assert answer["output_label"].tolist() == model.expected.predict(frame).tolist()

    flat = {name: values for name, values in model.rows.items()}  # [-1] tensors, count sent as FP32
    flat["count"] = flat["count"].astype(np.float32)
    answer = await infer(core, tensor_request(flat, column=False))
    np.testing.assert_allclose(answer["output_probability"], expected, atol=1e-5)

    unseen = dict(model.rows, colour=np.array(["green"] * len(frame), dtype=object))
    assert (await infer(core, tensor_request(unseen)))["output_probability"].shape == (len(frame), 3)

    wrong = dict(model.rows, colour=np.ones(len(frame), np.float32))
    with pytest.raises(InvalidArgument, match="'colour' has datatype 'FP32'; the model takes text"):
        await infer(core, tensor_request(wrong))
    fraction = dict(model.rows, count=np.full(len(frame), 0.5, np.float64))
    fraction["count"][1] = np.inf
    with pytest.raises(InvalidArgument, match=r"'count': inf at .*this model takes integers"):
        await infer(core, tensor_request(fraction))
    missing = {k: v for k, v in model.rows.items() if k != "count"}
    with pytest.raises(InvalidArgument, match="missing input 'count'"):
        await infer(core, tensor_request(missing))


async def test_the_registry_signature_says_which_columns_feed_an_input():
    model = outside.logistic()
    backwards = tuple(reversed(model.feature_names))
    registered = pb.ModelSignature(
        inputs=[pb.TensorSpec(name="X", datatype="FP32", shape=[-1, 4], columns=backwards)],
        outputs=[
            pb.TensorSpec(name="output_label", datatype="INT64", shape=[-1], role="label"),
            pb.TensorSpec(name="output_probability", datatype="FP32", shape=[-1, 3], role="probabilities"),
        ],
        feature_names=backwards,
        class_labels=model.class_labels,
        task="classification",
    )
    core = await serve(model, registered)
    serving: Serving = core.route("m").serving
    assert serving.interface.inputs[0].columns == backwards
    x = matrix(model)
    answer = await infer(core, tensor_request(model.rows))  # per column: placed as the registry says
    expected = model.expected.predict_proba(x[:, ::-1])
    np.testing.assert_allclose(answer["output_probability"], expected, atol=1e-5)


async def test_a_model_without_a_prediction_for_its_task_is_refused():
    model = outside.logistic()
    runtime = OnnxRuntime(provider="cpu", warmup_runs=1)

    async def read(uri: str, sha256: str) -> bytes:
        return model.onnx

    core = InferenceCore(runtime=runtime, read_artifact=read, executor=ThreadPoolExecutor(1))
    regression = VersionSpec(1, "s3://m/1", "1" * 64, 100, "production", "regression", model.feature_names)
    outcome = await core.apply(ModelState("m", 1, (regression,)))
    assert outcome.kind == "refused" and "needs a numeric output" in outcome.reason, outcome.reason


async def test_the_registry_record_hands_its_signature_over_with_the_vocabularies():
    from tests.unit.test_inference_registry_versions import versions

    registry, _ = versions()
    confirmed = await registry.confirmed("m", 3, f"{3:064d}")
    assert confirmed == {"colour": ("red", "white")}
    assert confirmed.signature is not None and dict(confirmed.signature.categories)
    without, _ = versions(categories=False)
    assert (await without.confirmed("m", 3, f"{3:064d}")).signature is None
