"""Open Inference Protocol gRPC tensors ↔ the core's inputs and outputs (DESIGN: inference tensors).

Contents come typed (`contents.*_contents`) or raw (`raw_input_contents`, little-endian, one entry
per input), as Triton accepts them; what a tensor may carry and where it goes is `tensors`' (the
transport-neutral rules, shared with REST). Outputs go back as `raw_output_contents`, as Triton
answers, under the graph's names and datatypes (see `interface`): e.g. `probabilities` FP32 [n, C]
and `label` BYTES [n] for the platform's classifiers, `output_label` and `output_probability` (a
ZipMap, as FP32 [n, C]) for skl2onnx's, `variable` for a regressor.
"""

from __future__ import annotations

import json
import struct

import numpy as np

from inference import grpc_service_pb2 as oip
from mlops.errors import InvalidArgument, ResourceExhausted
from services.inference import tensors
from services.inference.batching import Outputs
from services.inference.core import Serving
from services.inference.runtime import Rows
from services.inference.tensors import ACCEPTED, NUMERIC, Limits, label_strings, where

__all__ = [
    "Limits",
    "decode_inputs",
    "encode_response",
    "label_strings",
    "model_metadata",
    "requested_outputs",
]

TYPED_FIELD = {
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "BOOL": "bool_contents",
    "BYTES": "bytes_contents",
}
CONTENT_FIELDS = sorted(set(TYPED_FIELD.values()))
NARROW_TYPED = {name: np.iinfo(NUMERIC[name]) for name in ("INT8", "INT16", "UINT8", "UINT16")}
"""Datatypes whose typed contents travel in a wider field (int_contents, uint_contents): a value may
not fit, and numpy would wrap it silently (INT8 1000 becomes -24)."""
_where = where
_shape_text = tensors.shape_text


class GrpcTensor:
    """A request tensor with its raw content, if the request is raw (`tensors.Tensor`)."""

    __slots__ = ("datatype", "limits", "name", "raw", "shape", "tensor")

    def __init__(self, tensor, raw: bytes | None, limits: Limits) -> None:
        self.tensor = tensor
        self.raw = raw
        self.limits = limits
        self.name = tensor.name
        self.datatype = tensor.datatype
        self.shape = tensor.shape

    def numbers(self, count: int) -> np.ndarray:
        return _numbers(self.tensor, self.raw, count, self.limits)

    def texts(self, count: int) -> list[bytes]:
        name = self.name
        if self.raw is not None:
            values = _split_bytes(self.raw, name)
        else:
            values = list(self.tensor.contents.bytes_contents)
        if len(values) != count:
            raise InvalidArgument(f"input {name!r} has {len(values)} strings for {count} values")
        return values


def decode_inputs(request: oip.ModelInferRequest, serving: Serving, limits: Limits) -> Rows:
    """The request's rows as the graph's inputs (`tensors.feed`), or an error naming what is wrong."""
    inputs = request.inputs
    raw = request.raw_input_contents
    if raw:
        if len(raw) != len(inputs):
            raise InvalidArgument(
                f"raw_input_contents has {len(raw)} entries for {len(inputs)} inputs; "
                "with raw contents every input needs exactly one entry, in the order of the inputs"
            )
        size = sum(len(r) for r in raw)
        if size > limits.max_bytes:
            raise ResourceExhausted(
                f"the request carries {size} bytes of tensors; this server takes at most {limits.max_bytes}"
            )
    wrapped = [GrpcTensor(tensor, raw[i] if raw else None, limits) for i, tensor in enumerate(inputs)]
    return tensors.feed(serving, wrapped, limits)


