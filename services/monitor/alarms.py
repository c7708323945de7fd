"""Closing windows: each due window is judged against its version's training profile, its alarm run
advanced, and, in the commit's transaction, recorded with the DriftDetected it raises.

A version alarms after `consecutive_windows` drifted windows in a row, at most once per
`alarm_cooldown_s`. Its run lives in memory (an LRU over the versions events name) and in
PostgreSQL, where it is read back from when a window of a version not held here closes. Each closed
window gets a span linked to (some of) the traces of the batches counted in it; DriftDetected is
written to the outbox inside that span.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.trace import Link
from sqlmodel.ext.asyncio.session import AsyncSession

from mlops.db import Database
from mlops.errors import NotFound
from mlops.events.v1 import data_pb2, monitoring_pb2
from mlops.monitor.v1 import monitor_pb2
from mlops.outbox import Outbox
from mlops.registry.v1 import registry_pb2 as pb
from mlops.tracecontext import parse_traceparent
from services.monitor import prometheus, storage
from services.monitor.lru import LRU
from services.monitor.reference import Judgement, advance_run
from services.monitor.settings import MonitorSettings
from services.monitor.times import time_window, timestamp, utc
from services.monitor.windows import OpenWindow

if TYPE_CHECKING:  # the gRPC clients are handed in by the composition root
    from services.monitor.clients import ModelCatalog, VersionInfo

log = logging.getLogger(__name__)
tracer = trace.get_tracer("mlops.monitor")


@dataclass
class VersionState:
    consecutive: int = 0
    last_alarm_at: float | None = None


@dataclass
class Closing:
    """A due window, judged, with what it raises; built before the transaction that records it."""

    window: OpenWindow
    body: monitor_pb2.DriftWindow
    drifted: bool
    consecutive: int
    alarm: bool
    spec: pb.ModelSpecVersion | None
    info: VersionInfo | None
    span: trace.Span
    dataset_note: str = ""
    committed: data_pb2.DataCommitted | None = None
    """The assembled data set version's commit, published with the retrain request."""
    retrain_span: trace.Span | None = None
    retrain_skipped: str = ""
    """Why no retrain follows the alarm (the version is a candidate, not what production serves)."""
    new_model: bool = False
    """The alarm asks for a new model instead of a retrain (the model is trained elsewhere)."""

    def end_spans(self) -> None:
        if self.retrain_span is not None:
            self.retrain_span.end()
        self.span.end()


def policy(closing: Closing, field_name: str) -> str:
    """The spec's monitor policy `field_name` (`on_drift`, …) for the window's model; "none" without a spec."""
    if closing.spec is None:
        return "none"
    return getattr(closing.spec.spec.spec.monitor, field_name)


