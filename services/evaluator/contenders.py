"""What is scored and how: the contenders (challenger, champion), the held-out rows they are scored on,
the score cards, slices and the evaluation's id. Transport-neutral and free of the registry: the
core (`core.py`) fetches what these need and records what they produce.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from opentelemetry import trace

from mlops import onnx_signature
from mlops.errors import InvalidArgument
from mlops.events.v1 import evaluation_pb2
from mlops.registry.v1 import registry_pb2 as pb
from mlops.tabular import (
    TEST,
    Schema,
    assign_splits,
    label_vector,
    read_table,
    resolve_schema,
)
from services.evaluator import gates
from services.evaluator.metrics import Slice, classification_metrics, regression_metrics, slices_of
from services.evaluator.scoring import OnnxModel, legacy_signature

if TYPE_CHECKING:
    from services.evaluator.settings import EvaluatorSettings

tracer = trace.get_tracer("mlops.evaluator")

EVALUATION_NAMESPACE = uuid.UUID("6f1c2a8e-7d0b-4c59-9a43-2e5b8f0d1c77")


def evaluation_id_for(*, model: str, version: int, spec_version: int, dataset_sha256: str) -> str:
    """The same model version, spec version and data set bytes give the same id, so a redelivered
    or repeated `ModelTrained` is recorded once."""
    return str(uuid.uuid5(EVALUATION_NAMESPACE, f"{model}/{version}/{spec_version}/{dataset_sha256}"))


@dataclass(frozen=True)
class Contender:
    """A model version as scored: where its ONNX is, and the signature it reads rows through."""

    role: str
    """"challenger" or "champion"."""
    version: int
    artifact_uri: str
    artifact_sha256: str
    features: list[str]
    classes: list[str]
    categories: dict[str, list[str]] = field(default_factory=dict)
    """Its own vocabularies of text features (from its signature); empty means those of the data set."""
    signature: pb.ModelSignature | None = None
    """Its signature as recorded; None or one with no columns and roles reads as the trainer's old
    contract over `features` and `classes`."""


@dataclass
class ScoreCard:
    metrics: dict[str, float]
    slices: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    size_bytes: int = 0
    provider: str = ""


@dataclass(frozen=True)
class HeldOut:
    """The TEST rows of one data set version, and the schema the spec resolves on it."""

    rows: pd.DataFrame
    schema: Schema
    slices: list[Slice]


def held_out_rows(
    path: Path, data_format: str, body: pb.ModelSpecBody, *, slice_max_values: int, slice_bins: int
) -> HeldOut:
    """Read the snapshot, resolve the spec's schema on the whole of it (the trainer does the same,
    so categorical vocabularies agree), and keep the TEST split."""
    frame = read_table(path, data_format)
    schema = resolve_schema(
        task=body.task, label=body.label, features=list(body.features), slices=list(body.slices), frame=frame
    )
    splits = assign_splits(
        frame,
        schema,
        validation_fraction=body.training.validation_fraction,
        test_fraction=body.training.test_fraction,
    )
    # Unlabelled rows cannot be scored (the trainer drops them too; a row's split does not depend on them).
    rows = frame[(splits == TEST) & frame[schema.label].notna().to_numpy()].reset_index(drop=True)
    if rows.empty:
        raise InvalidArgument(
            f"the test split of {len(frame)} rows is empty "
            f"(test_fraction {body.training.test_fraction}); commit more rows"
        )
    slices = [
        piece
        for column in body.slices
        for piece in slices_of(column, rows[column], max_values=slice_max_values, bins=slice_bins)
    ]
    return HeldOut(rows=rows, schema=schema, slices=slices)


def _metrics(
    task: str, y: np.ndarray, model_out, n_classes: int, rows: np.ndarray | None = None
) -> dict[str, float]:
    if rows is not None:
        y = y[rows]
    if task == "classification":
        probabilities, labels = model_out.probabilities, model_out.labels
        if rows is not None:
            labels = labels[rows]
            probabilities = None if probabilities is None else probabilities[rows]
        return classification_metrics(y, probabilities, labels, n_classes)
    values = model_out.values if rows is None else model_out.values[rows]
    return regression_metrics(y, values)


def contender_signature(contender: Contender, schema: Schema, name: str) -> pb.ModelSignature:
    """The signature the contender reads rows through: its own, or for a version recorded before
    signatures carried columns and roles, the trainer's old contract over its feature names (the
    spec's features for one that recorded none) and class labels."""
    signature = contender.signature
    if signature is None or onnx_signature.is_legacy(signature):
        return legacy_signature(
            schema.task,
            list(contender.features or schema.features),
            list(contender.classes or schema.classes),
        )
    if signature.task and signature.task != schema.task:
        roles = ", ".join(f"{n} ({r})" for n, r in onnx_signature.roles(signature).items())
        raise InvalidArgument(
            f"{name} is a {signature.task} model (outputs {roles}) but the spec's task is {schema.task}"
        )
    copy = pb.ModelSignature()
    copy.CopyFrom(signature)
    signature = copy
    signature.task = schema.task
    if schema.task == "classification" and not signature.class_labels:
        signature.class_labels[:] = schema.classes  # a graph that carries none: the data set's, in its order
    return signature


