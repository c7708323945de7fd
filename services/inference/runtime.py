"""Serving runtimes: what turns verified model bytes into something that scores a batch of rows.

One runtime today, onnxruntime, behind a small abstract base so that another (a GPU-specific one, a
remote one) is a class and an entry in `RUNTIMES`, not a change to the core.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mlops.errors import InvalidArgument

log = logging.getLogger(__name__)

INPUT = "input"
OUTPUTS = {"classification": ("probabilities", "label"), "regression": ("prediction",)}
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
_NUMPY_OF_ONNX = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


class ModelRejected(InvalidArgument):
    """The artifact is not a model this server can serve (not ONNX, or not the platform's contract)."""


class LoadedModel(ABC):
    """A model ready to score: fixed input name, width and dtype, and named outputs."""

    input_name: str
    input_dtype: np.dtype
    feature_count: int
    output_names: tuple[str, ...]
    provider: str
    allow_nan: bool = False
    """The model takes NaN on purpose (a missing value it handles): ONNX metadata `allow_nan=true`.
    Otherwise a NaN in a request is refused, since it would silently become some answer."""
    call_s: float | None = None
    """The slowest warm-up call, in seconds: what a call is expected to take before any is timed."""

    @abstractmethod
    def run(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Score a [n, F] matrix; synchronous (the batcher runs it on a thread unless it is cheap)."""


class ServingRuntime(ABC):
    @abstractmethod
    def load(self, data: bytes, *, name: str, task: str, feature_count: int, class_count: int) -> LoadedModel:
        """Build a model from verified bytes, check it against the contract, warm it up; raise
        `ModelRejected` with the reason when it cannot serve."""


def _gpu_present() -> bool:
    """An NVIDIA device node: onnxruntime-gpu lists CUDA as available on machines without any GPU."""
    return any(Path("/dev").glob("nvidia[0-9]*"))


def _providers(choice: str, available: Sequence[str], cuda_usable: bool | None) -> list[str]:
    """Explicit providers: CUDA first only when asked for, or when `auto` and a GPU is really there
    (the first session tells; the answer is kept for the process)."""
    if choice == "cpu":
        return [CPU]
    if choice == "cuda":
        return [CUDA, CPU]
    if cuda_usable is False or CUDA not in available or not _gpu_present():
        return [CPU]
    return [CUDA, CPU]


class OnnxModel(LoadedModel):
    def __init__(self, session, name: str, task: str, feature_count: int, class_count: int) -> None:
        self.session = session
        self.name = name
        self.provider = session.get_providers()[0]
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise ModelRejected(
                f"{name}: expected one input {INPUT!r} [-1, {feature_count}], got {[i.name for i in inputs]}"
            )
        spec = inputs[0]
        dtype = _NUMPY_OF_ONNX.get(spec.type)
        if dtype is None:
            raise ModelRejected(
                f"{name}: input {spec.name!r} has type {spec.type}; a numeric tensor is needed"
            )
        width = spec.shape[1] if len(spec.shape) == 2 else None
        if len(spec.shape) != 2 or (isinstance(width, int) and width != feature_count):
            raise ModelRejected(
                f"{name}: input {spec.name!r} has shape {spec.shape}; "
                f"the desired state's {feature_count} features need [-1, {feature_count}]"
            )
        outputs = {o.name: o for o in session.get_outputs()}
        wanted = OUTPUTS.get(task)
        if wanted is None:
            raise ModelRejected(f"{name}: task {task!r} is neither classification nor regression")
        missing = [o for o in wanted if o not in outputs]
        if missing:
            raise ModelRejected(
                f"{name}: a {task} model needs outputs {list(wanted)}; missing {missing}, got {sorted(outputs)}"
            )
        if task == "classification":
            columns = outputs["probabilities"].shape[-1]
            if isinstance(columns, int) and columns != class_count:
                raise ModelRejected(
                    f"{name}: output 'probabilities' has {columns} columns "
                    f"but the desired state lists {class_count} class labels"
                )
        metadata = session.get_modelmeta().custom_metadata_map
        self.allow_nan = metadata.get("allow_nan", "").strip().lower() in ("1", "true", "yes")
        self.input_name = spec.name
        self.input_dtype = np.dtype(dtype)
        self.feature_count = feature_count
        self.output_names = wanted
        self._feed = spec.name
        self._fetch = list(wanted)

    def run(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        values = self.session.run(self._fetch, {self._feed: rows})
        return dict(zip(self._fetch, values, strict=True))


class OnnxRuntime(ServingRuntime):
    """onnxruntime sessions with explicit providers and a fixed number of threads each."""

    def __init__(self, *, provider: str = "auto", threads: int = 1, warmup_runs: int = 3) -> None:
        import onnxruntime

        self._ort = onnxruntime
        self.provider = provider
        self.threads = threads
        self.warmup_runs = warmup_runs
        self._cuda_usable: bool | None = None
        self._lock = threading.Lock()

    def load(self, data: bytes, *, name: str, task: str, feature_count: int, class_count: int) -> OnnxModel:
        ort = self._ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        asked = _providers(self.provider, ort.get_available_providers(), self._cuda_usable)
        try:
            session = ort.InferenceSession(data, sess_options=options, providers=asked)
        except Exception as error:  # onnxruntime raises its own untyped errors for bytes that are no model
            raise ModelRejected(f"{name}: onnxruntime cannot load the artifact as ONNX: {error}") from error
        if CUDA in asked and self._cuda_usable is None:
            with self._lock:
                self._cuda_usable = CUDA in session.get_providers()
                if not self._cuda_usable:
                    log.info("onnxruntime has no usable GPU here; serving on the CPU")
        model = OnnxModel(session, name, task, feature_count, class_count)
        self._warm_up(model)
        return model

    def _warm_up(self, model: OnnxModel) -> None:
        for run in range(self.warmup_runs):
            rows = 8 if run % 2 else 1  # one row (the common case) and a small batch
            started = time.perf_counter()
            try:
                model.run(np.zeros((rows, model.feature_count), dtype=model.input_dtype))
            except Exception as error:
                raise ModelRejected(f"{model.name}: the warm-up call failed: {error}") from error
            if run:  # the first call pays for lazy initialisation and says little of the next ones
                model.call_s = max(model.call_s or 0.0, time.perf_counter() - started)


RUNTIMES: dict[str, type[ServingRuntime]] = {"onnxruntime": OnnxRuntime}
"""Name → class of the serving runtimes."""
