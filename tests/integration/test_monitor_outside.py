"""The monitor against the real stack (see `monitor_helpers`) for a model trained outside the
platform whose inputs are numbers and text: the text input is profiled and judged by name, an input
the profile lacks is reported once and ignored, and an alarm asks for a new model instead of a
retrain (no DataCommitted, no RetrainRequested; the version's state says why).
"""

# The fixtures are imported from monitor_helpers, and pytest hands them to the tests by parameter name.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import text

from mlops.events.v1 import monitoring_pb2
from mlops.profile import ReferenceProfile
from mlops.registry.v1 import registry_pb2 as pb
from tests.integration.bus_helpers import raw_reader, read_until
from tests.integration.conftest import TEST_TOPIC_PREFIX, eventually
from tests.integration.monitor_helpers import (
    CLASSES,
    FEATURES,
    Model,
    batch_of,
    declare_model,
    drift_status,
    monitor,  # noqa: F401 - a shared fixture
    probabilities_of,
    publish_truth,
    publisher,  # noqa: F401 - a shared fixture
    records_for,
    registry,  # noqa: F401 - a shared fixture
    stack_monitor_paused,  # noqa: F401 - a shared fixture
    store,  # noqa: F401 - a shared fixture
    training_frame,
)

RETRAIN_TOPICS = [TEST_TOPIC_PREFIX + "mlops.retrain.requested", TEST_TOPIC_PREFIX + "mlops.data.committed"]


# --- an outside model: four numbers and one text input --------------------------------------------

COLOURS = ["red", "green", "blue"]
TEXT_FEATURES = ["colour"]


def coloured_frame(rng: np.random.Generator, n: int, *, shares=(0.6, 0.3, 0.1)) -> pd.DataFrame:
    frame = training_frame(rng, n)
    frame["colour"] = rng.choice(COLOURS, size=n, p=list(shares))
    return frame


