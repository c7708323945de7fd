"""Values a tensor may not carry: NaN and infinities (unless the model says it takes NaN), integers
outside their declared datatype, numbers outside the model's input type."""

from __future__ import annotations

import numpy as np
import pytest

from inference import grpc_service_pb2 as oip
from mlops.errors import InvalidArgument
from services.inference import codec
from tests.unit.test_inference_codec import LIMITS, raw_request, serving


def per_feature(datatype: str, field: str, column: list) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name="wine")
    for name in ("alcohol", "color"):
        request.inputs.add(name=name, datatype="FP32", shape=[len(column)]).contents.fp32_contents.extend(
            [1.0] * len(column)
        )
    tensor = request.inputs.add(name="hue", datatype=datatype, shape=[len(column)])
    getattr(tensor.contents, field).extend(column)
    return request


def refused(request, target=None) -> str:
    with pytest.raises(InvalidArgument) as caught:
        codec.decode_inputs(request, target or serving(), LIMITS)
    return caught.value.message


@pytest.mark.parametrize(
    ("datatype", "field", "value", "words"),
    [
        ("INT8", "int_contents", 1000, "value 1000 at index 3 is outside INT8 (-128..127)"),
        ("INT8", "int_contents", -129, "value -129 at index 3 is outside INT8 (-128..127)"),
        ("INT16", "int_contents", 40_000, "outside INT16 (-32768..32767)"),
        ("UINT8", "uint_contents", 256, "value 256 at index 3 is outside UINT8 (0..255)"),
        ("UINT16", "uint_contents", 70_000, "outside UINT16 (0..65535)"),
    ],
)
def test_typed_integers_outside_their_datatype_are_refused(datatype, field, value, words):
    message = refused(per_feature(datatype, field, [1, 2, 3, value]))
    assert message.startswith("input 'hue': ") and words in message, message


def test_typed_integers_at_their_bounds_are_taken():
    matrix = codec.decode_inputs(per_feature("INT8", "int_contents", [-128, 127]), serving(), LIMITS)
    assert matrix[:, 2].tolist() == [-128, 127]


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (np.nan, "input 'input': NaN at [0, 2]; this model does not take NaN"),
        (np.inf, "input 'input': inf at [0, 2]"),
        (-np.inf, "input 'input': -inf at [0, 2]"),
    ],
)
@pytest.mark.parametrize("datatype", ["FP32", "FP64", "FP16"])
def test_nan_and_infinities_are_refused(value, words, datatype):
    rows = np.array([[1, 2, value], [4, 5, 6]], dtype=codec.NUMERIC[datatype])
    message = refused(raw_request(rows, datatype))
    assert words in message, message


def test_typed_nan_is_refused_too():
    request = per_feature("FP64", "fp64_contents", [1.0, float("nan")])
    assert "input 'hue': NaN at index 1" in refused(request)


def test_a_value_beyond_the_models_input_type_is_refused():
    rows = np.array([[1, 2, 1e300]], dtype=np.float64)
    message = refused(raw_request(rows, "FP64"))
    assert "input 'input': value 1e+300 at [0, 2] is outside the model's FP32 input" in message, message


def test_a_model_that_takes_nan_says_so_and_gets_it():
    target = serving()
    target.loaded.allow_nan = True
    rows = np.array([[1, np.nan, 3]], dtype=np.float32)
    matrix = codec.decode_inputs(raw_request(rows), target, LIMITS)
    assert np.isnan(matrix[0, 1])
    assert "inf at [0, 1]" in refused(raw_request(np.array([[1, np.inf, 3]], np.float32)), target)
    metadata = codec.model_metadata(target, ["7"])
    assert metadata.parameters["allow_nan"].bool_param is True
    assert codec.model_metadata(serving(), ["7"]).parameters["allow_nan"].bool_param is False


def test_fp16_has_no_typed_field_and_says_so():
    request = oip.ModelInferRequest(model_name="wine")
    request.inputs.add(name="input", datatype="FP16", shape=[1, 3]).contents.fp32_contents.extend([1, 2, 3])
    assert "FP16 has no typed contents" in refused(request)
