"""Models to ONNX bytes: ONNX as it is, scikit-learn through skl2onnx, LightGBM and XGBoost through
onnxmltools, PyTorch through torch.onnx.

Each converter is imported only when a model needs it, so the client installs and imports without any
of them; a missing one is a `MissingExtra` naming the extra to install. A converted model takes one
float input named `input` of shape [-1, F], the F feature columns in data set order: the layout the
platform feeds without further mapping.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from mlops_client.errors import InvalidArgument, MissingExtra

INPUT_NAME = "input"
SKL2ONNX_TYPES = "skl2onnx.common.data_types"
ONNXMLTOOLS_TYPES = "onnxmltools.convert.common.data_types"


def to_onnx(
    model: Any,
    *,
    sample: Any = None,
    input_name: str = INPUT_NAME,
    output_names: list[str] | None = None,
    opset: int | None = None,
) -> bytes:
    """ONNX bytes from ONNX bytes, a file, an `onnx.ModelProto`, or a fitted model of a known library.

    `sample` (a few rows of features) gives the feature count when the model does not record it, and is
    required for a PyTorch module, which is traced on it.
    """
    if isinstance(model, bytes | bytearray | memoryview):
        return bytes(model)
    if isinstance(model, str | Path):
        file = Path(model)
        if not file.is_file():
            raise InvalidArgument(f"no model file at {file}")
        return file.read_bytes()
    kind = library_of(model)
    if kind == "onnx":
        return model.SerializeToString()
    if kind == "torch":
        return _from_torch(model, sample, input_name, output_names, opset)
    if kind == "lightgbm":
        tools = _require("onnxmltools", "lightgbm")
        return _serialize(
            tools.convert_lightgbm(
                model,
                initial_types=_float_input(model, sample, input_name, ONNXMLTOOLS_TYPES),
                target_opset=opset,
            )
        )
    if kind == "xgboost":
        tools = _require("onnxmltools", "lightgbm")
        return _serialize(
            tools.convert_xgboost(
                model,
                initial_types=_float_input(model, sample, input_name, ONNXMLTOOLS_TYPES),
                target_opset=opset,
            )
        )
    if kind == "sklearn":
        skl2onnx = _require("skl2onnx", "sklearn")
        converted = skl2onnx.convert_sklearn(
            model, initial_types=_float_input(model, sample, input_name, SKL2ONNX_TYPES), target_opset=opset
        )
        return _serialize(converted)
    raise InvalidArgument(
        f"cannot make ONNX of a {type(model).__module__}.{type(model).__name__}: give ONNX bytes, a path to a "
        ".onnx file, an onnx.ModelProto, or a scikit-learn, LightGBM, XGBoost or PyTorch model"
    )


def library_of(model: Any) -> str | None:
    """Which converter a model needs, told from its class (and its bases) without importing any library."""
    for cls in type(model).__mro__:
        root = cls.__module__.split(".")[0]
        if root == "onnx" and cls.__name__ == "ModelProto":
            return "onnx"
        if root in ("torch", "lightgbm", "xgboost"):
            return root
        if root == "sklearn" and cls.__name__ != "object":
            return "sklearn"
    return None


def _require(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(
            f"converting this model needs {module}: pip install 'mlops-client[{extra}]'"
        ) from None


def _serialize(model: Any) -> bytes:
    return model.SerializeToString()


def feature_count(model: Any, sample: Any) -> int:
    """F, from the sample's columns or what the fitted model recorded."""
    if sample is not None:
        shape = getattr(sample, "shape", None)
        if shape is None:
            rows = list(sample)
            shape = (len(rows), len(rows[0]) if rows else 0)
        if len(shape) != 2:
            raise InvalidArgument(f"sample must be rows of features (2 dimensions), got shape {tuple(shape)}")
        return int(shape[1])
    for attribute in ("n_features_in_", "n_features_"):
        if isinstance(getattr(model, attribute, None), int):
            return getattr(model, attribute)
    if callable(getattr(model, "num_feature", None)):  # a LightGBM Booster
        return int(model.num_feature())
    raise InvalidArgument("cannot tell the model's feature count: pass sample= (a few rows of features)")


def _float_input(model: Any, sample: Any, input_name: str, types_module: str) -> list[tuple[str, Any]]:
    # each converter checks the input type's class: skl2onnx's and onnxmltools' are not interchangeable
    tensor_type = importlib.import_module(types_module).FloatTensorType
    return [(input_name, tensor_type([None, feature_count(model, sample)]))]


def _from_torch(
    model: Any, sample: Any, input_name: str, output_names: list[str] | None, opset: int | None
) -> bytes:
    torch = sys.modules.get("torch") or _require("torch", "torch")
    _require("onnxscript", "torch")
    if sample is None:
        raise InvalidArgument(
            "a PyTorch module is exported by tracing it: pass sample= (a few rows of input)"
        )
    example = sample if isinstance(sample, torch.Tensor) else torch.as_tensor(_float32(sample))
    if example.ndim >= 1 and example.shape[0] < 2:
        # a batch of one would be fixed at one row; two rows keep the batch dimension free
        example = torch.cat([example, example])
    batch = torch.export.Dim("batch")
    was_training = model.training
    model.eval()
    try:
        program = torch.onnx.export(
            model,
            (example,),
            input_names=[input_name],
            output_names=output_names,
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
    finally:
        model.train(was_training)
    return program.model_proto.SerializeToString()


def _float32(sample: Any) -> Any:
    numpy = _require("numpy", "torch")
    return numpy.array(sample, dtype=numpy.float32)  # a copy: torch wants a writable array