def recoloured_frame(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """Numeric inputs as in training, the text input drifted."""
    return coloured_frame(rng, n, shares=(0.05, 0.15, 0.8))


async def declare_outside_model(registry, store, unique: str, **options) -> Model:
    """A model trained elsewhere (`training.external`) whose inputs are four numbers and one text
    (`colour`); its profile names the data set's columns, as the registry profiles an outside model."""
    model = await declare_model(registry, store, unique, **options)
    frame = coloured_frame(model.rng, 3000)
    codes = frame["colour"].map({c: i for i, c in enumerate(COLOURS)}).to_numpy(dtype=float)
    profile = ReferenceProfile.compute(
        task="classification",
        features=np.column_stack([frame[FEATURES].to_numpy(), codes]),
        feature_names=[*FEATURES, "colour"],
        categorical={"colour": COLOURS},
        predictions=probabilities_of(frame),
        class_labels=CLASSES,
    )
    profile_ref = await store.put_bytes(f"models/{model.name}", "profile.json", profile.to_json().encode())
    version = model.version
    reply = await registry.RegisterModelVersion(
        pb.RegisterModelVersionRequest(
            model=model.name,
            run_id=uuid.uuid4().hex,
            spec_version=version.spec_version,
            dataset=model.dataset,
            dataset_version=model.dataset_version.version,
            dataset_sha256=model.dataset_version.sha256,
            artifact_uri=version.artifact_uri,
            artifact_sha256=version.artifact_sha256,
            artifact_size_bytes=version.artifact_size_bytes,
            profile_uri=profile_ref.uri,
            profile_sha256=profile_ref.sha256,
            signature=version.signature,
            metrics={"accuracy": 0.95},
        )
    )
    model.version = reply.model_version
    return model


def text_batch_of(model: Model, frame: pd.DataFrame, *, prefix: str = "") -> monitoring_pb2.InferenceLogged:
    """`batch_of` for an outside model: the numbers in `features`, the text input (and one the
    profile does not know, `city`) in `text_features`, every row answered by the model's version."""
    batch = batch_of(model, frame, version=model.version.version, prefix=prefix)
    batch.text_feature_names.extend(["city", "colour"])
    for record, colour in zip(batch.records, frame["colour"], strict=True):
        record.text_features.extend(["paris", colour])
    return batch


async def _new_model_state(database, model: str, version: int):
    async with database.session() as session:
        found = await session.exec(
            text(
                "SELECT new_model_needed_at, new_model_reason FROM monitor.version_state "
                "WHERE model = :m AND version = :v"
            ),
            params={"m": model, "v": version},
        )
        return found.first()


async def _no_retrain_for(readers, model) -> None:
    """The alarm and any retrain are written in one transaction: had one been written, it would be on
    its topic by now."""
    for reader in readers:
        stray = await reader.getmany(timeout_ms=1000)
        assert not [r for records in stray.values() for r in records if r.key in (model.name.encode(),)]


async def test_an_outside_models_drifted_text_input_raises_the_alarm_and_asks_for_a_new_model(
    monitor, registry, store, publisher, kafka, database, caplog
):
    model = await declare_outside_model(registry, store, uuid.uuid4().hex[:10], consecutive=2)
    version = model.version.version
    caplog.set_level(logging.WARNING, logger="services.monitor.core")

    async def traffic(seconds: float) -> None:
        deadline = time.time() + seconds
        while time.time() < deadline:
            await publisher.publish(text_batch_of(model, recoloured_frame(model.rng, 80)))
            await asyncio.sleep(0.1)

    async with (
        raw_reader(kafka, TEST_TOPIC_PREFIX + "mlops.drift.detected") as alarms,
        raw_reader(kafka, RETRAIN_TOPICS[0]) as retrains,
        raw_reader(kafka, RETRAIN_TOPICS[1]) as commits,
    ):
        publishing = asyncio.create_task(traffic(6.0))
        record = await read_until(alarms, records_for(model.name), timeout_s=30)
        await publishing
        await _no_retrain_for([retrains, commits], model)
    drift = monitoring_pb2.DriftDetected.FromString(record.value)
    assert drift.version == version and drift.consecutive_windows == 2
    scores = {f.feature: f for f in drift.features}
    assert set(scores) == {*FEATURES, "colour"}  # `city` is not in the profile: not a feature
    assert scores["colour"].drifted and scores["colour"].score > 1.0
    assert not any(scores[name].drifted for name in FEATURES)
    assert drift.new_model_needed

    state = await eventually(
        lambda: _new_model_state(database, model.name, version), timeout_s=10, what="the version's state"
    )
    needed_at, reason = state
    assert needed_at is not None
    assert reason.startswith("psi drift on 1 of 5 features")
    assert f"{model.name} is trained outside the platform (spec.training.external)" in reason
    status = await drift_status(monitor, model.name)
    (item,) = [v for v in status.versions if v.version == version]
    assert item.HasField("last_alarm_at")
    assert item.new_model_reason == reason and item.HasField("new_model_needed_at")

    # The input the profile lacks was reported once for the layout, however many batches logged it.
    reports = [r for r in caplog.records if model.name in r.getMessage() and "city" in r.getMessage()]
    assert len(reports) == 1, [r.getMessage() for r in reports]


async def test_an_outside_models_degradation_asks_for_a_new_model_instead_of_a_retrain(
    monitor, registry, store, publisher, kafka, database, stack_monitor_paused
):
    model = await declare_outside_model(
        registry, store, uuid.uuid4().hex[:10], on_drift="alert", on_degradation="retrain", gate_min=0.8
    )
    version = model.version.version

    async def wrong_answers(seconds: float) -> None:
        deadline = time.time() + seconds
        while time.time() < deadline:
            prefix = uuid.uuid4().hex[:8]
            batch = text_batch_of(model, coloured_frame(model.rng, 40), prefix=prefix)
            await publisher.publish(batch)
            await publish_truth(
                publisher, model, prefix, [CLASSES[1 - CLASSES.index(r.label)] for r in batch.records]
            )
            await asyncio.sleep(0.1)

    async with (
        raw_reader(kafka, TEST_TOPIC_PREFIX + "mlops.performance.degraded") as degradations,
        raw_reader(kafka, RETRAIN_TOPICS[0]) as retrains,
    ):
        publishing = asyncio.create_task(wrong_answers(5.0))
        record = await read_until(degradations, records_for(model.name), timeout_s=60)
        await publishing
        await _no_retrain_for([retrains], model)
    degraded = monitoring_pb2.PerformanceDegraded.FromString(record.value)
    assert degraded.version == version and degraded.metric == "accuracy"
    assert degraded.observed == pytest.approx(0.0)
    assert degraded.new_model_needed
    needed_at, reason = await _new_model_state(database, model.name, version)
    assert needed_at is not None and reason.startswith("live accuracy 0 outside the gate's bound (>= 0.8)")
    assert "trained outside the platform" in reason