def _numbers(tensor, raw: bytes | None, count: int, limits: Limits) -> np.ndarray:
    datatype = tensor.datatype
    dtype = NUMERIC.get(datatype)
    if dtype is None:
        raise InvalidArgument(f"input {tensor.name!r} has datatype {datatype!r}; expected {ACCEPTED}")
    if count * dtype.itemsize > limits.max_bytes:
        raise ResourceExhausted(
            f"input {tensor.name!r} holds {count * dtype.itemsize} bytes; this server takes at most "
            f"{limits.max_bytes}"
        )
    if raw is not None:
        if _has_typed(tensor):
            raise InvalidArgument(f"input {tensor.name!r} has both typed contents and raw_input_contents")
        needed = count * dtype.itemsize
        if len(raw) != needed:
            raise InvalidArgument(
                f"raw content of input {tensor.name!r} has {len(raw)} bytes; shape "
                f"{_shape_text(tensor.shape)} of {datatype} needs {needed}"
            )
        return np.frombuffer(raw, dtype=dtype)
    field = TYPED_FIELD.get(datatype)
    if field is None:
        raise InvalidArgument(
            f"input {tensor.name!r}: {datatype} has no typed contents field; send it as raw_input_contents"
        )
    values = getattr(tensor.contents, field)
    if len(values) != count:
        others = [name for name in CONTENT_FIELDS if name != field and len(getattr(tensor.contents, name))]
        if others:
            raise InvalidArgument(
                f"input {tensor.name!r} is declared {datatype} but its contents are in {others[0]}; "
                f"{datatype} goes in {field}"
            )
        raise InvalidArgument(
            f"input {tensor.name!r} has {len(values)} values in {field}; shape "
            f"{_shape_text(tensor.shape)} needs {count}"
        )
    info = NARROW_TYPED.get(datatype)
    if info is None:
        return np.array(values, dtype=dtype)
    wide = np.array(values, dtype=np.int64)
    outside = (wide < info.min) | (wide > info.max)
    if outside.any():
        flat = int(np.argmax(outside))
        raise InvalidArgument(
            f"input {tensor.name!r}: value {wide[flat]} at {_where(flat, tensor.shape)} is outside "
            f"{datatype} ({info.min}..{info.max})"
        )
    return wide.astype(dtype)


def _has_typed(tensor) -> bool:
    if not tensor.HasField("contents"):
        return False
    contents = tensor.contents
    return any(len(getattr(contents, name)) for name in CONTENT_FIELDS)


def _split_bytes(raw: bytes, name: str) -> list[bytes]:
    """Triton's raw BYTES layout: each element is a 4-byte little-endian length and its bytes."""
    values, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidArgument(f"raw BYTES content of input {name!r} is truncated at byte {offset}")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidArgument(f"raw BYTES content of input {name!r} is truncated at byte {offset}")
        values.append(raw[offset : offset + length])
        offset += length
    return values


def requested_outputs(request: oip.ModelInferRequest, serving: Serving) -> tuple[str, ...]:
    """The output names to answer with: those asked for, or all of the model's."""
    return tensors.requested_outputs([o.name for o in request.outputs], serving)


def bytes_tensor(values: list[str]) -> bytes:
    """BYTES tensor contents as Triton lays them out: each value's length (4 bytes, little-endian), then the value."""
    parts = []
    for value in values:
        data = value.encode()
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def encode_response(
    request: oip.ModelInferRequest, serving: Serving, outputs: Outputs, names: tuple[str, ...]
) -> oip.ModelInferResponse:
    response = oip.ModelInferResponse(
        model_name=request.model_name, model_version=serving.version_text, id=request.id
    )
    added = response.outputs
    raw = response.raw_output_contents
    for answer in tensors.answers(serving, outputs, names):
        if answer.datatype == "BYTES":
            raw.append(_bytes_layout(answer.data))  # type: ignore[arg-type]
        else:
            raw.append(answer.data.tobytes())  # type: ignore[union-attr]
        added.add(name=answer.name, datatype=answer.datatype, shape=answer.shape)
    return response


def _bytes_layout(values: list[bytes]) -> bytes:
    parts = []
    for value in values:
        parts.append(struct.pack("<I", len(value)))
        parts.append(value)
    return b"".join(parts)


def model_metadata(serving: Serving, versions: list[str]) -> oip.ModelMetadataResponse:
    """The graph's inputs (with the columns each carries) and outputs (a ZipMap as its tensor), and
    the model's parameters."""
    spec = serving.spec
    interface = serving.interface
    response = oip.ModelMetadataResponse(name=serving.model, versions=versions, platform="onnxruntime_onnx")
    for name, datatype, shape, columns in interface.metadata_inputs():
        tensor = response.inputs.add(name=name, datatype=datatype, shape=shape)
        tensor.parameters["feature_names"].string_param = columns
    for plan in interface.outputs:
        response.outputs.add(name=plan.name, datatype=plan.datatype, shape=list(plan.shape))
    params = response.parameters
    params["version"].string_param = serving.version_text
    params["task"].string_param = spec.task
    params["allow_nan"].bool_param = bool(getattr(serving.loaded, "allow_nan", False))
    params["role"].string_param = spec.role
    params["traffic_percent"].int64_param = spec.traffic_percent
    params["feature_names"].string_param = json.dumps(list(spec.feature_names))
    params["class_labels"].string_param = json.dumps(list(interface.class_labels))
    params["categories"].string_param = json.dumps({k: list(v) for k, v in serving.categories.items()})
    params["text_features"].string_param = json.dumps(list(interface.text_features))
    params[
        "per_feature_inputs"
    ].string_param = (
        "each feature may instead be sent as its own tensor named after it, shape [-1] or [-1, 1]"
    )
    return response