def score_contender(
    model_bytes: bytes,
    contender: Contender,
    held_out: HeldOut,
    settings: EvaluatorSettings,
    *,
    measure_latency: bool,
) -> ScoreCard:
    """Metrics of one model on the held-out rows and each slice of them; latency when asked.
    Synchronous and CPU-bound: run it in a worker thread."""
    schema = held_out.schema
    name = f"{contender.role} v{contender.version}"
    signature = contender_signature(contender, schema, name)
    features = onnx_signature.feature_columns(signature)
    missing = [f for f in features if f not in held_out.rows.columns]
    if missing:
        raise InvalidArgument(f"{name}: its features are missing from the data set: {', '.join(missing)}")
    classes = list(signature.class_labels)
    if schema.task == "classification":
        unknown = sorted(set(schema.classes) - set(classes))
        if unknown:
            raise InvalidArgument(
                f"{name}: the data set has class labels the model does not know: {', '.join(unknown)}"
            )
    # A model encodes text with the vocabulary it was trained on, which a later data set may extend.
    categories = {f: contender.categories.get(f, v) for f, v in schema.categorical.items() if f in features}
    y = label_vector(held_out.rows, replace(schema, classes=classes))
    with tracer.start_as_current_span(f"score {contender.role}") as span:
        model = OnnxModel(
            model_bytes,
            signature=signature,
            categories=categories,
            provider=settings.execution_provider,
            threads=settings.onnx_threads,
            name=name,
        )
        span.set_attribute("mlops.evaluator.provider", model.provider)
        span.set_attribute("mlops.evaluator.rows", len(held_out.rows))
        inputs = model.inputs({column: held_out.rows[column].to_numpy() for column in features})
        out = predictions(model.predict(inputs), classes, schema.task, name)
        card = ScoreCard(
            metrics=_metrics(schema.task, y, out, len(classes)),
            size_bytes=model.size_bytes,
            provider=model.provider,
        )
        for piece in held_out.slices:
            card.slices[(piece.column, piece.value)] = _metrics(
                schema.task, y, out, len(classes), rows=piece.rows
            )
    if measure_latency:
        with tracer.start_as_current_span("measure latency") as span:
            card.latency_p50_ms, card.latency_p99_ms = model.latency_ms(
                inputs, samples=settings.latency_sample_size, warmup=settings.latency_warmup
            )
            span.set_attributes(
                {
                    "mlops.evaluator.latency_samples": settings.latency_sample_size,
                    "mlops.evaluator.latency_p99_ms": card.latency_p99_ms,
                }
            )
    return card


@dataclass(frozen=True)
class Predictions:
    """A model's answer as the metrics take it: class indices into its class labels (-1 for a label
    it does not list), probabilities (None when the model gives none) or values."""

    probabilities: np.ndarray | None = None
    labels: np.ndarray | None = None
    values: np.ndarray | None = None


def predictions(out: onnx_signature.Outputs, classes: list[str], task: str, name: str) -> Predictions:
    if task == "regression":
        if out.values is None:
            raise InvalidArgument(f"{name}: the model gave no value output to score as a regressor")
        return Predictions(values=out.values)
    if out.labels is None:
        raise InvalidArgument(f"{name}: the model gave neither labels nor probabilities to score")
    index = {label: i for i, label in enumerate(classes)}
    labels = np.fromiter((index.get(str(v), -1) for v in out.labels), dtype=np.int64, count=len(out.labels))
    return Predictions(probabilities=out.probabilities, labels=labels)


def slice_metrics(
    held_out: HeldOut, challenger: ScoreCard, champion: ScoreCard | None
) -> list[evaluation_pb2.SliceMetrics]:
    out = []
    for piece in held_out.slices:
        key = (piece.column, piece.value)
        out.append(
            evaluation_pb2.SliceMetrics(
                column=piece.column,
                value=piece.value,
                row_count=len(piece.rows),
                metrics=challenger.slices.get(key, {}),
                champion_metrics=champion.slices.get(key, {}) if champion else {},
            )
        )
    return out


def contender(role: str, version: pb.ModelVersion) -> Contender:
    """A version as the registry holds it: its artifact, and the signature it reads rows through."""
    return Contender(
        role=role,
        version=version.version,
        artifact_uri=version.artifact_uri,
        artifact_sha256=version.artifact_sha256,
        features=list(version.signature.feature_names),
        classes=list(version.signature.class_labels),
        categories={name: list(v.values) for name, v in version.signature.categories.items()},
        signature=version.signature,
    )


def compared_champion(version: pb.ModelVersion | None, card: ScoreCard | None) -> gates.Champion | None:
    """The champion as the gates see it; with no metrics when it could not be scored on these rows."""
    if version is None:
        return None
    return gates.Champion(version.version, card.metrics if card else {})
