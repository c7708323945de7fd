"""Open Inference Protocol tensors ↔ numpy, by the platform's contract (DESIGN: inference tensors).

Inputs: one tensor named after the model's input (`input`) of shape [n, F], features in the
desired state's order; or one tensor per feature, named after it, of shape [n] or [n, 1]. Numeric
datatypes are converted to the model's; a text feature may come as BYTES and is encoded with the
version's vocabulary (unseen values become -1). Contents come typed (`contents.*_contents`) or raw
(`raw_input_contents`, little-endian, one entry per input), as Triton accepts them.

Outputs go back as `raw_output_contents`, as Triton answers: `probabilities` FP32 [n, C], `label`
BYTES [n] (the class labels), `prediction` FP32 [n].
"""

from __future__ import annotations

import struct

import numpy as np

from inference import grpc_service_pb2 as oip
from mlops.errors import InvalidArgument, ResourceExhausted
from services.inference.batching import Outputs
from services.inference.core import Serving

NUMERIC = {
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "FP16": np.dtype("<f2"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "BOOL": np.dtype("?"),
}
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
DATATYPE_OF = {dtype: name for name, dtype in NUMERIC.items()}
ACCEPTED = "FP32, FP64, FP16, INT8-64, UINT8-64 or BOOL"
OUTPUT_DATATYPES = {"probabilities": "FP32", "label": "BYTES", "prediction": "FP32"}


class Limits:
    def __init__(self, *, max_rows: int, max_bytes: int) -> None:
        self.max_rows = max_rows
        self.max_bytes = max_bytes


def _shape_text(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def decode_inputs(request: oip.ModelInferRequest, serving: Serving, limits: Limits) -> np.ndarray:
    """The request's rows as the model's input matrix [n, F], or an error naming what is wrong."""
    inputs = request.inputs
    raw = request.raw_input_contents
    if not inputs:
        raise InvalidArgument(f"the request has no inputs; {_expected(serving)}")
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
    loaded = serving.loaded
    width = loaded.feature_count
    first = inputs[0]
    if len(inputs) == 1 and first.name == loaded.input_name:
        shape = first.shape
        if len(shape) != 2 or shape[1] != width or shape[0] < 0:
            raise InvalidArgument(
                f"input {first.name!r} has shape {_shape_text(shape)}; expected [-1, {width}] "
                f"(rows × the features {', '.join(serving.spec.feature_names)})"
            )
        rows = _check_rows(shape[0], limits)
        values = _numbers(first, raw[0] if raw else None, rows * width, limits)
        return _for_model(first, values, loaded).reshape(rows, width)
    return _per_feature(request, serving, limits)


def _where(flat: int, shape) -> str:
    """Where a flat position lies in the tensor as the caller shaped it: "index 3" or "[0, 2]"."""
    if len(shape) == 1:
        return f"index {flat}"
    return "[" + ", ".join(str(int(i)) for i in np.unravel_index(flat, tuple(shape))) + "]"


def _text_of(value) -> str:
    value = value.item()
    return f"{value:g}" if isinstance(value, float) else str(value)


def _for_model(tensor, values: np.ndarray, loaded) -> np.ndarray:
    """`values` (flat, in the declared datatype) converted to the model's input type, or an error
    naming the first value that has no place there: NaN (unless the model takes it), an infinity, or
    a number its type cannot hold. One vectorised check on the common path."""
    dtype = loaded.input_dtype
    if dtype.kind in "iu":
        return _for_integer_model(tensor, values, dtype)
    if values.dtype == dtype:
        converted = values
    else:
        with np.errstate(over="ignore"):  # a value too large for the model's type is reported below
            converted = values.astype(dtype)
    finite = np.isfinite(converted)
    if finite.all():
        return converted
    allow_nan = getattr(loaded, "allow_nan", False)
    bad = np.isinf(converted) if allow_nan else ~finite
    if not bad.any():
        return converted
    flat = int(np.argmax(bad))
    source = values[flat]
    where = _where(flat, tensor.shape)
    if values.dtype.kind == "f" and np.isnan(source):
        raise InvalidArgument(f"input {tensor.name!r}: NaN at {where}; this model does not take NaN")
    if values.dtype.kind == "f" and np.isinf(source):
        raise InvalidArgument(
            f"input {tensor.name!r}: {_text_of(source)} at {where}; infinite values are not accepted"
        )
    raise InvalidArgument(
        f"input {tensor.name!r}: value {_text_of(source)} at {where} is outside the model's "
        f"{DATATYPE_OF.get(dtype, dtype.name)} input"
    )


def _for_integer_model(tensor, values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    if values.dtype.kind == "f":
        bad = ~np.isfinite(values)
        if bad.any():
            flat = int(np.argmax(bad))
            raise InvalidArgument(
                f"input {tensor.name!r}: {_text_of(values[flat])} at {_where(flat, tensor.shape)}; "
                "this model takes integers"
            )
    if values.dtype != dtype and values.size and values.dtype.kind != "b":
        outside = (values < info.min) | (values > info.max)
        if outside.any():
            flat = int(np.argmax(outside))
            raise InvalidArgument(
                f"input {tensor.name!r}: value {_text_of(values[flat])} at {_where(flat, tensor.shape)} "
                f"is outside the model's {DATATYPE_OF.get(dtype, dtype.name)} input ({info.min}..{info.max})"
            )
    return values if values.dtype == dtype else values.astype(dtype)


def _expected(serving: Serving) -> str:
    loaded = serving.loaded
    features = ", ".join(repr(f) for f in serving.spec.feature_names)
    return (
        f"send {loaded.input_name!r} [-1, {loaded.feature_count}] or one tensor per feature "
        f"([-1] or [-1, 1]) named {features}"
    )


def _check_rows(rows: int, limits: Limits) -> int:
    if rows == 0:
        raise InvalidArgument("the request has no rows (the first dimension is 0)")
    if rows > limits.max_rows:
        raise ResourceExhausted(f"the request has {rows} rows; this server takes at most {limits.max_rows}")
    return rows


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


def _per_feature(request: oip.ModelInferRequest, serving: Serving, limits: Limits) -> np.ndarray:
    loaded = serving.loaded
    index = serving.feature_index
    raw = request.raw_input_contents
    rows: int | None = None
    columns: dict[int, np.ndarray] = {}
    for position, tensor in enumerate(request.inputs):
        name = tensor.name
        if name == loaded.input_name:
            raise InvalidArgument(
                f"input {name!r} was sent with other inputs; send either {name!r} alone or one tensor per feature"
            )
        column = index.get(name)
        if column is None:
            raise InvalidArgument(f"unknown input {name!r}; {_expected(serving)}")
        if column in columns:
            raise InvalidArgument(f"input {name!r} was sent twice")
        shape = tensor.shape
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] < 0:
            raise InvalidArgument(
                f"input {name!r} has shape {_shape_text(shape)}; a feature is [-1] or [-1, 1]"
            )
        if rows is None:
            rows = _check_rows(shape[0], limits)
        elif shape[0] != rows:
            raise InvalidArgument(f"input {name!r} has {shape[0]} rows; the inputs before it have {rows}")
        content = raw[position] if raw else None
        if tensor.datatype == "BYTES":
            columns[column] = _text_codes(tensor, content, rows, serving)
        else:
            columns[column] = _for_model(tensor, _numbers(tensor, content, rows, limits), loaded)
    missing = [f for f, i in index.items() if i not in columns]
    if missing:
        raise InvalidArgument(
            f"missing input{'s' if len(missing) > 1 else ''} {', '.join(repr(m) for m in missing)}; {_expected(serving)}"
        )
    assert rows is not None
    matrix = np.empty((rows, loaded.feature_count), dtype=loaded.input_dtype)
    for column, values in columns.items():
        matrix[:, column] = values
    return matrix


def _text_codes(tensor, raw: bytes | None, rows: int, serving: Serving) -> np.ndarray:
    name = tensor.name
    vocabulary = serving.categories.get(name)
    if vocabulary is None:
        raise InvalidArgument(
            f"input {name!r} has datatype BYTES but is a numeric feature of "
            f"{serving.model} v{serving.spec.version}; expected {ACCEPTED}"
        )
    if raw is not None:
        values = _split_bytes(raw, name)
    else:
        values = list(tensor.contents.bytes_contents)
    if len(values) != rows:
        raise InvalidArgument(f"input {name!r} has {len(values)} strings for {rows} rows")
    codes = {value.encode(): float(code) for code, value in enumerate(vocabulary)}
    return np.array([codes.get(value, -1.0) for value in values], dtype=np.float64)


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
    names = serving.loaded.output_names
    if not request.outputs:
        return names
    wanted = tuple(o.name for o in request.outputs)
    for name in wanted:
        if name not in names:
            raise InvalidArgument(
                f"unknown output {name!r}; {serving.model} v{serving.spec.version} answers {', '.join(names)}"
            )
    return wanted


def label_strings(serving: Serving, indices: np.ndarray) -> list[str]:
    labels = serving.label_values
    count = len(labels)
    return [labels[i] if 0 <= i < count else str(i) for i in indices.tolist()]


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
    tensors = response.outputs
    raw = response.raw_output_contents
    for name in names:
        value = outputs[name]
        if name == "label":
            raw.append(bytes_tensor(label_strings(serving, value)))
            tensors.add(name=name, datatype="BYTES", shape=value.shape)
            continue
        value = np.ascontiguousarray(value, dtype=np.float32) if value.dtype != np.float32 else value
        raw.append(value.tobytes())
        tensors.add(name=name, datatype="FP32", shape=value.shape)
    return response


def model_metadata(serving: Serving, versions: list[str]) -> oip.ModelMetadataResponse:
    """Inputs (the `input` tensor, with the feature names), outputs, and the model's parameters."""
    import json

    spec = serving.spec
    loaded = serving.loaded
    response = oip.ModelMetadataResponse(name=serving.model, versions=versions, platform="onnxruntime_onnx")
    tensor = response.inputs.add(name=loaded.input_name, datatype="FP32", shape=[-1, loaded.feature_count])
    tensor.parameters["feature_names"].string_param = json.dumps(list(spec.feature_names))
    for name in loaded.output_names:
        shape = {"probabilities": [-1, len(spec.class_labels)]}.get(name, [-1])
        response.outputs.add(name=name, datatype=OUTPUT_DATATYPES[name], shape=shape)
    params = response.parameters
    params["version"].string_param = serving.version_text
    params["task"].string_param = spec.task
    params["allow_nan"].bool_param = bool(getattr(loaded, "allow_nan", False))
    params["role"].string_param = spec.role
    params["traffic_percent"].int64_param = spec.traffic_percent
    params["feature_names"].string_param = json.dumps(list(spec.feature_names))
    params["class_labels"].string_param = json.dumps(list(spec.class_labels))
    params["categories"].string_param = json.dumps({k: list(v) for k, v in serving.categories.items()})
    params[
        "per_feature_inputs"
    ].string_param = (
        "each feature may instead be sent as its own tensor named after it, shape [-1] or [-1, 1]"
    )
    return response
