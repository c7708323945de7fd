"""`make demo`: the foundation at work on the local stack, end to end, in one trace.

An upstream system commits a data set: the file goes to the S3 store content-addressed, a
`DataCommitted` event goes to Kafka with its CloudEvents envelope and trace context; a consumer
picks it up, reads the file back with its sha256 verified, and the whole path is drawn from
Jaeger's API as a tree.
"""

from __future__ import annotations

import asyncio
import csv
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

from opentelemetry import trace

from mlops.bus import EventConsumer, EventPublisher
from mlops.events.v1 import data_pb2
from mlops.jaeger import JaegerClient, render_tree
from mlops.settings import ArtifactSettings, BusSettings, KafkaSettings
from mlops.store import open_store
from mlops.telemetry import setup_telemetry

tracer = trace.get_tracer("mlops.demo")
FEATURES = ["alcohol", "malic_acid", "ash", "magnesium", "flavanoids", "color_intensity", "hue", "proline"]


def write_dataset(path: Path, rows: int = 500, seed: int = 7) -> None:
    """A small, seeded, three-class tabular data set (stands in for an upstream export)."""
    rng = random.Random(seed)
    centres = [[13.7, 2.0, 2.4, 106, 2.9, 5.5, 1.06, 1115], [12.3, 1.9, 2.2, 94, 2.1, 3.1, 1.06, 520],
               [13.1, 3.3, 2.4, 99, 0.8, 7.4, 0.68, 630]]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*FEATURES, "target"])
        for _ in range(rows):
            label = rng.randrange(3)
            writer.writerow([round(rng.gauss(c, abs(c) * 0.08), 3) for c in centres[label]] + [label])


async def main() -> int:
    telemetry = setup_telemetry("demo")
    kafka, bus = KafkaSettings(), BusSettings()
    store = open_store(ArtifactSettings())
    jaeger = JaegerClient(os.environ.get("MLOPS_JAEGER_QUERY_URL", "http://127.0.0.1:16686"))
    dataset = "wine"
    received: asyncio.Queue = asyncio.Queue()

    publisher = EventPublisher(kafka, bus, source="mlops-demo-upstream")
    await publisher.start()

    async def on_commit(event: data_pb2.DataCommitted, ctx) -> None:
        with tracer.start_as_current_span("verify dataset", attributes={"mlops.dataset.name": event.dataset}):
            data = await store.get_bytes(event.uri, event.sha256)
        await received.put((event, ctx, len(data)))

    consumer = EventConsumer(kafka, bus, group_id=f"mlops-demo-{uuid.uuid4().hex[:6]}", publisher=publisher,
                             from_end=True)
    consumer.subscribe(data_pb2.DataCommitted, on_commit, idempotent=False)
    await consumer.start()
    await consumer.wait_assigned()
    task = asyncio.create_task(consumer.run())
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "wine.csv"
            write_dataset(path)
            started = time.perf_counter()
            with tracer.start_as_current_span("commit dataset", attributes={"mlops.dataset.name": dataset}) as span:
                ref = await store.put_file(f"datasets/{dataset}", "wine.csv", path)
                await publisher.publish(
                    data_pb2.DataCommitted(dataset=dataset, uri=ref.uri, sha256=ref.sha256, format="csv",
                                           row_count=500, committed_by="demo")
                )
                trace_id = format(span.get_span_context().trace_id, "032x")
        event, ctx, size = await asyncio.wait_for(received.get(), timeout=30)
        elapsed = (time.perf_counter() - started) * 1000
    finally:
        await consumer.stop()
        await task
        await publisher.stop()
    telemetry.provider.force_flush()

    print(f"\nData set '{event.dataset}' committed: {ref.uri}")
    print(f"  sha256 {ref.sha256} ({size} bytes, verified on read)")
    print(f"  event {ctx.envelope.id} ({ctx.envelope.type}) from {ctx.envelope.source},"
          f" partition {ctx.partition} offset {ctx.offset}; commit to handled in {elapsed:.0f} ms")
    deadline = time.monotonic() + 20
    spans = []
    while time.monotonic() < deadline and len(spans) < 6:
        spans = jaeger.trace(trace_id)
        await asyncio.sleep(0.3)
    print(f"\nTrace {trace_id} as Jaeger has it ({len(spans)} spans):")
    print(render_tree(spans) or "  (no spans yet: is OTEL_EXPORTER_OTLP_ENDPOINT set?)")
    print(f"\nJaeger: {jaeger.ui_url(trace_id)}  (API: {jaeger.base_url}/api/v3/traces/{trace_id})")
    print("Next: `make test` runs every test against this stack; `make bench` compares the bus with raw aiokafka.")
    jaeger.close()
    telemetry.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
