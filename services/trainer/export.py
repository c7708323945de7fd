"""The checked outputs of a run: the ONNX export, its signature, torch ↔ onnxruntime parity, metrics.

Runs in the worker process, like `services.trainer.training`; torch, onnx, onnxruntime and sklearn
are imported inside the functions so that importing this module stays cheap.
"""

from __future__ import annotations

import io
import warnings

import numpy as np

from mlops import tabular
from mlops.errors import InvalidArgument

ONNX_OPSET = 17
DATATYPES = {1: "FP32", 7: "INT64", 11: "FP64", 6: "INT32", 9: "BOOL"}
"""ONNX TensorProto element types → Open Inference Protocol datatypes."""


def predict(module, x: np.ndarray) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        out = module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    out = out if isinstance(out, tuple) else (out,)
    return [o.numpy() for o in out]


def export_onnx(module, feature_count: int, task: str) -> bytes:
    """torch → ONNX with the TorchScript-based exporter and a dynamic batch dimension.

    It traces the module once and writes the graph directly: 6-70 ms here against about 1-2 s for
    the torch.export-based exporter, same parity, byte-identical files for identical weights (so a
    retrained identical model keeps its content address). The graph is a fixed MLP, with no control
    flow for torch.export to capture. See the service's README for the switch if torch drops it.
    """
    import torch

    from services.trainer.model import output_names

    names = output_names(task)
    sample = torch.zeros(2, feature_count, dtype=torch.float32)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (sample,),
            buffer,
            dynamo=False,
            input_names=["input"],
            output_names=names,
            dynamic_axes={name: {0: "batch"} for name in ["input", *names]},
            opset_version=ONNX_OPSET,
        )
    return buffer.getvalue()


def signature_of(onnx_bytes: bytes) -> tuple[list, list]:
    """(name, OIP datatype, shape with -1 for dynamic dims) of the graph's inputs and outputs."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    onnx.checker.check_model(model)

    def spec(value) -> tuple[str, str, list[int]]:
        tensor = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        return value.name, DATATYPES.get(tensor.elem_type, str(tensor.elem_type)), shape

    return [spec(v) for v in model.graph.input], [spec(v) for v in model.graph.output]


def platform_signature(
    onnx_bytes: bytes,
    *,
    task: str,
    feature_names: list[str],
    label: str,
    class_labels: list[str],
    categories: dict[str, list[str]],
):
    """The version's signature as every reader takes it (`mlops.onnx_signature`): the `input` tensor's
    columns (the features, in order), the outputs' roles, the class labels and the text vocabularies.

    Read from the exported graph itself, so a graph that no longer matches the features or the classes
    fails here rather than in the evaluator."""
    from mlops.onnx_signature import read_signature
    from mlops.registry.v1 import registry_pb2 as pb

    signature = read_signature(
        onnx_bytes, columns=[*feature_names, label], label=label, class_labels=class_labels
    )
    if signature.task != task:
        raise InvalidArgument(f"the exported graph reads as {signature.task}, the spec says {task}")
    for name, values in categories.items():
        signature.categories[name].CopyFrom(pb.Vocabulary(values=values))
    return signature


def cpu_session(onnx_bytes: bytes):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def parity(module, onnx_bytes: bytes, rows: np.ndarray) -> float:
    """Largest absolute difference between torch's and onnxruntime CPU's float outputs on `rows`."""
    session = cpu_session(onnx_bytes)
    expected = predict(module, rows)
    got = session.run(None, {"input": np.ascontiguousarray(rows, dtype=np.float32)})
    diff = 0.0
    # Only the float outputs are compared: `label` is their argmax, and may differ only where two
    # probabilities tie to within float noise, which the probabilities' own diff already bounds.
    for want, have in zip(expected, got, strict=True):
        if np.issubdtype(want.dtype, np.floating) and want.size:
            diff = max(diff, float(np.max(np.abs(want.astype(np.float64) - have))))
    return diff


def evaluate(module, x: np.ndarray, y: np.ndarray, schema: tabular.Schema) -> dict[str, float]:
    """The gate's metrics (registry `mlops.measures.TASK_METRICS`) of the exported module on one split."""
    from sklearn import metrics as sk

    outputs = predict(module, x)
    if schema.task == "classification":
        probabilities, labels = outputs
        classes = list(range(len(schema.classes)))
        scores = {
            "accuracy": float(sk.accuracy_score(y, labels)),
            "macro_f1": float(sk.f1_score(y, labels, average="macro", labels=classes, zero_division=0)),
            "log_loss": float(sk.log_loss(y, np.clip(probabilities, 1e-7, 1.0), labels=classes)),
        }
        try:
            if len(classes) == 2:
                scores["roc_auc"] = float(sk.roc_auc_score(y, probabilities[:, 1]))
            else:
                scores["roc_auc"] = float(
                    sk.roc_auc_score(y, probabilities, multi_class="ovr", labels=classes)
                )
        except ValueError:
            pass  # a class absent from the split: AUC is undefined there
        return scores
    (prediction,) = outputs
    return {
        "rmse": float(np.sqrt(sk.mean_squared_error(y, prediction))),
        "mae": float(sk.mean_absolute_error(y, prediction)),
        "r2": float(sk.r2_score(y, prediction)),
    }
