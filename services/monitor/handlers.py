"""Kafka side of the monitor's ground truth: every `GroundTruthLogged` is stored for the join."""

from __future__ import annotations

from opentelemetry import trace

from mlops.bus import EventContext
from mlops.events.v1 import monitoring_pb2
from services.monitor.performance import PerformanceTracker


class MonitorHandlers:
    def __init__(self, performance: PerformanceTracker) -> None:
        self.performance = performance

    async def on_ground_truth(self, event: monitoring_pb2.GroundTruthLogged, ctx: EventContext) -> None:
        """Store the label in the inbox transaction. A label without a model, request id or truth, or
        for a model the registry does not know, is a permanent error: it goes to the DLQ with the reason."""
        assert ctx.session is not None
        trace.get_current_span().set_attribute("mlops.model.name", event.model)
        await self.performance.record_truth(event, event_time=ctx.envelope.time, session=ctx.session)
