"""Running an ONNX model that follows the platform's contract with onnxruntime: batch scoring and
single-row latency. Synchronous and CPU-heavy: callers run it off the event loop.

The contract (what the trainer exports): one FP32 input `input` of shape [-1, F]; outputs
`probabilities` FP32 [-1, C] and `label` INT64 [-1] for classification, `prediction` FP32 [-1]
for regression.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from mlops.errors import InvalidArgument
from services.evaluator.metrics import latency_percentiles

log = logging.getLogger(__name__)

INPUT = "input"
OUTPUTS = {"classification": ("probabilities", "label"), "regression": ("prediction",)}
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


@dataclass(frozen=True)
class Predictions:
    probabilities: np.ndarray | None = None
    labels: np.ndarray | None = None
    values: np.ndarray | None = None


class OnnxModel:
    """One model loaded from verified bytes, checked against the contract for its task."""

    def __init__(
        self,
        model_bytes: bytes,
        *,
        task: str,
        n_features: int,
        n_classes: int = 0,
        provider: str = "auto",
        threads: int = 1,
        name: str = "model",
    ) -> None:
        self.name = name
        self.task = task
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
        self._check_contract(n_features, n_classes)

    def _check_contract(self, n_features: int, n_classes: int) -> None:
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
        wanted = OUTPUTS.get(self.task)
        if wanted is None:
            raise InvalidArgument(f"task {self.task!r} is neither classification nor regression")
        missing = [name for name in wanted if name not in outputs]
        if missing:
            raise InvalidArgument(
                f"{self.name}: a {self.task} model must have outputs {list(wanted)}; "
                f"missing {missing}, got {sorted(outputs)}"
            )
        if self.task == "classification":
            columns = outputs["probabilities"].shape[-1]
            if isinstance(columns, int) and columns != n_classes:
                raise InvalidArgument(
                    f"{self.name}: output 'probabilities' has {columns} columns "
                    f"but the signature lists {n_classes} class labels"
                )
        self.outputs = list(wanted)

    def predict(self, features: np.ndarray) -> Predictions:
        """Score every row, in batches."""
        parts: list[list[np.ndarray]] = [[] for _ in self.outputs]
        for start in range(0, max(len(features), 1), BATCH_ROWS):
            batch = np.ascontiguousarray(features[start : start + BATCH_ROWS], dtype=np.float32)
            for part, value in zip(parts, self.session.run(self.outputs, {INPUT: batch}), strict=True):
                part.append(np.asarray(value))
        joined = [np.concatenate(part) for part in parts]
        if self.task == "classification":
            probabilities, labels = joined
            return Predictions(
                probabilities=probabilities.reshape(len(features), -1),
                labels=labels.reshape(-1).astype(np.int64),
            )
        return Predictions(values=joined[0].reshape(-1).astype(np.float64))

    def latency_ms(self, features: np.ndarray, *, samples: int, warmup: int) -> tuple[float, float]:
        """p50 and p99 in ms of single-row calls over `samples` rows (cycling through `features`),
        after `warmup` untimed calls."""
        if len(features) == 0:
            raise InvalidArgument(f"{self.name}: no rows to time single-row inference on")
        rows = [
            np.ascontiguousarray(features[i % len(features)][None, :], dtype=np.float32)
            for i in range(samples)
        ]
        run, outputs = self.session.run, self.outputs
        for i in range(warmup):
            run(outputs, {INPUT: rows[i % len(rows)]})
        durations = np.empty(samples, dtype=np.float64)
        for i, row in enumerate(rows):
            started = time.perf_counter_ns()
            run(outputs, {INPUT: row})
            durations[i] = (time.perf_counter_ns() - started) / 1e6
        return latency_percentiles(durations)
