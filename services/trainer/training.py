"""One training run from a local data file to a checked ONNX model and a reference profile.

This is the CPU-heavy part of the trainer. `train` runs in a pool worker process (spawn context),
so the service's event loop stays free for health checks, consumers and shutdown; it takes and
returns plain picklable values and never raises for a failure of the run itself: a `TrainOutcome`
says which stage failed and why. torch and onnxruntime are imported here only, inside the worker.

Reproducibility: the same data, spec and device give the same metrics and the same weights: seeded
weights and shuffling, deterministic algorithms, a fixed number of intra-op threads (set once per
worker by `init_worker`).
"""

from __future__ import annotations

import itertools
import os
import platform
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mlops import tabular
from mlops.profile import ReferenceProfile
from mlops.spec_defaults import TRAINING as DEFAULTS
from services.trainer.export import (  # noqa: F401  (cpu_session, predict: part of this module's interface)
    ONNX_OPSET,
    cpu_session,
    evaluate,
    export_onnx,
    parity,
    predict,
    signature_of,
)


@dataclass(frozen=True)
class TrainingParams:
    """Hyperparameters of one run: the spec's `training` block with defaults filled, or one search trial."""

    hidden_layers: tuple[int, ...] = DEFAULTS["hidden_layers"]
    epochs: int = DEFAULTS["epochs"]
    learning_rate: float = DEFAULTS["learning_rate"]
    batch_size: int = DEFAULTS["batch_size"]
    seed: int = DEFAULTS["seed"]
    early_stopping_patience: int = DEFAULTS["early_stopping_patience"]
    dropout: float = DEFAULTS["dropout"]
    weight_decay: float = DEFAULTS["weight_decay"]
    validation_fraction: float = DEFAULTS["validation_fraction"]
    test_fraction: float = DEFAULTS["test_fraction"]
    parity_tolerance: float = DEFAULTS["parity_tolerance"]

    @classmethod
    def from_spec(cls, training) -> TrainingParams:
        """From a `TrainingSpec` message; unset optional fields keep the defaults above."""
        values: dict[str, object] = {}
        if training.hidden_layers:
            values["hidden_layers"] = tuple(int(w) for w in training.hidden_layers)
        for name in (
            "epochs",
            "learning_rate",
            "batch_size",
            "seed",
            "early_stopping_patience",
            "dropout",
            "weight_decay",
            "validation_fraction",
            "test_fraction",
            "parity_tolerance",
        ):
            if training.HasField(name):
                values[name] = getattr(training, name)
        return cls(**values)

    def as_strings(self) -> dict[str, str]:
        """For the registry's run params and `TrainingStarted.params`."""
        out = {}
        for name, value in asdict(self).items():
            out[name] = ",".join(map(str, value)) if isinstance(value, tuple | list) else str(value)
        return out


@dataclass(frozen=True)
class TrainRequest:
    model: str
    task: str
    label: str
    features: list[str]
    data_path: str
    data_format: str
    params: TrainingParams
    device: str = "auto"
    """"auto" (CUDA when available), "cpu" or "cuda"."""
    slices: list[str] = field(default_factory=list)
    """Columns metrics are reported per value of; not features unless listed as such."""
    max_parameters: int = 20_000_000
    """Largest network this run may build (the trainer's `max_parameters`)."""


@dataclass
class EpochRecord:
    epoch: int
    metrics: dict[str, float]
    start_ns: int
    end_ns: int


@dataclass
class TrainOutcome:
    ok: bool
    stage: str = ""
    """On failure: the `TrainingStage` name without its prefix (VALIDATE_DATA, PARITY_CHECK, ...)."""
    reason: str = ""
    error_type: str = ""
    device: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    """Validation metrics of the kept weights, plus `test_<name>` on the test split."""
    history: list[EpochRecord] = field(default_factory=list)
    epochs_run: int = 0
    onnx: bytes = b""
    profile_json: str = ""
    parity_max_abs_diff: float = 0.0
    parity_tolerance: float = 0.0
    feature_names: list[str] = field(default_factory=list)
    class_labels: list[str] = field(default_factory=list)
    categories: dict[str, list[str]] = field(default_factory=dict)
    """Vocabularies of the text features, in code order: they travel with the model's signature."""
    inputs: list[tuple[str, str, list[int]]] = field(default_factory=list)
    outputs: list[tuple[str, str, list[int]]] = field(default_factory=list)
    onnx_opset: int = ONNX_OPSET
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


class StageFailure(Exception):
    def __init__(self, stage: str, reason: str, error_type: str = "") -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason
        self.error_type = error_type or type(self).__name__


# --- The worker process ------------------------------------------------------------------------


def init_worker(threads: int) -> None:
    """Pool initializer: fixed intra-op threads and deterministic kernels for every run in this process."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    import torch

    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def resolve_device(setting: str) -> str:
    import torch

    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def describe_hardware(setting: str = "auto") -> dict:
    """The `Hardware` message's fields, as a dict (the parent builds the message)."""
    import onnxruntime
    import torch

    device = resolve_device(setting)
    accelerator = torch.cuda.get_device_name(0) if device == "cuda" else ""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = 0
    return {
        "device": device,
        "accelerator": accelerator,
        "accelerator_count": torch.cuda.device_count() if device == "cuda" else 0,
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_bytes": memory,
        "hostname": socket.gethostname(),
        "software": {
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "torch_threads": str(torch.get_num_threads()),
        },
    }


