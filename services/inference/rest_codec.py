"""Open Inference Protocol over HTTP (KServe V2 REST) ↔ the gRPC messages the servicer answers.

A REST request becomes the `ModelInferRequest` a gRPC client would have sent, every input as raw
contents (little-endian, BYTES as Triton lays them out), so that both transports share one path
from there on. Inputs come as JSON (`data`, flat or nested, in row-major order) or through the
binary tensor extension, as `tritonclient.http` sends them: the body is the JSON header
(`Inference-Header-Content-Length` bytes) followed by each binary input's bytes, in the order of
the inputs, each declared by its `parameters.binary_data_size`. Outputs go back as JSON `data`, or
binary when the request asks (`parameters.binary_data` on an output, or `binary_data_output` for
all of them), the answer then being laid out the same way.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable

import numpy as np

from inference import grpc_service_pb2 as oip
from services.inference.codec import NUMERIC, TYPED_FIELD

BINARY_SIZE = "binary_data_size"
HEADER_LENGTH = "inference-header-content-length"


class BadRequest(ValueError):
    """The body is not a request this protocol can read; the message names what is wrong."""


def dumps(document: object) -> bytes:
    """Compact JSON, UTF-8."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def loads(body: bytes | memoryview, what: str = "the request body") -> dict:
    try:
        document = json.loads(bytes(body))
    except (UnicodeDecodeError, ValueError) as error:
        raise BadRequest(f"{what} is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise BadRequest(f"{what} must be a JSON object, not {type(document).__name__}")
    return document


def infer_request(
    body: bytes, header_length: int | None, model: str, version: str
) -> tuple[oip.ModelInferRequest, Callable[[str], bool]]:
    """The gRPC request a REST body stands for, and which outputs the caller wants in binary."""
    if header_length is None:
        header, binary = body, memoryview(b"")
    else:
        if not 0 <= header_length <= len(body):
            raise BadRequest(
                f"Inference-Header-Content-Length is {header_length}, but the body has {len(body)} bytes"
            )
        view = memoryview(body)
        header, binary = view[:header_length], view[header_length:]
    document = loads(header, "the inference header" if header_length is not None else "the request body")
    request = oip.ModelInferRequest(model_name=model, model_version=version, id=_text(document, "id"))
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest('the request has no "inputs": send a list of {"name", "shape", "datatype", "data"}')
    offset = 0
    for position, item in enumerate(inputs):
        if not isinstance(item, dict):
            raise BadRequest(f"inputs[{position}] must be an object with name, shape, datatype and data")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest(f'inputs[{position}] has no "name"')
        datatype = item.get("datatype")
        if not isinstance(datatype, str):
            raise BadRequest(f'input {name!r} has no "datatype" (FP32, INT64, BYTES, ...)')
        shape = item.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise BadRequest(
                f'input {name!r}: "shape" must be a list of non-negative integers, not {shape!r}'
            )
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        size = (item.get("parameters") or {}).get(BINARY_SIZE)
        if size is None:
            if "data" not in item:
                raise BadRequest(f'input {name!r} has neither "data" nor parameters.{BINARY_SIZE}')
            raw = _from_json(name, datatype, shape, item["data"])
        else:
            if "data" in item:
                raise BadRequest(f'input {name!r} has both "data" and parameters.{BINARY_SIZE}')
            if not isinstance(size, int) or size < 0:
                raise BadRequest(f"input {name!r}: {BINARY_SIZE} must be a non-negative integer")
            if offset + size > len(binary):
                raise BadRequest(
                    f"input {name!r}: {BINARY_SIZE} {size} goes past the end of the body "
                    f"({len(binary) - offset} bytes of binary data left)"
                )
            raw = bytes(binary[offset : offset + size])
            offset += size
        request.raw_input_contents.append(raw)
    if offset != len(binary):
        raise BadRequest(
            f"the body has {len(binary) - offset} bytes after the binary inputs' {offset}: "
            f"check each input's {BINARY_SIZE} and Inference-Header-Content-Length"
        )
    return request, _binary_choice(document, request)


def _text(document: dict, key: str) -> str:
    value = document.get(key, "")
    if not isinstance(value, str):
        raise BadRequest(f'"{key}" must be a string')
    return value


def _flag(parameters: object, key: str, where: str) -> bool | None:
    if parameters is None:
        return None
    if not isinstance(parameters, dict):
        raise BadRequest(f'{where}: "parameters" must be an object')
    value = parameters.get(key)
    if value is not None and not isinstance(value, bool):
        raise BadRequest(f"{where}: parameters.{key} must be true or false")
    return value


def _binary_choice(document: dict, request: oip.ModelInferRequest) -> Callable[[str], bool]:
    every = bool(_flag(document.get("parameters"), "binary_data_output", "the request"))
    outputs = document.get("outputs")
    if outputs is None:
        return lambda name: every
    if not isinstance(outputs, list):
        raise BadRequest('"outputs" must be a list of {"name", "parameters"}')
    chosen: dict[str, bool] = {}
    for position, item in enumerate(outputs):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            raise BadRequest(f'outputs[{position}] has no "name"')
        request.outputs.add(name=name)
        binary = _flag(item.get("parameters"), "binary_data", f"output {name!r}")
        chosen[name] = every if binary is None else binary
    return lambda name: chosen.get(name, every)


def _flatten(data: object) -> list:
    """Nested lists flattened in row-major order (a flat list comes back as it is)."""
    if not isinstance(data, list):
        return [data]
    if not any(isinstance(value, list) for value in data):
        return data
    flat: list = []
    for value in data:
        flat.extend(_flatten(value))
    return flat


def _from_json(name: str, datatype: str, shape: list[int], data: object) -> bytes:
    count = math.prod(shape)
    values = _flatten(data)
    if len(values) != count:
        raise BadRequest(
            f"input {name!r} has {len(values)} values in data; shape [{', '.join(map(str, shape))}] needs {count}"
        )
    if datatype == "BYTES":
        parts = []
        for value in values:
            if not isinstance(value, str):
                raise BadRequest(f"input {name!r} is BYTES: its data must be strings, not {value!r}")
            encoded = value.encode()
            parts += (struct.pack("<I", len(encoded)), encoded)
        return b"".join(parts)
    dtype = NUMERIC.get(datatype)
    if dtype is None:
        raise BadRequest(
            f"input {name!r} has datatype {datatype!r}; expected FP32, FP64, FP16, INT8-64, UINT8-64, BOOL or BYTES"
        )
    try:
        if dtype.kind == "f":
            array = np.asarray(values, dtype=np.float64)
        else:
            array = np.asarray(values)
    except (ValueError, TypeError) as error:
        raise BadRequest(f"input {name!r}: data is not {datatype}: {error}") from None
    if dtype.kind == "f":
        return array.astype(dtype).tobytes()
    if dtype.kind == "b":
        if array.size and array.dtype.kind != "b":
            raise BadRequest(f"input {name!r} is BOOL: its data must be true or false")
        return array.astype(dtype).tobytes()
    if array.size and array.dtype.kind not in "iu":
        raise BadRequest(f"input {name!r} is {datatype}: its data must be integers")
    info = np.iinfo(dtype)
    if array.size and (array.min() < info.min or array.max() > info.max):
        raise BadRequest(f"input {name!r}: a value is outside {datatype} ({info.min}..{info.max})")
    return array.astype(dtype).tobytes()


def _raw_outputs(response: oip.ModelInferResponse) -> list[bytes]:
    """Each output's bytes, raw as the servicer answers, or made from typed contents."""
    if response.raw_output_contents:
        return list(response.raw_output_contents)
    raws = []
    for tensor in response.outputs:
        values = getattr(tensor.contents, TYPED_FIELD.get(tensor.datatype, "fp32_contents"))
        if tensor.datatype == "BYTES":
            raws.append(b"".join(struct.pack("<I", len(v)) + v for v in values))
        else:
            raws.append(np.asarray(values, dtype=NUMERIC.get(tensor.datatype, np.float32)).tobytes())
    return raws


def _split_bytes(raw: bytes) -> list[str]:
    values, offset = [], 0
    while offset + 4 <= len(raw):
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        values.append(raw[offset : offset + length].decode(errors="replace"))
        offset += length
    return values


def _json_data(datatype: str, raw: bytes) -> list:
    if datatype == "BYTES":
        return _split_bytes(raw)
    return np.frombuffer(raw, dtype=NUMERIC.get(datatype, np.dtype("<f4"))).tolist()


def infer_response(
    response: oip.ModelInferResponse, binary: Callable[[str], bool]
) -> tuple[bytes, int | None]:
    """The REST body for a response, and the length of its JSON header when binary outputs follow it."""
    outputs, blobs = [], []
    for tensor, raw in zip(response.outputs, _raw_outputs(response), strict=True):
        item: dict = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if binary(tensor.name):
            item["parameters"] = {BINARY_SIZE: len(raw)}
            blobs.append(raw)
        else:
            item["data"] = _json_data(tensor.datatype, raw)
        outputs.append(item)
    document: dict = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        document["id"] = response.id
    document["outputs"] = outputs
    header = dumps(document)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def parameters(values) -> dict:
    """A protobuf `map<string, InferParameter>` as JSON."""
    result = {}
    for key, value in values.items():
        which = value.WhichOneof("parameter_choice")
        if which is not None:
            result[key] = getattr(value, which)
    return result


def model_metadata(message: oip.ModelMetadataResponse) -> bytes:
    def tensors(items) -> list[dict]:
        out = []
        for tensor in items:
            item: dict = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
            if tensor.parameters:
                item["parameters"] = parameters(tensor.parameters)
            out.append(item)
        return out

    document = {
        "name": message.name,
        "versions": list(message.versions),
        "platform": message.platform,
        "inputs": tensors(message.inputs),
        "outputs": tensors(message.outputs),
        "parameters": parameters(message.parameters),
    }
    return dumps(document)


def server_metadata(message: oip.ServerMetadataResponse) -> bytes:
    return dumps({"name": message.name, "version": message.version, "extensions": list(message.extensions)})


def repository_index(message: oip.RepositoryIndexResponse) -> bytes:
    return dumps(
        [{"name": m.name, "version": m.version, "state": m.state, "reason": m.reason} for m in message.models]
    )
