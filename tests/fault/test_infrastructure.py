"""R1 and R3: the loop completes, exactly once, while the infrastructure under it fails.

R1: Kafka SIGKILLed and restarted three times while a model goes from data commit to production.
R3: PostgreSQL restarted, the S3 server down for 30 s and Jaeger down, during one turn of the loop;
and the S3 server down from the middle of training until the trained model's upload is waiting.
Both must end with the version in production and no duplicate version, run, evaluation or rollout;
every event of the turn must be on its topic (none lost)."""

from __future__ import annotations

import asyncio
import time

import pytest

from mlops.events.v1 import deployment_pb2, evaluation_pb2, model_pb2, training_pb2
from tests.fault.conftest import (
    STACK,
    all_services_running,
    figures,
    kill_component,
    run,
    start_component,
    wait_until,
)
from tests.fault.loop import Loop

# Each must have been published for the turn at least once: at-least-once delivery may repeat an
# event, but the system of record must hold each fact once (checked through Loop.made()).
TURN_EVENTS = (
    training_pb2.TrainingStarted,
    training_pb2.ModelTrained,
    evaluation_pb2.ModelEvaluated,
    model_pb2.ModelRegistered,
    deployment_pb2.ModelDeployed,
)


async def published_for(kafka_settings, model: str, since) -> dict[str, int]:
    from mlops.event_catalog import spec_for
    from tests.fault.conftest import read_since

    counts = {}
    for event in TURN_EVENTS:
        topic = spec_for(event).topic
        records = await read_since(kafka_settings, {tp: o for tp, o in since.items() if tp.topic == topic})
        counts[event.__name__] = sum(1 for r in records if r.key == model.encode())
    return counts


async def turn_offsets(kafka_settings):
    from mlops.event_catalog import spec_for
    from tests.fault.conftest import end_offsets

    topics = [spec_for(event).topic for event in (*TURN_EVENTS, training_pb2.TrainingFailed)]
    return await end_offsets(kafka_settings, topics)


async def failed_for(kafka_settings, model: str, since) -> int:
    """TrainingFailed events of `model` published since `since`."""
    from mlops.event_catalog import spec_for
    from tests.fault.conftest import read_since

    topic = spec_for(training_pb2.TrainingFailed).topic
    records = await read_since(kafka_settings, {tp: o for tp, o in since.items() if tp.topic == topic})
    return sum(1 for r in records if r.key == model.encode())


def reached(loop: Loop, stage: str) -> bool:
    made = loop.made()
    return {
        "run": made.runs >= 1,
        "version": bool(made.versions),
        "evaluation": bool(made.evaluations),
    }[stage]


@pytest.mark.timeout(900)
async def test_r1_kafka_killed_three_times_while_the_loop_runs(kafka_settings, unique, tmp_path):
    restarts = all_services_running()
    since = await turn_offsets(kafka_settings)
    loop = Loop(f"r1-{unique}", tmp_path, epochs=300)
    started = time.monotonic()
    outages = []
    try:
        loop.declare()
        loop.commit()
        for stage in ("run", "version", "evaluation"):
            wait_until(lambda stage=stage: reached(loop, stage), timeout_s=240, what=f"the turn's {stage}")
            down = time.monotonic()
            kill_component("kafka")
            start_component("kafka")
            outages.append(round(time.monotonic() - down, 1))
        made = loop.wait_in_production(1, timeout_s=400)
    finally:
        loop.close()
    events = await published_for(kafka_settings, loop.name, since)
    figures(
        "R1 kafka killed x3",
        turn_s=round(time.monotonic() - started, 1),
        kafka_down_s=outages,
        versions=made.versions,
        runs=made.runs,
        evaluations=len(made.evaluations),
        rollouts=len(made.rollouts),
        events=events,
    )
    assert not made.duplicates(), made.duplicates()
    assert made.versions == [1] and made.production == 1
    assert all(count >= 1 for count in events.values()), f"events lost: {events}"
    assert all_services_running() == restarts, "a service restarted because Kafka did"


