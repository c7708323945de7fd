"""An ONNX graph read as the platform's signature (`read_signature`): its inputs with the data set columns
that feed them, its outputs with their roles, its class labels, task and opset. The rules are
described in `mlops.onnx_signature`, which also holds the conversions that use the result.

Imports onnx and numpy only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from mlops.errors import InvalidArgument
from mlops.registry.v1 import registry_pb2 as pb

LABEL = "label"
PROBABILITIES = "probabilities"
VALUE = "value"
COLUMNS_METADATA = "mlops.columns."
"""Metadata key prefix naming an input's columns: `mlops.columns.<input>` = `["a", "b"]` or `a,b`."""

LEGACY_INPUT = "input"
LEGACY_ROLES = {
    "probabilities": PROBABILITIES,
    "label": LABEL,
    "prediction": VALUE,
    "variable": VALUE,
    "value": VALUE,
}

DATATYPES = {
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.DOUBLE: "FP64",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.BFLOAT16: "BF16",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT16: "INT16",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.UINT64: "UINT64",
    onnx.TensorProto.UINT32: "UINT32",
    onnx.TensorProto.UINT16: "UINT16",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.STRING: "BYTES",
}
"""ONNX element types → Open Inference Protocol datatypes."""

NUMPY = {
    "FP32": np.float32,
    "FP64": np.float64,
    "FP16": np.float16,
    "INT64": np.int64,
    "INT32": np.int32,
    "INT16": np.int16,
    "INT8": np.int8,
    "UINT64": np.uint64,
    "UINT32": np.uint32,
    "UINT16": np.uint16,
    "UINT8": np.uint8,
    "BOOL": np.bool_,
    "BYTES": np.object_,
}
"""OIP datatypes → the numpy dtype onnxruntime takes for them."""

_CLASSIFIER_OPS = {
    "ZipMap",
    "TreeEnsembleClassifier",
    "LinearClassifier",
    "SVMClassifier",
}


# Reading ---------------------------------------------------------------------------------------


def read_signature(
    model: bytes, *, columns: Sequence[str], label: str | None, class_labels: Sequence[str] = ()
) -> pb.ModelSignature:
    """The signature of an ONNX model judged on a data set with `columns` (its label column `label`).

    With no columns (a model registered without a data set) the inputs keep no columns and nothing
    is checked against a data set. Raises InvalidArgument naming what does not fit.
    """
    graph_model = _load(model)
    graph = graph_model.graph
    initializers = {init.name for init in graph.initializer}
    graph_inputs = [value for value in graph.input if value.name not in initializers]
    if not graph_inputs:
        raise InvalidArgument("the ONNX graph has no inputs")
    if not graph.output:
        raise InvalidArgument("the ONNX graph has no outputs")
    metadata = {prop.key: prop.value for prop in graph_model.metadata_props}

    inputs = [_input_spec(value) for value in graph_inputs]
    if columns:
        _assign_columns(inputs, list(columns), label, metadata)
    graph_labels = _graph_class_labels(graph)
    outputs = [_output_spec(value) for value in graph.output]
    _assign_roles(outputs, has_graph_labels=graph_labels is not None)

    labels = list(graph_labels) if graph_labels is not None else [str(c) for c in class_labels]
    classification = any(o.role in (LABEL, PROBABILITIES) for o in outputs) or any(
        o.name == LABEL or "label" in o.name.lower() for o in graph.output
    )
    for spec in outputs:
        if spec.role == PROBABILITIES:
            width = spec.shape[-1] if len(spec.shape) >= 2 else -1
            if spec.onnx_type and labels:
                spec.shape[:] = [-1, len(labels)]
            elif width > 0 and labels and width != len(labels):
                raise InvalidArgument(
                    f"output {spec.name!r} has {width} probability columns but there are "
                    f"{len(labels)} class labels ({', '.join(labels[:10])}); "
                    "the model and the data set's label do not agree"
                )
    fed = [c for spec in inputs for c in spec.columns]
    return pb.ModelSignature(
        inputs=inputs,
        outputs=outputs,
        feature_names=fed,
        class_labels=labels if classification else [],
        task="classification" if classification else "regression",
        onnx_opset=_opset(graph_model),
    )


