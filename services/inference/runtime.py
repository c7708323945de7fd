"""Serving runtimes: what turns verified model bytes into something that scores a batch of rows.

Any ONNX graph: one or several inputs of numbers or text, any outputs; a ZipMap's list of dicts
(skl2onnx, onnxmltools) comes back as the FP32 [N, C] array it stands for, so that a batch's answer
can be split by rows like any other. One runtime today, onnxruntime, behind a small abstract base so that another (a GPU-specific one, a
remote one) is a class and an entry in `RUNTIMES`, not a change to the core.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlops.errors import InvalidArgument
from mlops.onnx_signature import read_signature
from mlops.registry.v1 import registry_pb2 as pb

log = logging.getLogger(__name__)

INPUT = "input"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
NUMPY_OF_ONNX = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint64)": np.uint64,
    "tensor(uint32)": np.uint32,
    "tensor(uint16)": np.uint16,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
    "tensor(string)": np.object_,
}
"""onnxruntime's type of a graph input → the numpy dtype it is fed in (text as an object array of str)."""
Rows = np.ndarray | dict[str, np.ndarray]
"""What one call scores: the array of a one-input graph, or the graph's inputs by name."""


def row_count(rows: Rows) -> int:
    if isinstance(rows, dict):
        return next(iter(rows.values())).shape[0]
    return rows.shape[0]


class ModelRejected(InvalidArgument):
    """The artifact is not a model this server can serve (not ONNX, or a signature it cannot serve)."""


@dataclass(frozen=True)
class GraphTensor:
    """One input or output as onnxruntime declares it: its type in ONNX's spelling, its dimensions
    (None where a dimension varies)."""

    name: str
    onnx_type: str
    shape: tuple[int | None, ...] = ()

    @property
    def zipmap(self) -> bool:
        """A sequence of maps, one per row (skl2onnx's and onnxmltools' ZipMap of class probabilities)."""
        return self.onnx_type.startswith("seq(map(")


class LoadedModel(ABC):
    """A model ready to score: its graph's inputs and outputs, and a call on a batch of rows.

    `input_name`, `input_dtype` and `feature_count` describe a one-input graph (the platform's MLP); a
    model that leaves `graph_inputs` empty is read as that one input `[-1, feature_count]` with the
    outputs `output_names`."""

    input_name: str
    input_dtype: np.dtype
    feature_count: int
    output_names: tuple[str, ...]
    provider: str
    graph_inputs: tuple[GraphTensor, ...] = ()
    graph_outputs: tuple[GraphTensor, ...] = ()
    signature: pb.ModelSignature | None = None
    """What the graph says of itself (`mlops.onnx_signature.read_signature` without columns): datatypes,
    shapes, output roles, the class labels an ai.onnx.ml classifier carries."""
    allow_nan: bool = False
    """The model takes NaN on purpose (a missing value it handles): ONNX metadata `allow_nan=true`.
    Otherwise a NaN in a request is refused, since it would silently become some answer."""
    call_s: float | None = None
    """The slowest warm-up call, in seconds: what a call is expected to take before any is timed."""

    @abstractmethod
    def run(self, rows: Rows) -> dict[str, np.ndarray]:
        """Score a batch: the one input's array, or the inputs by name; synchronous (the batcher runs it
        on a thread unless it is cheap). Every output is an array whose first dimension is the rows."""