class Alarms:
    def __init__(
        self,
        *,
        database: Database,
        outbox: Outbox,
        catalog: ModelCatalog,
        settings: MonitorSettings,
        consumer_group: str,
    ) -> None:
        self.database = database
        self.outbox = outbox
        self.catalog = catalog
        self.settings = settings
        self.consumer_group = consumer_group
        self.states: LRU[tuple[str, int], VersionState] = LRU(settings.max_tracked_versions)
        """Alarm runs, read from PostgreSQL when a window of a version not held here closes."""

    async def state(self, model: str, version: int) -> VersionState:
        """A version's alarm run: in memory, or else as last committed (nothing stored: none yet)."""
        state = self.states.get((model, version))
        if state is not None:
            return state
        async with self.database.session() as session:
            stored = await storage.read_alarm_run(session=session, model=model, version=version)
        state = VersionState(*stored) if stored is not None else VersionState()
        self.states[(model, version)] = state
        return state

    async def judge(self, window: OpenWindow, now: float) -> Closing:
        """Judge a due window against its version's profile and advance the version's run; the
        window's span is started here and ended once the commit is written (`Closing.end_spans`)."""
        spec: pb.ModelSpecVersion | None = None
        info: VersionInfo | None = None
        try:
            spec = await self.catalog.spec(window.model)
            info = await self.catalog.version(window.model, window.version)
        except NotFound as error:
            log.warning(
                "closing a window of %s v%d without its spec: %s", window.model, window.version, error
            )
        state = await self.state(window.model, window.version)
        body = monitor_pb2.DriftWindow(
            window=time_window(window.start, window.end), sample_count=window.samples
        )
        drifted, consecutive, alarm = False, state.consecutive, False
        reference = info.reference if info is not None else None
        if spec is not None and reference is not None and window.counts is not None:
            monitor = spec.spec.spec.monitor
            rule = Judgement(
                method=monitor.method,
                threshold=monitor.threshold,
                min_samples=int(monitor.min_samples),
                p_value_correction=self.settings.p_value_correction,
                prediction_threshold=self.settings.prediction_drift_threshold,
            )
            result = reference.judge(window.counts, window.samples, rule)
            body.features.extend(result.features)
            body.statistics.extend(result.statistics)
            body.prediction_drift_score = result.prediction_drift
            body.judged = result.judged
            body.drifted = drifted = result.drifted
            consecutive, alarm = advance_run(
                consecutive,
                judged=result.judged,
                crossed=drifted,
                needed=int(monitor.consecutive_windows),
                last_alarm_at=state.last_alarm_at,
                now=now,
                cooldown_s=self.settings.alarm_cooldown_s,
                action=monitor.on_drift,
            )
        links = []
        for parent in window.links:
            context = parse_traceparent(parent)
            if context is not None:
                links.append(Link(context))
        span = tracer.start_span(
            f"drift window {window.model}",
            links=links,
            attributes={
                "mlops.model.name": window.model,
                "mlops.model.version": window.version,
                "mlops.window.start": utc(window.start).isoformat(),
                "mlops.window.end": utc(window.end).isoformat(),
                "mlops.window.samples": window.samples,
                "mlops.window.judged": body.judged,
                "mlops.window.drifted": drifted,
                "mlops.window.consecutive": consecutive,
                "mlops.drift.prediction_score": body.prediction_drift_score,
                **{f"mlops.drift.{f.method}.{f.feature}": f.score for f in body.features},
            },
        )
        return Closing(window, body, drifted, consecutive, alarm, spec, info, span)

    async def record(self, session: AsyncSession, closing: Closing, now: float) -> str | None:
        """Record a judged window and its version's run in the commit's transaction, with the
        DriftDetected it raises (inside the window's span); returns that event's id, None without an
        alarm."""
        window = closing.window
        await storage.close_window(
            session=session,
            consumer_group=self.consumer_group,
            window=window,
            drifted=closing.drifted,
            body=closing.body.SerializeToString(),
        )
        await storage.write_alarm_run(
            session=session,
            model=window.model,
            version=window.version,
            consecutive=closing.consecutive,
            alarm_at=now if closing.alarm else None,
        )
        labels = (window.model, str(window.version))
        for item in closing.body.statistics:
            prometheus.SERIES.labels(prometheus.DRIFT_SCORE, *labels, item.feature, item.method).set(
                item.score
            )
        prometheus.SERIES.labels(prometheus.PREDICTION_DRIFT, *labels).set(
            closing.body.prediction_drift_score
        )
        if not closing.alarm:
            return None
        assert closing.spec is not None
        monitor = closing.spec.spec.spec.monitor
        detected = monitoring_pb2.DriftDetected(
            model=window.model,
            version=window.version,
            window=closing.body.window,
            method=monitor.method,
            threshold=monitor.threshold,
            features=closing.body.features,
            prediction_drift_score=closing.body.prediction_drift_score,
            consecutive_windows=closing.consecutive,
            sample_count=window.samples,
            profile_sha256=window.profile_sha256,
            detected_at=timestamp(now),
        )
        detected.new_model_needed = closing.new_model
        cause = await self.outbox.add(session, detected)
        prometheus.SERIES.labels(prometheus.DRIFT_ALARMS, *labels).inc()
        trace.get_current_span().set_attribute("mlops.drift.event_id", cause)
        return cause

    def settle(self, closings: list[Closing], now: float) -> None:
        """Adopt the runs of windows whose closing is committed."""
        for closing in closings:
            window = closing.window
            # A state pushed out since it was judged is read back, as committed, when next needed.
            state = self.states.peek((window.model, window.version))
            if state is not None:
                state.consecutive = closing.consecutive
                if closing.alarm:
                    state.last_alarm_at = now
