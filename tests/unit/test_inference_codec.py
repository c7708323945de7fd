"""Open Inference Protocol tensors ↔ numpy by the platform's contract, without a server."""

from __future__ import annotations

import struct
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from inference import grpc_service_pb2 as oip
from mlops.errors import InvalidArgument, ResourceExhausted
from services.inference import codec
from services.inference.batching import Batcher
from services.inference.core import Serving, VersionSpec
from services.inference.runtime import LoadedModel

FEATURES = ("alcohol", "color", "hue")
LIMITS = codec.Limits(max_rows=100, max_bytes=10_000)


class SumModel(LoadedModel):
    """Two classes: p(second) grows with the sum of the row."""

    input_name = "input"
    input_dtype = np.dtype(np.float32)
    feature_count = 3
    output_names = ("probabilities", "label")
    provider = "test"

    def run(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        second = 1 / (1 + np.exp(-rows.sum(axis=1)))
        probabilities = np.stack([1 - second, second], axis=1).astype(np.float32)
        return {"probabilities": probabilities, "label": probabilities.argmax(axis=1).astype(np.int64)}


def serving(categories=None) -> Serving:
    spec = VersionSpec(
        version=7,
        artifact_uri="s3://b/k",
        artifact_sha256="0" * 64,
        traffic_percent=100,
        role="production",
        task="classification",
        feature_names=FEATURES,
        class_labels=("low", "high"),
    )
    batcher = Batcher(
        SumModel().run, ThreadPoolExecutor(1), max_batch_size=0, max_wait_us=0, observe_batch=lambda n: None
    )
    return Serving(model="wine", spec=spec, loaded=SumModel(), categories=categories or {}, batcher=batcher)


def raw_request(rows: np.ndarray, datatype: str = "FP32") -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name="wine")
    request.inputs.add(name="input", datatype=datatype, shape=list(rows.shape))
    request.raw_input_contents.append(rows.tobytes())
    return request


@pytest.mark.parametrize(
    ("datatype", "dtype"),
    [("FP32", np.float32), ("FP64", np.float64), ("INT32", np.int32), ("INT64", np.int64)],
)
def test_raw_input_of_any_numeric_type_becomes_the_models_dtype(datatype, dtype):
    rows = np.array([[1, 2, 3], [4, 5, 6]], dtype=dtype)
    matrix = codec.decode_inputs(raw_request(rows, datatype), serving(), LIMITS)
    assert matrix.dtype == np.float32 and matrix.tolist() == rows.astype(np.float32).tolist()


def test_typed_contents_and_per_feature_tensors():
    request = oip.ModelInferRequest(model_name="wine")
    request.inputs.add(name="hue", datatype="INT64", shape=[2]).contents.int64_contents.extend([5, 6])
    request.inputs.add(name="alcohol", datatype="FP64", shape=[2, 1]).contents.fp64_contents.extend(
        [1.5, 2.5]
    )
    request.inputs.add(name="color", datatype="FP32", shape=[2]).contents.fp32_contents.extend([3, 4])
    matrix = codec.decode_inputs(request, serving(), LIMITS)
    assert matrix.tolist() == [[1.5, 3, 5], [2.5, 4, 6]]


def test_text_feature_as_bytes_is_encoded_with_its_vocabulary():
    request = oip.ModelInferRequest(model_name="wine")
    request.inputs.add(name="alcohol", datatype="FP32", shape=[3]).contents.fp32_contents.extend([1, 1, 1])
    request.inputs.add(name="color", datatype="BYTES", shape=[3]).contents.bytes_contents.extend(
        [b"red", b"white", b"rose"]
    )
    request.inputs.add(name="hue", datatype="FP32", shape=[3]).contents.fp32_contents.extend([0, 0, 0])
    matrix = codec.decode_inputs(request, serving({"color": ("red", "white")}), LIMITS)
    assert matrix[:, 1].tolist() == [0, 1, -1]


def test_raw_bytes_layout_is_tritons():
    raw = b"".join(struct.pack("<I", len(v)) + v for v in (b"red", b"", b"white"))
    assert codec._split_bytes(raw, "color") == [b"red", b"", b"white"]
    with pytest.raises(InvalidArgument, match="truncated"):
        codec._split_bytes(raw[:-1], "color")


@pytest.mark.parametrize(
    ("mutate", "error", "words"),
    [
        (lambda r: r.inputs[0].shape.__setitem__(1, 4), InvalidArgument, "expected [-1, 3]"),
        (lambda r: setattr(r.inputs[0], "datatype", "BYTES"), InvalidArgument, "datatype 'BYTES'"),
        (lambda r: setattr(r.inputs[0], "name", "x"), InvalidArgument, "unknown input 'x'"),
        (lambda r: r.raw_input_contents.__setitem__(0, b"abc"), InvalidArgument, "needs 24"),
        (lambda r: r.inputs[0].shape.__setitem__(0, 0), InvalidArgument, "no rows"),
        (lambda r: r.inputs[0].shape.__setitem__(0, 101), ResourceExhausted, "at most 100"),
    ],
)
def test_bad_tensors_name_their_problem(mutate, error, words):
    request = raw_request(np.zeros((2, 3), np.float32))
    mutate(request)
    with pytest.raises(error) as caught:
        codec.decode_inputs(request, serving(), LIMITS)
    assert words in caught.value.message


def test_response_is_raw_like_tritons_and_honours_requested_outputs():
    target = serving()
    request = raw_request(np.array([[1, 1, 1], [-5, -5, -5]], np.float32))
    request.outputs.add(name="label")
    outputs = SumModel().run(codec.decode_inputs(request, target, LIMITS))
    names = codec.requested_outputs(request, target)
    response = codec.encode_response(request, target, outputs, names)
    assert [o.name for o in response.outputs] == ["label"] and response.model_version == "7"
    assert response.outputs[0].datatype == "BYTES" and list(response.outputs[0].shape) == [2]
    assert codec._split_bytes(response.raw_output_contents[0], "label") == [b"high", b"low"]
    request.outputs.add(name="logits")
    with pytest.raises(InvalidArgument, match="unknown output 'logits'"):
        codec.requested_outputs(request, target)