@pytest.mark.timeout(900)
async def test_r3_database_restarted_store_down_30s_tracing_down(kafka_settings, unique, tmp_path):
    restarts = all_services_running()
    since = await turn_offsets(kafka_settings)
    loop = Loop(f"r3-{unique}", tmp_path, epochs=300)
    started = time.monotonic()
    try:
        loop.declare()
        kill_component("jaeger")  # spans may be lost; nothing else may be
        loop.commit()
        wait_until(lambda: reached(loop, "run"), timeout_s=240, what="the turn's run")
        stop = run("bash", "infra/local/stack.sh", "down", "postgres")
        assert stop.returncode == 0, stop.stdout + stop.stderr
        start_component("postgres")
        wait_until(
            lambda: reached(loop, "version") or reached(loop, "run"), timeout_s=240, what="registry back"
        )
        kill_component("s3")
        s3_down = time.monotonic()
        # The outage itself lasts 30 s: this wait is the fault, not a readiness check.
        await asyncio.sleep(30)
        start_component("s3")
        s3_down_s = round(time.monotonic() - s3_down, 1)
        made = loop.wait_in_production(1, timeout_s=400)
    finally:
        start_component("jaeger")
        loop.close()
    events = await published_for(kafka_settings, loop.name, since)
    figures(
        "R3 postgres restarted, s3 down, jaeger down",
        turn_s=round(time.monotonic() - started, 1),
        s3_down_s=s3_down_s,
        versions=made.versions,
        runs=made.runs,
        evaluations=len(made.evaluations),
        rollouts=len(made.rollouts),
        events=events,
    )
    assert not made.duplicates(), made.duplicates()
    assert made.versions == [1] and made.production == 1
    assert all(count >= 1 for count in events.values()), f"events lost: {events}"
    assert all_services_running() == restarts, "a service restarted because the infrastructure did"


class TrainerLog:
    """What the trainer writes to its log from now on (the stack's `.stack/logs/trainer.log`)."""

    def __init__(self) -> None:
        self.path = STACK / "logs" / "trainer.log"
        self.start = self.path.stat().st_size if self.path.exists() else 0

    def says(self, *parts: str) -> bool:
        with self.path.open("rb") as handle:
            handle.seek(self.start)
            text = handle.read().decode(errors="replace")
        return any(all(part in line for part in parts) for line in text.splitlines())


@pytest.mark.timeout(900)
async def test_r3_s3_down_when_training_ends_the_model_waits_and_ships(kafka_settings, unique, tmp_path):
    """S3 goes down once the trainer holds the data and stays down until the trained model's upload
    is waiting: the model must wait the outage out and reach production, with no failed job."""
    restarts = all_services_running()
    since = await turn_offsets(kafka_settings)
    trainer_log = TrainerLog()
    loop = Loop(f"r3u-{unique}", tmp_path, epochs=3000)  # several seconds of training to kill S3 in
    started = time.monotonic()
    try:
        loop.declare()
        loop.commit()
        wait_until(lambda: trainer_log.says("loaded; training", loop.name), timeout_s=240, what="data loaded")
        kill_component("s3")
        s3_down = time.monotonic()
        wait_until(
            lambda: trainer_log.says("waits out an outage", f"models/{loop.name}"),
            timeout_s=300,
            what="the upload waiting out the outage",
        )
        start_component("s3")
        s3_down_s = round(time.monotonic() - s3_down, 1)
        made = loop.wait_in_production(1, timeout_s=300)
    finally:
        start_component("s3")
        loop.close()
    events = await published_for(kafka_settings, loop.name, since)
    failed = await failed_for(kafka_settings, loop.name, since)
    figures(
        "R3 s3 down as training ends",
        turn_s=round(time.monotonic() - started, 1),
        s3_down_s=s3_down_s,
        versions=made.versions,
        runs=made.runs,
        events=events,
    )
    assert failed == 0, "the job failed instead of waiting out the outage"
    assert not made.duplicates(), made.duplicates()
    assert made.versions == [1] and made.production == 1
    assert all(count >= 1 for count in events.values()), f"events lost: {events}"
    assert all_services_running() == restarts, "a service restarted because S3 did"