def _load(model: bytes) -> onnx.ModelProto:
    if not model:
        raise InvalidArgument("the model file is empty")
    try:
        graph_model = onnx.load_from_string(model)
    except Exception as error:  # protobuf raises DecodeError, onnx its own: either way not ONNX
        raise InvalidArgument(f"not an ONNX model: {error}") from error
    if not graph_model.HasField("graph") or not graph_model.graph.node:
        raise InvalidArgument("not an ONNX model: the file holds no graph")
    return graph_model


def _shape(type_proto) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in type_proto.shape.dim]


def _type_text(type_proto) -> str:
    """ONNX's own spelling of a type, e.g. `seq(map(int64,tensor(float)))`."""
    kind = type_proto.WhichOneof("value")
    if kind == "tensor_type":
        return f"tensor({onnx.helper.tensor_dtype_to_string(type_proto.tensor_type.elem_type)[12:].lower()})"
    if kind == "sequence_type":
        return f"seq({_type_text(type_proto.sequence_type.elem_type)})"
    if kind == "map_type":
        key = onnx.helper.tensor_dtype_to_string(type_proto.map_type.key_type)[12:].lower()
        return f"map({key},{_type_text(type_proto.map_type.value_type)})"
    return kind or "unknown"


def _input_spec(value) -> pb.TensorSpec:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        raise InvalidArgument(
            f"input {value.name!r} is {_type_text(value.type)}; only tensor inputs can be fed from a data set"
        )
    elem = value.type.tensor_type.elem_type
    if elem not in DATATYPES:
        raise InvalidArgument(
            f"input {value.name!r} has element type {_type_text(value.type)}, not supported"
        )
    return pb.TensorSpec(name=value.name, datatype=DATATYPES[elem], shape=_shape(value.type.tensor_type))


def _output_spec(value) -> pb.TensorSpec:
    kind = value.type.WhichOneof("value")
    if kind == "tensor_type":
        elem = value.type.tensor_type.elem_type
        return pb.TensorSpec(
            name=value.name,
            datatype=DATATYPES.get(elem, _type_text(value.type)),
            shape=_shape(value.type.tensor_type),
        )
    # skl2onnx's and onnxmltools' ZipMap: one map per row, served as the FP32 [-1, C] tensor it stands for.
    return pb.TensorSpec(name=value.name, datatype="FP32", shape=[-1, -1], onnx_type=_type_text(value.type))


def _metadata_columns(metadata: Mapping[str, str], name: str) -> list[str] | None:
    text = metadata.get(COLUMNS_METADATA + name)
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        value = [part.strip() for part in text.split(",") if part.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"metadata {COLUMNS_METADATA + name!r} must be a JSON list of column names")
    return value


def _width(spec: pb.TensorSpec) -> int:
    """The number of columns an input takes: its last dimension when rank 2 or more, 1 for rank 1."""
    if len(spec.shape) <= 1:
        return 1
    return spec.shape[-1]