def train(request: TrainRequest) -> TrainOutcome:
    """The whole run, stage by stage; a failure comes back as an outcome naming its stage."""
    started = time.perf_counter()
    try:
        outcome = _run(request)
    except StageFailure as failure:
        outcome = TrainOutcome(
            ok=False, stage=failure.stage, reason=failure.reason, error_type=failure.error_type
        )
    except Exception as error:  # a bug or an unexpected input: reported, never a dead worker
        outcome = TrainOutcome(
            ok=False,
            stage="TRAIN",
            reason=f"{type(error).__name__}: {error}",
            error_type=type(error).__name__,
        )
    outcome.seconds = time.perf_counter() - started
    return outcome


def _stage(stage: str):
    """Decorator-free helper: wrap a step so that any error becomes a StageFailure of `stage`."""

    class _Guard:
        def __enter__(self):
            return self

        def __exit__(self, kind, error, _tb):
            if error is None or isinstance(error, StageFailure):
                return False
            reason = error.message if hasattr(error, "message") else f"{type(error).__name__}: {error}"
            raise StageFailure(stage, reason, type(error).__name__) from error

    return _Guard()


@dataclass
class Prepared:
    schema: tabular.Schema
    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]


def prepare(request: TrainRequest) -> Prepared:
    """Read, validate against the spec, drop unlabelled rows, split, and build the matrices."""
    with _stage("LOAD_DATA"):
        frame = tabular.read_table(Path(request.data_path), request.data_format)
    with _stage("VALIDATE_DATA"):
        schema = tabular.resolve_schema(
            task=request.task,
            label=request.label,
            features=request.features,
            slices=request.slices,
            frame=frame,
        )
        frame = frame[frame[schema.label].notna()].reset_index(drop=True)
        splits = tabular.assign_splits(
            frame,
            schema,
            validation_fraction=request.params.validation_fraction,
            test_fraction=request.params.test_fraction,
        )
        x = tabular.feature_matrix(frame, schema)
        y = tabular.label_vector(frame, schema)
        parts = {name: splits == code for code, name in tabular.SPLIT_NAMES.items()}
        for name in ("train", "validation"):
            if not parts[name].any():
                raise tabular.DataValidationError(
                    [f"the {name} split is empty ({len(frame)} labelled rows); commit more rows"]
                )
    return Prepared(
        schema=schema,
        x={name: x[mask] for name, mask in parts.items()},
        y={name: y[mask] for name, mask in parts.items()},
    )


@dataclass
class Fitted:
    """A trained network as the exported graph will compute it, with the data it was trained on."""

    module: object
    """The torch module with the public outputs (eval mode, CPU)."""
    data: Prepared
    history: list[EpochRecord]
    device: str


def parameter_count(inputs: int, hidden_layers: list[int] | tuple[int, ...], outputs: int) -> int:
    """Weights and biases of the MLP `Network` builds: inputs → hidden layers → outputs."""
    widths = [inputs, *hidden_layers, outputs]
    return sum(a * b + b for a, b in itertools.pairwise(widths))


def check_size(request: TrainRequest, inputs: int, outputs: int) -> None:
    """Refuse a network past `max_parameters` before allocating it.

    The registry bounds the weights between hidden layers at `mlops apply`; only the data set tells
    how wide the input is (one column per category of a text feature) and how many classes there are.
    """
    count = parameter_count(inputs, request.params.hidden_layers, outputs)
    if count > request.max_parameters:
        layers = list(request.params.hidden_layers)
        raise StageFailure(
            "VALIDATE_DATA",
            f"the network for this data set would have {count:,} parameters ({inputs} inputs after "
            f"encoding → spec.training.hidden_layers {layers} → {outputs} outputs); at most "
            f"{request.max_parameters:,}: use smaller hidden layers, or fewer features or categories",
            "TooManyParameters",
        )


def fit_model(request: TrainRequest) -> Fitted:
    """Load, validate, split and fit: the deterministic part of a run (same inputs, same weights)."""
    import torch

    from services.trainer.model import FeatureStats, Network, exported

    params = request.params
    data = prepare(request)
    schema = data.schema
    classification = schema.task == "classification"
    device = resolve_device(request.device)
    with _stage("TRAIN"):
        categorical_index = [schema.features.index(c) for c in schema.categorical]
        stats = FeatureStats.fit(
            data.x["train"],
            categorical_index,
            [len(schema.categorical[c]) for c in schema.categorical],
            None if classification else data.y["train"],
        )
    outputs = len(schema.classes) if classification else 1
    check_size(request, stats.width, outputs)
    with _stage("TRAIN"):
        torch.manual_seed(params.seed)
        network = Network(stats, list(params.hidden_layers), outputs, params.dropout)
        history, _ = fit(network, stats, data, params, device, classification)
    return Fitted(exported(network, schema.task, stats), data, history, device)


