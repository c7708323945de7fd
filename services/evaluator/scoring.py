"""Running any ONNX model with onnxruntime, read through its signature (`mlops.onnx_signature`): batch
scoring and single-row latency. Synchronous and CPU-heavy: callers run it off the event loop.

The signature says which data set columns feed which input (one [-1, F] input, one input per
column, integer and string inputs) and which outputs hold the label, the probabilities (a tensor or
skl2onnx's ZipMap) or a regressor's value. A version recorded before signatures said so is read as
the trainer's old contract: one FP32 input `input` [-1, F] fed by its feature names; `probabilities`
and `label` (the class index) for classification, `prediction` for regression (`legacy_signature`).
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import onnxruntime as ort

from mlops import onnx_signature
from mlops.errors import InvalidArgument
from mlops.registry.v1 import registry_pb2 as pb
from services.evaluator.metrics import latency_percentiles

log = logging.getLogger(__name__)

INPUT = "input"
OUTPUTS = {"classification": ("probabilities", "label"), "regression": ("prediction",)}
"""The trainer's old contract, which a legacy signature (no columns, no roles) is read as."""
BATCH_ROWS = 4096
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

_cuda_usable: bool | None = None
_cuda_lock = threading.Lock()


def providers_for(choice: str) -> list[str]:
    """The providers to ask for, in order. `auto` asks for CUDA only when the build has it and a
    first session actually got it (onnxruntime-gpu falls back to the CPU, with an error in its log,
    when no GPU is there; the answer is remembered for the process)."""
    if choice == "cpu":
        return [CPU]
    if choice == "cuda":
        return [CUDA, CPU]
    if _cuda_usable is False or CUDA not in ort.get_available_providers():
        return [CPU]
    return [CUDA, CPU]


def _remember_cuda(session: ort.InferenceSession, asked: list[str]) -> None:
    global _cuda_usable
    if CUDA in asked and _cuda_usable is None:
        with _cuda_lock:
            _cuda_usable = CUDA in session.get_providers()
            if not _cuda_usable:
                log.info("onnxruntime has no usable GPU here; evaluating on the CPU")


def legacy_signature(task: str, features: list[str], classes: list[str]) -> pb.ModelSignature:
    """The signature a version recorded before columns and roles existed is read as."""
    if task not in OUTPUTS:
        raise InvalidArgument(f"task {task!r} is neither classification nor regression")
    return pb.ModelSignature(
        inputs=[pb.TensorSpec(name=INPUT, datatype="FP32", shape=[-1, len(features)])],
        outputs=[pb.TensorSpec(name=name) for name in OUTPUTS[task]],
        feature_names=features,
        class_labels=classes if task == "classification" else [],
        task=task,
    )


