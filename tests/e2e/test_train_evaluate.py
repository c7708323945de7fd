"""A committed data set becomes a trained, evaluated model version, through the running services."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pandas as pd
import pytest
from sklearn.datasets import load_diabetes, load_wine

from mlops.bus import EventPublisher
from mlops.events.v1 import common_pb2, evaluation_pb2, training_pb2
from mlops.settings import BusSettings, KafkaSettings
from tests.e2e.conftest import mlops
from tests.integration.bus_helpers import raw_reader
from tests.integration.conftest import eventually, jaeger_trace

SPEC = """apiVersion: mlops/v1
kind: ModelSpec
metadata: {{name: {name}}}
spec:
  dataset: {dataset}
  task: {task}
  label: target
  training: {{hidden_layers: [{width}], epochs: {epochs}, learning_rate: 0.01, batch_size: 32, seed: 7}}
  gate: {{metric: {metric}, {bound}, max_regression: 0.02, max_p99_latency_ms: 50}}
"""


def write_spec(tmp: Path, **fields) -> Path:
    path = tmp / f"{fields['name']}.yaml"
    path.write_text(SPEC.format(**fields))
    return path


def write_frame(tmp: Path, frame: pd.DataFrame, name: str) -> Path:
    path = tmp / f"{name}.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.mark.timeout(420)
async def test_wine_and_diabetes_go_from_commit_to_gated_version(kafka, unique, tmp_path, jaeger_url):
    wine, diabetes = f"wine-{unique}", f"diabetes-{unique}"
    mlops(
        "apply",
        "-f",
        str(
            write_spec(
                tmp_path,
                name=wine,
                dataset=wine,
                task="classification",
                width=32,
                epochs=60,
                metric="accuracy",
                bound="min: 0.8",
            )
        ),
    )
    mlops(
        "apply",
        "-f",
        str(
            write_spec(
                tmp_path,
                name=diabetes,
                dataset=diabetes,
                task="regression",
                width=32,
                epochs=60,
                metric="r2",
                bound="min: 0.2",
            )
        ),
    )
    wine_frame = load_wine(as_frame=True).frame
    diabetes_frame = load_diabetes(as_frame=True).frame
    async with (
        raw_reader(kafka, "mlops.model.trained") as trained,
        raw_reader(kafka, "mlops.model.evaluated") as evaluations,
    ):
        committed = mlops("data", "commit", str(write_frame(tmp_path, wine_frame, wine)), "--dataset", wine)
        mlops("data", "commit", str(write_frame(tmp_path, diabetes_frame, diabetes)), "--dataset", diabetes)
        trained_events = await collect(trained, {wine, diabetes}, training_pb2.ModelTrained)
        evaluated_events = await collect(evaluations, {wine, diabetes}, evaluation_pb2.ModelEvaluated)

    wine_trained, wine_eval = trained_events[wine], evaluated_events[wine]
    assert wine_trained.version == 1 and wine_trained.task == "classification"
    assert list(wine_trained.class_labels) == ["0", "1", "2"]
    assert wine_trained.parity_max_abs_diff <= wine_trained.parity_tolerance
    assert wine_eval.version == 1 and wine_eval.champion_version == 0
    assert wine_eval.passed, [g.message for g in wine_eval.gates]
    assert {"accuracy", "macro_f1", "roc_auc", "log_loss"} <= set(wine_eval.metrics)
    assert wine_eval.latency_p99_ms > 0 and wine_eval.model_size_bytes > 0

    diabetes_trained, diabetes_eval = trained_events[diabetes], evaluated_events[diabetes]
    assert diabetes_trained.task == "regression" and not diabetes_trained.class_labels
    assert {"rmse", "mae", "r2"} <= set(diabetes_eval.metrics)
    assert diabetes_eval.passed, [g.message for g in diabetes_eval.gates]

    shown = mlops("models", "show", f"{wine}@1")
    assert shown["signature"]["featureNames"][0] == "alcohol"
    lineage = mlops("models", "lineage", f"{wine}@1")
    assert lineage["evaluations"][0]["passed"] is True

    # One trace from the data commit to the verdict: every service's spans, and no span whose
    # parent is missing (an orphan would mean a hop lost the context).
    # Each service exports its spans on its own schedule, so a child (the registry's side of a call)
    # may reach Jaeger before its parent (the caller's side): the trace is read until it is whole.
    seen: dict[str, list[str]] = {"orphans": []}

    def whole_trace():
        spans = jaeger_trace(jaeger_url, committed["traceId"])
        services = {span.service for span in spans}
        wanted = {"mlops-cli", "mlops-registry", "mlops-trainer", "mlops-evaluator"}
        published = any(span.name == "publish mlops.model.evaluated" for span in spans)
        ids = {span.span_id for span in spans}
        seen["orphans"] = [span.name for span in spans if span.parent_id and span.parent_id not in ids]
        return spans if wanted <= services and published and not seen["orphans"] else None

    try:
        spans = await eventually(whole_trace, timeout_s=60, what="the commit's trace across every service")
    except AssertionError:
        raise AssertionError(f"spans whose parent never reached the trace: {seen['orphans']}") from None
    assert [span.name for span in spans if not span.parent_id] == ["mlops data commit"]


async def collect(reader, models: set[str], cls, timeout_s: float = 300.0) -> dict:
    """The first event of type `cls` for each model, read from `reader` until all have arrived."""
    found: dict = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while set(found) != models:
        assert loop.time() < deadline, f"no {cls.__name__} within {timeout_s}s for {models - set(found)}"
        batch = await reader.getmany(timeout_ms=500)
        for records in batch.values():
            for record in records:
                key = record.key.decode() if record.key else ""
                if key in models and key not in found:
                    found[key] = cls.FromString(record.value)
    return found


@pytest.mark.timeout(420)
async def test_a_challenger_worse_than_the_champion_fails_its_gate(kafka, unique, tmp_path):
    model = f"champ-{unique}"
    mlops(
        "apply",
        "-f",
        str(
            write_spec(
                tmp_path,
                name=model,
                dataset=model,
                task="classification",
                width=32,
                epochs=60,
                metric="accuracy",
                bound="min: 0.5",
            )
        ),
    )
    async with raw_reader(kafka, "mlops.model.evaluated") as evaluations:
        mlops(
            "data",
            "commit",
            str(write_frame(tmp_path, load_wine(as_frame=True).frame, model)),
            "--dataset",
            model,
        )
        first = (await collect(evaluations, {model}, evaluation_pb2.ModelEvaluated))[model]
    assert first.passed
    mlops("alias", "set", model, "production", str(first.version), "--reason", "first release")

    # A worse spec (one epoch, a tiny layer) retrained on the same data: the challenger.
    mlops(
        "apply",
        "-f",
        str(
            write_spec(
                tmp_path,
                name=model,
                dataset=model,
                task="classification",
                width=2,
                epochs=1,
                metric="accuracy",
                bound="min: 0.0",
            )
        ),
    )
    publisher = EventPublisher(KafkaSettings(), BusSettings(), source="mlops-tests")
    await publisher.start()
    try:
        async with raw_reader(kafka, "mlops.model.evaluated") as evaluations:
            await publisher.publish(
                training_pb2.RetrainRequested(
                    model=model,
                    trigger=common_pb2.TRAINING_TRIGGER_MANUAL,
                    reason="try a smaller network",
                    requested_by="tests",
                )
            )
            second = (await collect(evaluations, {model}, evaluation_pb2.ModelEvaluated))[model]
    finally:
        await publisher.stop()
    assert second.version == first.version + 1 and second.champion_version == first.version
    assert not second.passed
    failed = [g for g in second.gates if not g.passed and not g.skipped]
    assert any("regression" in g.gate or "champion" in g.message for g in failed), [
        g.message for g in second.gates
    ]
    assert second.champion_metrics["accuracy"] == pytest.approx(first.metrics["accuracy"])
