"""Kafka side of the registry: data commits from upstream, and monitor events kept for lineage."""

from __future__ import annotations

import logging

from opentelemetry import trace

from mlops import tabular
from mlops.bus import EventContext
from mlops.events.v1 import common_pb2, data_pb2, monitoring_pb2
from mlops.registry.v1 import registry_pb2 as pb
from services.registry.core import RegistryCore

log = logging.getLogger(__name__)
tracer = trace.get_tracer("mlops.registry")


def csv_schema(data: bytes) -> tuple[list[common_pb2.Column], int]:
    """Columns and row count of a CSV file already in memory, as `mlops.tabular.csv_facts` infers them."""
    facts = tabular.csv_facts([data])
    return facts.columns, facts.row_count


class RegistryHandlers:
    def __init__(self, core: RegistryCore) -> None:
        self.core = core

    async def on_data_committed(self, event: data_pb2.DataCommitted, ctx: EventContext) -> None:
        """Record the version a `DataCommitted` names; the core checks the object and its sha256 first.

        A missing object, a checksum mismatch, a file that is not the table its format says, or a
        store that refuses the read for good is a permanent error: the event goes to the DLQ with the
        reason. A store that is out waits, and the events behind it with it.
        """
        span = trace.get_current_span()
        span.set_attribute("mlops.dataset.name", event.dataset)
        request = pb.RecordDatasetVersionRequest(
            dataset=event.dataset,
            uri=event.uri,
            sha256=event.sha256,
            format=event.format,
            row_count=event.row_count,
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