def _run(request: TrainRequest) -> TrainOutcome:
    params = request.params
    fitted = fit_model(request)
    module, data, history, device = fitted.module, fitted.data, fitted.history, fitted.device
    schema = data.schema
    epochs_run = len(history)

    with _stage("EXPORT"):
        onnx_bytes = export_onnx(module, len(schema.features), schema.task)
        inputs, outputs = signature_of(onnx_bytes)

    with _stage("PARITY_CHECK"):
        rows = data.x["validation"]
        diff = parity(module, onnx_bytes, rows)
    if not diff <= params.parity_tolerance:  # also catches NaN
        raise StageFailure(
            "PARITY_CHECK",
            f"onnx parity: max abs diff {diff:.3g} > tolerance {params.parity_tolerance:.3g} "
            f"on {len(rows)} validation rows",
            "ParityError",
        )

    with _stage("TRAIN"):
        metrics = {}
        for split, prefix in (("validation", ""), ("test", "test_")):
            if len(data.x[split]):
                scores = evaluate(module, data.x[split], data.y[split], schema)
                metrics |= {prefix + name: value for name, value in scores.items()}
        metrics["val_loss"] = min(record.metrics["val_loss"] for record in history)
        metrics["train_loss"] = history[-1].metrics["train_loss"]

    with _stage("PROFILE"):
        train_outputs = predict(module, data.x["train"])
        profile = ReferenceProfile.compute(
            task=schema.task,
            features=data.x["train"],
            feature_names=schema.features,
            categorical=schema.categorical,
            predictions=train_outputs[0],
            class_labels=schema.classes,
        )

    return TrainOutcome(
        ok=True,
        device=device,
        metrics=metrics,
        history=history,
        epochs_run=epochs_run,
        onnx=onnx_bytes,
        profile_json=profile.to_json(),
        parity_max_abs_diff=float(diff),
        parity_tolerance=params.parity_tolerance,
        feature_names=list(schema.features),
        class_labels=list(schema.classes),
        categories={name: list(values) for name, values in schema.categorical.items()},
        inputs=inputs,
        outputs=outputs,
        rows={name: len(values) for name, values in data.x.items()},
    )


def fit(network, stats, data: Prepared, params: TrainingParams, device: str, classification: bool):
    """Mini-batch Adam with early stopping on the validation loss; the best weights are kept.

    The hot path: the preprocessing inside the network (imputation, scaling, one-hot) is row-wise
    and learns nothing, so it runs once over each split and the batches go through the MLP alone
    (the same numbers as the whole network per batch); the batch losses are kept as tensors and
    read once per epoch, so nothing waits on the device per batch.
    """
    import torch
    from torch import nn

    def tensors(split: str):
        x = torch.from_numpy(data.x[split]).to(device)
        with torch.no_grad():
            x = network.preprocess(x)
        if classification:
            y = torch.from_numpy(data.y[split]).to(device)
        else:
            y = ((torch.from_numpy(data.y[split]) - stats.target_mean) / stats.target_std).to(device)
        return x, y

    network.to(device)
    x_train, y_train = tensors("train")
    x_val, y_val = tensors("validation")
    mlp = network.mlp
    loss_of = nn.CrossEntropyLoss() if classification else nn.MSELoss()
    optimiser = torch.optim.Adam(
        network.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay
    )
    generator = torch.Generator(device="cpu").manual_seed(params.seed)

    def predict_loss(x, y):
        out = mlp(x)
        return out, loss_of(out if classification else out.squeeze(1), y)

    rows = len(x_train)
    sizes = [min(params.batch_size, rows - begin) for begin in range(0, rows, params.batch_size)]
    history: list[EpochRecord] = []
    best_loss, best_state, stale = float("inf"), None, 0
    for epoch in range(1, params.epochs + 1):
        start = time.time_ns()
        network.train()
        order = torch.randperm(rows, generator=generator).to(device)
        losses = []
        for begin in range(0, rows, params.batch_size):
            batch = order[begin : begin + params.batch_size]
            optimiser.zero_grad(set_to_none=True)
            _, loss = predict_loss(x_train[batch], y_train[batch])
            loss.backward()
            optimiser.step()
            losses.append(loss.detach())
        total = 0.0
        for value, size in zip(torch.stack(losses).tolist(), sizes, strict=True):
            total += value * size
        network.eval()
        with torch.no_grad():
            out, val_loss = predict_loss(x_val, y_val)
        metrics = {"train_loss": total / rows, "val_loss": float(val_loss)}
        if classification:
            metrics["val_accuracy"] = float((out.argmax(dim=1) == y_val).float().mean())
        else:
            metrics["val_rmse"] = float(val_loss) ** 0.5 * stats.target_std
        history.append(EpochRecord(epoch, metrics, start, time.time_ns()))
        if metrics["val_loss"] < best_loss:
            best_loss, stale = metrics["val_loss"], 0
            best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
        else:
            stale += 1
            if params.early_stopping_patience and stale >= params.early_stopping_patience:
                break
    if best_state is not None:
        network.load_state_dict(best_state)
    network.eval()
    return history, len(history)
