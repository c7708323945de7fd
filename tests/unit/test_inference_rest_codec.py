"""KServe V2 REST bodies ↔ the gRPC messages the servicer answers (services/inference/rest_codec.py)."""

from __future__ import annotations

import json
import re
import struct

import numpy as np
import pytest

from inference import grpc_service_pb2 as oip
from services.inference.rest_codec import BadRequest, infer_request, infer_response


def _body(document: dict) -> bytes:
    return json.dumps(document).encode()


def test_json_data_nested_or_flat_becomes_raw_contents():
    rows = np.arange(6, dtype=np.float32).reshape(2, 3) / 4
    for data in (rows.tolist(), rows.reshape(-1).tolist()):
        body = _body(
            {"id": "a", "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 3], "data": data}]}
        )
        request, binary = infer_request(body, None, "m", "2")
        assert (request.model_name, request.model_version, request.id) == ("m", "2", "a")
        assert list(request.inputs[0].shape) == [2, 3]
        np.testing.assert_array_equal(np.frombuffer(request.raw_input_contents[0], "<f4"), rows.reshape(-1))
        assert binary("probabilities") is False


def test_binary_inputs_follow_the_header_and_outputs_choose_binary():
    header = _body(
        {
            "inputs": [
                {"name": "a", "datatype": "INT64", "shape": [2], "parameters": {"binary_data_size": 16}},
                {"name": "b", "datatype": "BYTES", "shape": [1], "data": ["red"]},
            ],
            "outputs": [{"name": "label", "parameters": {"binary_data": True}}, {"name": "probabilities"}],
        }
    )
    body = header + np.array([3, 4], "<i8").tobytes()
    request, binary = infer_request(body, len(header), "m", "")
    assert request.raw_input_contents[0] == np.array([3, 4], "<i8").tobytes()
    assert request.raw_input_contents[1] == struct.pack("<I", 3) + b"red"
    assert [o.name for o in request.outputs] == ["label", "probabilities"]
    assert binary("label") and not binary("probabilities")


@pytest.mark.parametrize(
    ("document", "header_length", "words"),
    [
        ({"inputs": []}, None, 'no "inputs"'),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1.0]}]}, None, "needs 2"),
        ({"inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": [1000]}]}, None, "outside INT8"),
        (
            {"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1.5]}]},
            None,
            "must be integers",
        ),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": ["a"]}]}, None, "not FP32"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1], "data": []}]}, None, "non-negative"),
        ({"inputs": [{"name": "x", "datatype": "COMPLEX", "shape": [1], "data": [1]}]}, None, "'COMPLEX'"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}, None, 'neither "data"'),
        (
            {
                "inputs": [
                    {"name": "x", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 8}}
                ]
            },
            "header",
            "past the end",
        ),
    ],
)
def test_a_bad_body_is_refused_naming_the_problem(document, header_length, words):
    body = _body(document)
    with pytest.raises(BadRequest, match=re.escape(words)):
        infer_request(body, len(body) if header_length else None, "m", "")


def test_bytes_after_the_binary_inputs_and_a_wrong_header_length_are_refused():
    header = _body(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 4}}]}
    )
    with pytest.raises(BadRequest, match="4 bytes after"):
        infer_request(header + b"\0" * 8, len(header), "m", "")
    with pytest.raises(BadRequest, match="Inference-Header-Content-Length is"):
        infer_request(header, len(header) + 1, "m", "")
    with pytest.raises(BadRequest, match="not JSON"):
        infer_request(b"{", None, "m", "")


def test_a_response_as_json_or_binary():
    response = oip.ModelInferResponse(model_name="m", model_version="1", id="r")
    response.outputs.add(name="probabilities", datatype="FP32", shape=[1, 2])
    response.outputs.add(name="label", datatype="BYTES", shape=[1])
    response.raw_output_contents.append(np.array([0.25, 0.75], "<f4").tobytes())
    response.raw_output_contents.append(struct.pack("<I", 6) + b"barolo")
    body, length = infer_response(response, lambda name: False)
    assert length is None
    assert json.loads(body) == {
        "model_name": "m",
        "model_version": "1",
        "id": "r",
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [1, 2], "data": [0.25, 0.75]},
            {"name": "label", "datatype": "BYTES", "shape": [1], "data": ["barolo"]},
        ],
    }
    body, length = infer_response(response, lambda name: name == "probabilities")
    header = json.loads(body[:length])
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert header["outputs"][1]["data"] == ["barolo"]
    assert np.frombuffer(body[length:], "<f4").tolist() == [0.25, 0.75]
