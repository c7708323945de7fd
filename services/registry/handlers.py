"""Kafka side of the registry: data commits from upstream, and monitor events kept for lineage."""

from __future__ import annotations

import logging

from opentelemetry import trace

from mlops.bus import EventContext
from mlops.events.v1 import data_pb2, monitoring_pb2
from services.registry.core import RegistryCore
from services.registry.core.datasets import csv_schema  # noqa: F401 - tests/unit/test_registry_spec.py imports it here

log = logging.getLogger(__name__)
tracer = trace.get_tracer("mlops.registry")


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
        response = await self.core.record_data_commit(
            event, source=ctx.envelope.source, event_id=ctx.envelope.id, session=ctx.session
        )
        span.set_attribute("mlops.dataset.version", response.dataset_version.version)

    async def on_monitor_event(self, event, ctx: EventContext) -> None:
        assert isinstance(event, monitoring_pb2.DriftDetected | monitoring_pb2.PerformanceDegraded)
        assert ctx.session is not None
        await self.core.record_monitor_event(ctx.envelope.id, event, ctx.session)