class OnnxModel:
    """One model loaded from verified bytes, checked against its signature."""

    def __init__(
        self,
        model_bytes: bytes,
        *,
        signature: pb.ModelSignature,
        categories: dict[str, list[str]] | None = None,
        provider: str = "auto",
        threads: int = 1,
        name: str = "model",
    ) -> None:
        self.name = name
        self.signature = signature
        self.task = signature.task
        self.categories = categories or {}
        self.size_bytes = len(model_bytes)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        asked = providers_for(provider)
        try:
            self.session = ort.InferenceSession(model_bytes, sess_options=options, providers=asked)
        except Exception as error:  # onnxruntime raises its own untyped errors for a bad graph
            raise InvalidArgument(f"{name}: onnxruntime cannot load the model: {error}") from error
        _remember_cuda(self.session, asked)
        self.provider = self.session.get_providers()[0]
        if onnx_signature.is_legacy(signature):
            self._check_legacy_contract()
        else:
            self._check_signature()
        self.outputs = onnx_signature.output_names(signature)

    def _check_legacy_contract(self) -> None:
        n_features = len(self.signature.feature_names)
        inputs = {i.name: i for i in self.session.get_inputs()}
        if INPUT not in inputs or len(inputs) != 1:
            raise InvalidArgument(
                f"{self.name}: expected one input {INPUT!r} FP32 [-1, {n_features}], "
                f"got inputs {sorted(inputs)}"
            )
        spec = inputs[INPUT]
        if spec.type != "tensor(float)":
            raise InvalidArgument(f"{self.name}: input {INPUT!r} expected FP32, got {spec.type}")
        width = spec.shape[1] if len(spec.shape) == 2 else None
        if len(spec.shape) != 2 or (isinstance(width, int) and width != n_features):
            raise InvalidArgument(
                f"{self.name}: input {INPUT!r} has shape {spec.shape}; "
                f"the signature's {n_features} features need [-1, {n_features}]"
            )
        outputs = {o.name: o for o in self.session.get_outputs()}
        wanted = OUTPUTS[self.task]
        missing = [name for name in wanted if name not in outputs]
        if missing:
            raise InvalidArgument(
                f"{self.name}: a {self.task} model must have outputs {list(wanted)}; "
                f"missing {missing}, got {sorted(outputs)}"
            )
        if self.task == "classification":
            self._check_probability_columns(outputs["probabilities"])

    def _check_signature(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        named = {spec.name for spec in self.signature.inputs}
        unknown = sorted(named - set(inputs))
        unfed = sorted(set(inputs) - named)
        if unknown or unfed:
            raise InvalidArgument(
                f"{self.name}: the signature's inputs {sorted(named)} do not match the graph's {sorted(inputs)}"
            )
        outputs = {o.name: o for o in self.session.get_outputs()}
        roles = onnx_signature.roles(self.signature)
        missing = sorted(name for name in roles if name not in outputs)
        if missing:
            raise InvalidArgument(f"{self.name}: the graph lacks the signature's outputs {missing}")
        have = set(roles.values())
        needs = {"classification": ("label", "probabilities"), "regression": ("value",)}[self.task]
        if not have & set(needs):
            raise InvalidArgument(
                f"{self.name}: a {self.task} model needs an output with role {' or '.join(needs)}; "
                f"its signature has {sorted(have) or 'none'} (outputs {sorted(outputs)})"
            )
        for name, role in roles.items():
            if role == "probabilities" and outputs[name].type.startswith("tensor"):
                self._check_probability_columns(outputs[name])

    def _check_probability_columns(self, output) -> None:
        n_classes = len(self.signature.class_labels)
        columns = output.shape[-1] if output.shape else None
        if isinstance(columns, int) and columns != n_classes:
            raise InvalidArgument(
                f"{self.name}: output {output.name!r} has {columns} columns "
                f"but the signature lists {n_classes} class labels"
            )

    def inputs(self, columns) -> dict[str, np.ndarray]:
        """The graph's inputs from the rows' columns (a DataFrame or a name → array mapping)."""
        return onnx_signature.feed(self.signature, columns, self.categories)

    def predict(self, inputs: dict[str, np.ndarray]) -> onnx_signature.Outputs:
        """Score every row of `inputs` (from `inputs()`), in batches."""
        rows = len(next(iter(inputs.values()))) if inputs else 0
        parts: list[list[object]] = [[] for _ in self.outputs]
        for start in range(0, max(rows, 1), BATCH_ROWS):
            batch = {name: value[start : start + BATCH_ROWS] for name, value in inputs.items()}
            for part, value in zip(parts, self.session.run(self.outputs, batch), strict=True):
                part.append(value)
        joined = [_join(part) for part in parts]
        return onnx_signature.outputs(self.signature, self.outputs, joined)

    def latency_ms(self, inputs: dict[str, np.ndarray], *, samples: int, warmup: int) -> tuple[float, float]:
        """p50 and p99 in ms of single-row calls over `samples` rows (cycling through `inputs`),
        after `warmup` untimed calls."""
        count = len(next(iter(inputs.values()))) if inputs else 0
        if count == 0:
            raise InvalidArgument(f"{self.name}: no rows to time single-row inference on")
        rows = [
            {name: value[i % count : i % count + 1] for name, value in inputs.items()} for i in range(samples)
        ]
        run, outputs = self.session.run, self.outputs
        for i in range(warmup):
            run(outputs, rows[i % len(rows)])
        durations = np.empty(samples, dtype=np.float64)
        for i, row in enumerate(rows):
            started = time.perf_counter_ns()
            run(outputs, row)
            durations[i] = (time.perf_counter_ns() - started) / 1e6
        return latency_percentiles(durations)


def _join(parts: list[object]) -> object:
    """One output's batches as one: a ZipMap answers lists of dicts, tensors arrays."""
    if parts and isinstance(parts[0], list):
        return [row for part in parts for row in part]
    return np.concatenate([np.asarray(part) for part in parts])
