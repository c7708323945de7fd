"""Relay throughput of the event bus against a raw aiokafka relay, side by side in one run.

Both relays do the same work per record: consume a `DataCommitted`, parse it, build a
`DatasetVersionRecorded`, produce it, and commit offsets per batch after the produced records are
acknowledged. The bus adds what a platform service gets for free: the CloudEvents envelope, a
CONSUMER and a PRODUCER span per record exported over OTLP to Jaeger, retries and dead letters.
Topics carry a `bench.` prefix so that no service of the platform sees the load.

    python -m tests.bench.bench_bus [--records N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import OffsetAndMetadata

from mlops.bus import EventConsumer, EventPublisher, ensure_topics
from mlops.bus.admin import with_dead_letters
from mlops.event_catalog import spec_for
from mlops.events.v1 import data_pb2
from mlops.settings import BusSettings, KafkaSettings
from mlops.telemetry import setup_telemetry

PREFIX = "bench."
IN_TOPIC = PREFIX + spec_for(data_pb2.DataCommitted).topic
OUT_TOPIC = PREFIX + spec_for(data_pb2.DatasetVersionRecorded).topic


def recorded_from(event: data_pb2.DataCommitted) -> data_pb2.DatasetVersionRecorded:
    """The handler's business logic, identical for both relays."""
    return data_pb2.DatasetVersionRecorded(
        dataset=event.dataset,
        uri=event.uri,
        sha256=event.sha256,
        format=event.format,
        row_count=event.row_count,
    )


async def preload(kafka: KafkaSettings, bus: BusSettings, count: int) -> None:
    publisher = EventPublisher(kafka, bus, source="mlops-bench")
    await publisher.start()
    try:
        from mlops.bus.producer import deferred_deliveries

        with deferred_deliveries() as pending:
            for index in range(count):
                await publisher.publish(
                    data_pb2.DataCommitted(
                        dataset=f"bench-{index % 64}",
                        uri=f"s3://mlops/datasets/bench/{index:064x}/data.csv",
                        sha256=f"{index:064x}",
                        format="csv",
                        row_count=index,
                        committed_by="bench",
                    )
                )
            await asyncio.gather(*pending)
    finally:
        await publisher.stop()


async def run_bus_relay(kafka: KafkaSettings, bus: BusSettings, count: int) -> float:
    publisher = EventPublisher(kafka, bus, source="mlops-bench-relay")
    await publisher.start()
    consumer = EventConsumer(
        kafka, bus, group_id=f"bench-bus-{uuid.uuid4().hex[:8]}", publisher=publisher, from_end=True
    )
    done = asyncio.Event()
    handled = 0

    async def relay(event, ctx):
        nonlocal handled
        await publisher.publish(recorded_from(event))
        handled += 1
        if handled == count:
            done.set()

    consumer.subscribe(data_pb2.DataCommitted, relay, idempotent=False)
    await consumer.start()
    await consumer.wait_assigned()
    await preload(kafka, bus, count)
    started = time.perf_counter()
    task = asyncio.create_task(consumer.run())
    await done.wait()
    await consumer.stop()  # the last batch's deliveries are awaited and committed
    elapsed = time.perf_counter() - started
    await task
    await publisher.stop()
    return elapsed


async def run_raw_relay(kafka: KafkaSettings, bus: BusSettings, count: int) -> float:
    producer = AIOKafkaProducer(
        **kafka.client_options(),
        enable_idempotence=True,
        acks="all",
        linger_ms=bus.linger_ms,
        max_batch_size=1 << 20,
    )
    consumer = AIOKafkaConsumer(
        IN_TOPIC,
        **kafka.client_options(),
        group_id=f"bench-raw-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="latest",
        max_poll_records=bus.max_poll_records,
        isolation_level="read_committed",
    )
    await producer.start()
    await consumer.start()
    while not consumer.assignment():  # noqa: ASYNC110 - aiokafka offers no event for "assigned"
        await asyncio.sleep(0.02)
    assignment = list(consumer.assignment())
    await consumer.seek_to_end(*assignment)
    for tp in assignment:
        await consumer.position(tp)
    await preload(kafka, bus, count)
    started = time.perf_counter()
    handled = 0
    while handled < count:
        batch = await consumer.getmany(timeout_ms=bus.poll_timeout_ms)
        pending = []
        for records in batch.values():
            for record in records:
                event = data_pb2.DataCommitted()
                event.ParseFromString(record.value)
                out = recorded_from(event)
                pending.append(
                    await producer.send(OUT_TOPIC, out.SerializeToString(), key=out.dataset.encode())
                )
                handled += 1
        await asyncio.gather(*pending)
        if batch:
            await consumer.commit(
                {tp: OffsetAndMetadata(records[-1].offset + 1, "") for tp, records in batch.items()}
            )
    elapsed = time.perf_counter() - started
    await consumer.stop()
    await producer.stop()
    return elapsed


CONTENDERS = {
    "raw aiokafka relay": ("raw", {}),
    "platform bus relay, every record traced": ("bus", {"OTEL_TRACES_SAMPLER": "parentbased_always_on"}),
    "platform bus relay, 1% of traces sampled": (
        "bus",
        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"},
    ),
}


async def run_one(kind: str, records: int) -> float:
    """One contender in this process; returns records per second."""
    kafka = KafkaSettings()
    bus = BusSettings(topic_prefix=PREFIX)
    telemetry = setup_telemetry("bench")
    await ensure_topics(kafka, bus, with_dead_letters([IN_TOPIC, OUT_TOPIC]))
    relay = run_raw_relay if kind == "raw" else run_bus_relay
    rate = records / await relay(kafka, bus, records)
    telemetry.shutdown()
    return rate


def main(records: int, rounds: int) -> dict:
    """Every contender in a fresh process of its own, rounds interleaved, medians compared."""
    results: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for round_ in range(rounds):
        names = list(CONTENDERS)
        if round_ % 2:
            names.reverse()  # neither contender always runs on the warmer broker
        for name in names:
            kind, env = CONTENDERS[name]
            output = subprocess.run(
                [sys.executable, "-m", "tests.bench.bench_bus", "--one", kind, "--records", str(records)],
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            results[name].append(float(output.strip().splitlines()[-1]))
            print(f"round {round_ + 1}: {name}: {results[name][-1]:,.0f} records/s", flush=True)
    medians = {name: statistics.median(values) for name, values in results.items()}
    raw = medians["raw aiokafka relay"]
    return {
        "benchmark": "bus relay throughput (consume, handle, produce, commit per batch)",
        "records_per_round": records,
        "rounds": rounds,
        "cores": os.cpu_count(),
        "median_records_per_s": {name: round(value) for name, value in medians.items()},
        "ratio_to_raw": {name: round(value / raw, 3) for name, value in medians.items()},
        "all_rounds_records_per_s": {name: [round(v) for v in values] for name, values in results.items()},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--one", choices=["raw", "bus"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(asyncio.run(run_one(args.one, args.records)))
        sys.exit(0)
    summary = main(args.records, args.rounds)
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "bus.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    for name, ratio in summary["ratio_to_raw"].items():
        print(f"{name:45s} {summary['median_records_per_s'][name]:>8,} records/s  {ratio:.2f} x raw")