class ServingRuntime(ABC):
    @abstractmethod
    def load(self, data: bytes, *, name: str, task: str, feature_count: int, class_count: int) -> LoadedModel:
        """Build a model from verified bytes, check that it can serve, warm it up; raise
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


def _graph_tensor(node) -> GraphTensor:
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in (node.shape or ()))
    return GraphTensor(node.name, node.type, shape)


class OnnxModel(LoadedModel):
    def __init__(
        self,
        session,
        name: str,
        task: str,
        feature_count: int,
        class_count: int,
        signature: pb.ModelSignature | None = None,
    ) -> None:
        self.session = session
        self.name = name
        self.provider = session.get_providers()[0]
        self.graph_inputs = tuple(_graph_tensor(i) for i in session.get_inputs())
        self.graph_outputs = tuple(_graph_tensor(o) for o in session.get_outputs())
        self.signature = signature
        for spec in self.graph_inputs:
            if spec.onnx_type not in NUMPY_OF_ONNX:
                raise ModelRejected(
                    f"{name}: input {spec.name!r} has type {spec.onnx_type}; a tensor of numbers or text is needed"
                )
        first = self.graph_inputs[0]
        width = first.shape[1] if len(first.shape) == 2 else None
        if len(self.graph_inputs) == 1 and feature_count > 1 and width is not None and width != feature_count:
            raise ModelRejected(
                f"{name}: input {first.name!r} has shape {list(first.shape)}; "
                f"the desired state's {feature_count} features need [-1, {feature_count}]"
            )
        if task not in ("classification", "regression"):
            raise ModelRejected(f"{name}: task {task!r} is neither classification nor regression")
        metadata = session.get_modelmeta().custom_metadata_map
        self.allow_nan = metadata.get("allow_nan", "").strip().lower() in ("1", "true", "yes")
        self.input_name = first.name
        self.input_dtype = np.dtype(NUMPY_OF_ONNX[first.onnx_type])
        self.feature_count = feature_count
        self.output_names = tuple(o.name for o in self.graph_outputs)
        self._feed = first.name
        self._fetch = list(self.output_names)
        classes = tuple(signature.class_labels) if signature is not None else ()
        self._zipmaps = {o.name: classes for o in self.graph_outputs if o.zipmap}

    def run(self, rows: Rows) -> dict[str, np.ndarray]:
        feed = rows if isinstance(rows, dict) else {self._feed: rows}
        values = self.session.run(self._fetch, feed)
        answer = dict(zip(self._fetch, values, strict=True))
        for name, classes in self._zipmaps.items():
            answer[name] = zipmap_array(answer[name], classes)
        return answer


def zipmap_array(maps: list, classes: Sequence[str]) -> np.ndarray:
    """A ZipMap's list of {class: probability} as FP32 [N, C], columns in the order of `classes` (the
    ZipMap's own; the first map's keys when it declares none)."""
    if not maps:
        return np.zeros((0, len(classes)), dtype=np.float32)
    keys = list(maps[0])
    if classes and len(classes) == len(keys):
        by_text = {str(key): key for key in keys}
        keys = [by_text.get(label, label) for label in classes]
    try:
        return np.array([[row[key] for key in keys] for row in maps], dtype=np.float32)
    except KeyError as error:
        raise ValueError(f"a ZipMap row has no probability for class {error.args[0]!r}") from None


def warm_up_rows(model: LoadedModel, rows: int) -> Rows:
    """Zeros (empty strings for text) in every input's type and shape, `rows` rows."""
    if not model.graph_inputs:
        return np.zeros((rows, model.feature_count), dtype=model.input_dtype)
    feed = {}
    for spec in model.graph_inputs:
        dims = [rows] + [d or 1 for d in spec.shape[1:]]
        if len(model.graph_inputs) == 1 and len(spec.shape) == 2 and spec.shape[1] is None:
            dims[1] = max(model.feature_count, 1)
        dtype = NUMPY_OF_ONNX[spec.onnx_type]
        feed[spec.name] = np.full(dims, "", dtype=object) if dtype is np.object_ else np.zeros(dims, dtype)
    if len(feed) == 1:
        return next(iter(feed.values()))
    return feed


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
        try:
            signature = read_signature(data, columns=(), label=None)
        except InvalidArgument as error:
            raise ModelRejected(f"{name}: {error.message}") from error
        model = OnnxModel(session, name, task, feature_count, class_count, signature)
        self._warm_up(model)
        return model

    def _warm_up(self, model: OnnxModel) -> None:
        numeric = all(i.onnx_type in ("tensor(float)", "tensor(double)") for i in model.graph_inputs)
        for run in range(self.warmup_runs):
            rows = 8 if run % 2 else 1  # one row (the common case) and a small batch
            started = time.perf_counter()
            try:
                model.run(warm_up_rows(model, rows))
            except Exception as error:
                if numeric:
                    raise ModelRejected(f"{model.name}: the warm-up call failed: {error}") from error
                # Zeros and empty strings may be no valid category for an encoder that refuses unknown
                # values: such a model is timed on its first real calls instead.
                log.info("%s: no warm-up (%s); its first calls are timed on the threads", model.name, error)
                model.call_s = None
                return
            if run:  # the first call pays for lazy initialisation and says little of the next ones
                model.call_s = max(model.call_s or 0.0, time.perf_counter() - started)


RUNTIMES: dict[str, type[ServingRuntime]] = {"onnxruntime": OnnxRuntime}
"""Name → class of the serving runtimes."""
