"""Kafka side of the registry: data commits from upstream, and monitor events kept for lineage."""

from __future__ import annotations

import csv
import io
import logging
import tempfile
from pathlib import Path

from opentelemetry import trace

from mlops.bus import EventContext
from mlops.errors import InvalidArgument
from mlops.events.v1 import common_pb2, data_pb2, monitoring_pb2
from mlops.registry.v1 import registry_pb2 as pb
from mlops.store import ArtifactStore
from services.registry.core import RegistryCore

log = logging.getLogger(__name__)
tracer = trace.get_tracer("mlops.registry")


def csv_schema(data: bytes, sample_rows: int = 10_000) -> tuple[list[common_pb2.Column], int]:
    """Column names and types (int64, float64, string) inferred from a CSV, and its row count."""
    reader = csv.reader(io.StringIO(data.decode("utf-8-sig")))
    try:
        header = next(reader)
    except StopIteration:
        raise InvalidArgument("the CSV file is empty: no header row") from None
    kinds = ["int64"] * len(header)
    nullable = [False] * len(header)
    rows = 0
    for rows, row in enumerate(reader, start=1):
        if rows > sample_rows:
            continue
        for index, cell in enumerate(row[: len(header)]):
            if cell == "":
                nullable[index] = True
                continue
            if kinds[index] == "int64":
                try:
                    int(cell)
                    continue
                except ValueError:
                    kinds[index] = "float64"
            if kinds[index] == "float64":
                try:
                    float(cell)
                except ValueError:
                    kinds[index] = "string"
    columns = [
        common_pb2.Column(name=name, type=kind, nullable=null)
        for name, kind, null in zip(header, kinds, nullable, strict=True)
    ]
    return columns, rows


class RegistryHandlers:
    def __init__(self, core: RegistryCore, store: ArtifactStore | None, *, verify: bool) -> None:
        self.core = core
        self.store = store
        self.verify = verify

    async def on_data_committed(self, event: data_pb2.DataCommitted, ctx: EventContext) -> None:
        """Record the version a `DataCommitted` names, after checking the object exists with that sha256.

        A missing object or a checksum mismatch is a permanent error: the event goes to the DLQ with the reason.
        """
        span = trace.get_current_span()
        span.set_attribute("mlops.dataset.name", event.dataset)
        columns: list[common_pb2.Column] = []
        row_count = event.row_count
        if self.verify and self.store is not None:
            with tracer.start_as_current_span(
                "verify data commit", attributes={"mlops.dataset.name": event.dataset}
            ):
                if not event.sha256:
                    raise InvalidArgument(
                        "DataCommitted has no sha256; upstream must send the file's checksum"
                    )
                with tempfile.TemporaryDirectory() as tmp:
                    local = await self.store.get_file(event.uri, Path(tmp) / "data", event.sha256)
                    if event.format == "csv":
                        columns, counted = csv_schema(local.read_bytes())
                        row_count = row_count or counted
        request = pb.RecordDatasetVersionRequest(
            dataset=event.dataset,
            uri=event.uri,
            sha256=event.sha256,
            format=event.format,
            row_count=row_count,
            columns=columns,
            parent_sha256=event.parent_sha256,
            committed_by=event.committed_by or ctx.envelope.source,
            labels=event.labels,
            source_event_id=ctx.envelope.id,
        )
        if event.HasField("committed_at"):
            request.committed_at.CopyFrom(event.committed_at)
        response = await self.core.record_dataset_version(request, session=ctx.session)
        span.set_attribute("mlops.dataset.version", response.dataset_version.version)

    async def on_monitor_event(self, event, ctx: EventContext) -> None:
        assert isinstance(event, monitoring_pb2.DriftDetected | monitoring_pb2.PerformanceDegraded)
        assert ctx.session is not None
        await self.core.record_monitor_event(ctx.envelope.id, event, ctx.session)