def _assign_columns(
    inputs: list[pb.TensorSpec], columns: list[str], label: str | None, metadata: Mapping[str, str]
) -> None:
    if label is not None and label not in columns:
        raise InvalidArgument(f"the label column {label!r} is not among the data set's columns")
    features = [c for c in columns if c != label]
    known = set(columns)
    left: list[pb.TensorSpec] = []
    for spec in inputs:
        named = _metadata_columns(metadata, spec.name)
        if named is not None:
            unknown = [c for c in named if c not in known]
            if unknown:
                raise InvalidArgument(
                    f"input {spec.name!r}: its metadata names columns the data set lacks: {', '.join(unknown)}"
                )
            spec.columns[:] = named
        elif spec.name in features:
            spec.columns[:] = [spec.name]
        elif spec.name == label:
            raise InvalidArgument(
                f"input {spec.name!r} is the label column; a model cannot take its own label"
            )
        else:
            left.append(spec)
    if len(left) > 1:
        raise InvalidArgument(
            f"inputs {', '.join(repr(s.name) for s in left)} match no data set column; name each "
            f"after a column (one input per column), or list its columns in the model's metadata "
            f"'{COLUMNS_METADATA}<input>'"
        )
    used = {c for spec in inputs for c in spec.columns}
    if left:
        (spec,) = left
        rest = [c for c in features if c not in used]
        if not rest:
            raise InvalidArgument(
                f"input {spec.name!r} matches no data set column, and no column is left to feed it"
            )
        width = _width(spec)
        if width > 0 and width != len(rest):
            raise InvalidArgument(
                f"input {spec.name!r} takes {width} columns but the data set has {len(rest)} "
                f"non-label columns to feed it ({', '.join(rest[:12])}{', …' if len(rest) > 12 else ''}); "
                f"commit a data set with exactly its columns, or list them in the model's metadata "
                f"'{COLUMNS_METADATA}{spec.name}'"
            )
        spec.columns[:] = rest
    for spec in inputs:
        width = _width(spec)
        if width > 0 and width != len(spec.columns):
            raise InvalidArgument(
                f"input {spec.name!r} takes {width} columns, shape {list(spec.shape)}, "
                f"but {len(spec.columns)} are named for it ({', '.join(spec.columns)})"
            )


def _graph_class_labels(graph) -> list[str] | None:
    """The class labels an ai.onnx.ml classifier or ZipMap in the graph carries, in their order."""
    found = None
    for node in graph.node:
        if node.op_type not in _CLASSIFIER_OPS:
            continue
        for attribute in node.attribute:
            if attribute.name in ("classlabels_int64s", "classlabels_ints") and attribute.ints:
                found = [str(v) for v in attribute.ints]
            elif attribute.name == "classlabels_strings" and attribute.strings:
                found = [v.decode() for v in attribute.strings]
        if node.op_type == "ZipMap" and found is not None:
            return found  # the ZipMap's keys are the probabilities' columns as the graph answers them
    return found


def _assign_roles(outputs: list[pb.TensorSpec], *, has_graph_labels: bool) -> None:
    probabilities = None
    for spec in outputs:
        lowered = spec.name.lower()
        if spec.onnx_type.startswith("seq(map("):
            probabilities = probabilities or spec
        elif "prob" in lowered and spec.datatype in ("FP32", "FP64", "FP16"):
            probabilities = probabilities or spec
    if probabilities is not None:
        probabilities.role = PROBABILITIES
    label = next(
        (
            s
            for s in outputs
            if "label" in s.name.lower() and not s.onnx_type and s.datatype in ("INT64", "INT32", "BYTES")
        ),
        None,
    )
    if label is not None and (has_graph_labels or probabilities is None):
        # Without the graph's class labels an integer label is an index (a torch argmax): the
        # probabilities say the same, through class_labels, so the platform reads those instead.
        label.role = LABEL
    if probabilities is None and label is None:
        floats = [s for s in outputs if s.datatype in ("FP32", "FP64", "FP16") and not s.onnx_type]
        preferred = [s for s in floats if s.name.lower() in LEGACY_ROLES]
        chosen = (preferred or floats)[:1]
        if not chosen:
            raise InvalidArgument(
                f"no output holds a prediction: outputs {', '.join(repr(s.name) for s in outputs)}; "
                "a classifier needs a label or probabilities output, a regressor a float output"
            )
        chosen[0].role = VALUE


def _opset(graph_model: onnx.ModelProto) -> int:
    for entry in graph_model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 0


# Roles, with the legacy reading ----------------------------------------------------------------
