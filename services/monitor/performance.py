"""Live quality from ground truth: labels are stored as they arrive, joined with the logged predictions
by request id, summed per version and window, and judged against the spec's gate.

A label's window is the one in which it was joined (labels come long after their predictions, so
the window says when the monitor learnt how good the model was). A label whose prediction has not
been logged yet (or never will be, under sampling) waits, unmatched, for the retention period.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from opentelemetry import trace
from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession

from mlops.db import Database
from mlops.errors import InvalidArgument, NotFound
from mlops.events.v1 import common_pb2, monitoring_pb2, training_pb2
from mlops.outbox import Outbox
from services.monitor import prometheus, storage
from services.monitor.core import MonitorCore
from services.monitor.external import asks_for_new_model, new_model_reason
from services.monitor.predictions import class_at, value_at
from services.monitor.reference import advance_run
from services.monitor.retraining import REQUESTED_BY
from services.monitor.settings import MonitorSettings
from services.monitor.tables import SCHEMA
from services.monitor.times import time_window, timestamp, utc

if TYPE_CHECKING:  # the gRPC clients are handed in by the composition root
    from services.monitor.clients import ModelCatalog

log = logging.getLogger(__name__)
tracer = trace.get_tracer("mlops.monitor")

JOIN_BATCH = 5_000
LIVE_METRICS = frozenset({"accuracy", "error_rate", "rmse", "mae", "r2"})
"""What `live_metrics` measures (their directions: `mlops.measures`); a gate on another metric is not
judged live."""


@dataclass
class Sums:
    labelled: int = 0
    correct: int = 0
    sse: float = 0.0
    sae: float = 0.0
    truth: float = 0.0
    truth_squared: float = 0.0


@dataclass
class Bound:
    metric: str
    bound: float
    comparison: int

    def crossed(self, value: float) -> bool:
        if self.comparison == common_pb2.COMPARISON_GREATER_OR_EQUAL:
            return value < self.bound
        return value > self.bound


def live_metrics(task: str, sums: Sums) -> dict[str, float]:
    """accuracy and error_rate (classification); rmse, mae and r2 (regression)."""
    n = sums.labelled
    if n == 0:
        return {}
    if task == "classification":
        accuracy = sums.correct / n
        return {"accuracy": accuracy, "error_rate": 1.0 - accuracy}
    metrics = {"rmse": math.sqrt(sums.sse / n), "mae": sums.sae / n}
    variance = sums.truth_squared - sums.truth**2 / n
    if variance > 0:
        metrics["r2"] = 1.0 - sums.sse / variance
    return metrics


def gate_bound(gate) -> Bound | None:
    """The gate's bound on a metric the monitor measures live; None if its metric is not one."""
    metric = gate.metric
    if metric not in LIVE_METRICS:
        return None
    if gate.HasField("min"):
        return Bound(metric, gate.min, common_pb2.COMPARISON_GREATER_OR_EQUAL)
    if gate.HasField("max"):
        return Bound(metric, gate.max, common_pb2.COMPARISON_LESS_OR_EQUAL)
    return None


class PerformanceTracker:
    def __init__(
        self,
        *,
        database: Database,
        outbox: Outbox,
        catalog: ModelCatalog,
        core: MonitorCore,
        settings: MonitorSettings,
    ) -> None:
        self.database = database
        self.outbox = outbox
        self.catalog = catalog
        self.core = core
        self.settings = settings
        self._last_retention = 0.0

    async def record_truth(
        self, event: monitoring_pb2.GroundTruthLogged, *, event_time: str, session: AsyncSession
    ) -> None:
        """Store one label (inside the consumer's inbox transaction)."""
        if not event.model:
            raise InvalidArgument("GroundTruthLogged.model is required")
        if not event.request_id:
            raise InvalidArgument("GroundTruthLogged.request_id is required")
        kind = event.WhichOneof("truth")
        if kind is None:
            raise InvalidArgument(
                "GroundTruthLogged needs a truth: `label` (classification) or `value` (regression)"
            )
        if kind == "value" and not math.isfinite(event.value):
            raise InvalidArgument(f"GroundTruthLogged.value must be a finite number, got {event.value}")
        # PostgreSQL stores no NUL in text: refused here, not retried against the database.
        for name in ("model", "request_id", "label"):
            if "\0" in getattr(event, name):
                raise InvalidArgument(
                    f"GroundTruthLogged.{name} ({getattr(event, name)[:64]!r}) has a NUL character"
                )
        observed = self._observed_at(event, event_time)
        spec = await self.catalog.spec(event.model)  # NotFound: the model does not exist
        task = spec.spec.spec.task
        if task == "classification" and kind != "label":
            raise InvalidArgument(f"{event.model} is a classification model: send the truth as `label`")
        if task == "regression" and kind != "value":
            raise InvalidArgument(f"{event.model} is a regression model: send the truth as `value`")
        await session.exec(
            text(
                f"INSERT INTO {SCHEMA}.labels (model, request_id, label, value, observed_at, matched) "
                "VALUES (:model, :request_id, :label, :value, :observed, false)"
            ),
            params={
                "model": event.model,
                "request_id": event.request_id,
                "label": event.label if kind == "label" else None,
                "value": event.value if kind == "value" else None,
                "observed": observed,
            },
        )

    def _observed_at(self, event: monitoring_pb2.GroundTruthLogged, event_time: str) -> datetime:
        """When the truth was observed: `observed_at`, checked as the inference logs' request times
        are (after the epoch, at most `max_clock_skew_s` ahead), or else the envelope's `ce_time`."""
        if not event.HasField("observed_at"):
            try:
                return _parse_time(event_time)
            except ValueError:
                raise InvalidArgument(
                    f"ce_time {event_time!r} is not an RFC 3339 time (and observed_at is not set)"
                ) from None
        stamp = event.observed_at
        if not 0 <= stamp.nanos < 1_000_000_000:
            raise InvalidArgument(
                f"GroundTruthLogged.observed_at nanos={stamp.nanos}; nanos run from 0 to 999999999"
            )
        if stamp.seconds <= 0:
            raise InvalidArgument(
                f"GroundTruthLogged.observed_at seconds={stamp.seconds} is not after 1970-01-01"
            )
        ahead = stamp.seconds - time.time()
        if ahead > self.settings.max_clock_skew_s:
            raise InvalidArgument(
                f"GroundTruthLogged.observed_at seconds={stamp.seconds} is {ahead:.0f} s ahead of the "
                f"monitor's clock (at most {self.settings.max_clock_skew_s:g} s: MLOPS_MONITOR_MAX_CLOCK_SKEW_S)"
            )
        return stamp.ToDatetime(tzinfo=UTC)

    async def tick(self, now: float | None = None) -> None:
        """Join pending labels, close due performance windows, and apply retention."""
        now = time.time() if now is None else now
        await self.join(now)
        await self.close_due(now)
        if now - self._last_retention > 60:
            await self.apply_retention(now)
            self._last_retention = now

    async def join(self, now: float) -> int:
        async with self.database.transaction() as session:
            rows = (
                await session.exec(
                    text(
                        "SELECT l.id, l.model, l.label, l.value, b.version, b.class_labels, "
                        "substring(b.classes FROM 4 * r.position + 1 FOR 4), "
                        "substring(b.predictions FROM 8 * r.position + 1 FOR 8) "
                        f"FROM {SCHEMA}.labels l JOIN {SCHEMA}.prediction_requests r ON r.request_id = l.request_id "
                        f"JOIN {SCHEMA}.prediction_batches b ON b.id = r.batch_id AND b.model = l.model "
                        "WHERE NOT l.matched AND l.received_at > :since "
                        "ORDER BY l.id LIMIT :n FOR UPDATE OF l SKIP LOCKED"
                    ),
                    params={"n": JOIN_BATCH, "since": utc(now - self.settings.label_match_window_s)},
                )
            ).all()
            if not rows:
                return 0
            sums: dict[tuple[str, int], Sums] = defaultdict(Sums)
            for _, model, label, value, version, class_labels, class_code, value_code in rows:
                predicted_label, predicted_value = class_at(class_labels, class_code), value_at(value_code)
                item = sums[(model, version)]
                item.labelled += 1
                if label is not None:
                    item.correct += int(label == predicted_label)
                elif value is not None and predicted_value is not None:
                    error = predicted_value - value
                    item.sse += error * error
                    item.sae += abs(error)
                    item.truth += value
                    item.truth_squared += value * value
            for (model, version), item in sums.items():
                width = await self._window_seconds(model)
                start = math.floor(now / width) * width
                await session.exec(
                    text(
                        f"INSERT INTO {SCHEMA}.performance_windows (model, version, window_start, window_end, "
                        "labelled, correct, sum_squared_error, sum_absolute_error, sum_truth, sum_truth_squared, "
                        "closed, metrics) VALUES (:m, :v, :start, :end, :n, :c, :sse, :sae, :t, :t2, false, '{}') "
                        "ON CONFLICT (model, version, window_start) DO UPDATE SET "
                        "labelled = performance_windows.labelled + excluded.labelled, "
                        "correct = performance_windows.correct + excluded.correct, "
                        "sum_squared_error = performance_windows.sum_squared_error + excluded.sum_squared_error, "
                        "sum_absolute_error = performance_windows.sum_absolute_error + excluded.sum_absolute_error, "
                        "sum_truth = performance_windows.sum_truth + excluded.sum_truth, "
                        "sum_truth_squared = performance_windows.sum_truth_squared + excluded.sum_truth_squared"
                    ),
                    params={
                        "m": model,
                        "v": version,
                        "start": utc(start),
                        "end": utc(start + width),
                        "n": item.labelled,
                        "c": item.correct,
                        "sse": item.sse,
                        "sae": item.sae,
                        "t": item.truth,
                        "t2": item.truth_squared,
                    },
                )
            ids = sorted({row[0] for row in rows})
            await session.exec(
                text(f"UPDATE {SCHEMA}.labels SET matched = true WHERE id = ANY(:ids)"), params={"ids": ids}
            )
        return len(rows)

    async def close_due(self, now: float) -> int:
        grace = self.settings.window_grace_ms / 1000
        closed = 0
        async with self.database.transaction() as session:
            rows = (
                await session.exec(
                    text(
                        "SELECT model, version, extract(epoch FROM window_start), extract(epoch FROM window_end), "
                        "labelled, correct, sum_squared_error, sum_absolute_error, sum_truth, sum_truth_squared "
                        f"FROM {SCHEMA}.performance_windows WHERE NOT closed AND window_end <= :due "
                        "ORDER BY model, version, window_start FOR UPDATE SKIP LOCKED"
                    ),
                    params={"due": utc(now - grace)},
                )
            ).all()
            for model, version, start, end, *figures in rows:
                await self._close(session, model, version, float(start), float(end), Sums(*figures), now)
                closed += 1
        return closed

    async def _close(
        self,
        session: AsyncSession,
        model: str,
        version: int,
        start: float,
        end: float,
        sums: Sums,
        now: float,
    ) -> None:
        try:
            spec = await self.catalog.spec(model)
        except NotFound:
            spec = None
        task = spec.spec.spec.task if spec is not None else "classification"
        metrics = live_metrics(task, sums)
        state = (
            await session.exec(
                text(
                    f"SELECT degraded_windows, extract(epoch FROM last_degradation_at) FROM {SCHEMA}.version_state "
                    "WHERE model = :m AND version = :v FOR UPDATE"
                ),
                params={"m": model, "v": version},
            )
        ).first()
        degraded, last_alarm = (state[0], state[1]) if state else (0, None)
        bound = gate_bound(spec.spec.spec.gate) if spec is not None else None
        alarm = False
        if bound is not None and bound.metric in metrics:
            degraded, alarm = advance_run(
                degraded,
                judged=sums.labelled >= self.settings.min_labels_per_window,
                crossed=bound.crossed(metrics[bound.metric]),
                needed=int(spec.spec.spec.monitor.consecutive_windows),
                last_alarm_at=float(last_alarm) if last_alarm is not None else None,
                now=now,
                cooldown_s=self.settings.alarm_cooldown_s,
                action=spec.spec.spec.monitor.on_degradation,
            )
        await session.exec(
            text(
                f"UPDATE {SCHEMA}.performance_windows SET closed = true, metrics = CAST(:metrics AS jsonb) "
                "WHERE model = :m AND version = :v AND window_start = :start"
            ),
            params={"metrics": json.dumps(metrics), "m": model, "v": version, "start": utc(start)},
        )
        await session.exec(
            text(
                f"INSERT INTO {SCHEMA}.version_state (model, version, consecutive, degraded_windows, "
                "last_degradation_at, live_metrics) VALUES (:m, :v, 0, :d, :at, CAST(:metrics AS jsonb)) "
                "ON CONFLICT (model, version) DO UPDATE SET degraded_windows = excluded.degraded_windows, "
                f"last_degradation_at = coalesce(excluded.last_degradation_at, {SCHEMA}.version_state.last_degradation_at), "
                "live_metrics = excluded.live_metrics"
            ),
            params={
                "m": model,
                "v": version,
                "d": degraded,
                "at": utc(now) if alarm else None,
                "metrics": json.dumps(metrics),
            },
        )
        self.core.live_metrics[(model, version)] = metrics
        for name, value in metrics.items():
            prometheus.SERIES.labels(prometheus.LIVE_METRIC, model, str(version), name).set(value)
        if not alarm:
            return
        assert bound is not None and spec is not None
        try:
            baseline = (await self.catalog.version(model, version)).version.metrics.get(bound.metric, 0.0)
        except NotFound:
            baseline = 0.0
        window = time_window(start, end)
        with tracer.start_as_current_span(
            f"performance window {model}",
            attributes={
                "mlops.model.name": model,
                "mlops.model.version": version,
                "mlops.window.start": utc(start).isoformat(),
                "mlops.window.end": utc(end).isoformat(),
                f"mlops.live.{bound.metric}": metrics[bound.metric],
            },
        ):
            degradation = monitoring_pb2.PerformanceDegraded(
                model=model,
                version=version,
                window=window,
                metric=bound.metric,
                observed=metrics[bound.metric],
                bound=bound.bound,
                comparison=bound.comparison,
                baseline=baseline,
                sample_count=sums.labelled,
                consecutive_windows=degraded,
                detected_at=timestamp(now),
            )
            side = ">=" if bound.comparison == common_pb2.COMPARISON_GREATER_OR_EQUAL else "<="
            what = (
                f"live {bound.metric} {metrics[bound.metric]:.4g} outside the gate's bound "
                f"({side} {bound.bound:g}) for {degraded} windows"
            )
            new_model = asks_for_new_model(spec, spec.spec.spec.monitor.on_degradation)
            degradation.new_model_needed = new_model
            cause = await self.outbox.add(session, degradation)
            prometheus.SERIES.labels(prometheus.DEGRADATION_ALARMS, model, str(version)).inc()
            if new_model:
                reason = new_model_reason(model, what)
                await storage.write_new_model_needed(
                    session=session, model=model, version=version, at=now, reason=reason
                )
                trace.get_current_span().set_attribute("mlops.alarm.new_model_needed", True)
                log.warning("%s v%d: a new model is needed: %s", model, version, reason)
            elif spec.spec.spec.monitor.on_degradation == "retrain":
                await self.outbox.add(
                    session,
                    training_pb2.RetrainRequested(
                        model=model,
                        version=version,
                        trigger=common_pb2.TRAINING_TRIGGER_DEGRADATION,
                        reason=what,
                        cause_event_id=cause,
                        window=window,
                        dataset_version=0,
                        requested_by=REQUESTED_BY,
                        requested_at=timestamp(now),
                    ),
                )

    async def apply_retention(self, now: float) -> None:
        """Predictions and labels after `prediction_retention_hours`, closed windows after
        `window_retention_days`."""
        cutoff = utc(now - self.settings.prediction_retention_hours * 3600)
        async with self.database.transaction() as session:
            await session.exec(
                text(
                    f"WITH gone AS (DELETE FROM {SCHEMA}.prediction_batches WHERE logged_at < :c RETURNING id) "
                    f"DELETE FROM {SCHEMA}.prediction_requests WHERE batch_id BETWEEN "
                    "(SELECT min(id) FROM gone) AND (SELECT max(id) FROM gone) AND batch_id IN (SELECT id FROM gone)"
                ),
                params={"c": cutoff},
            )
            await session.exec(
                text(f"DELETE FROM {SCHEMA}.labels WHERE received_at < :c"), params={"c": cutoff}
            )
            history = utc(now - self.settings.window_retention_days * 86400)
            await session.exec(
                text(f"DELETE FROM {SCHEMA}.windows WHERE closed AND window_end < :c"), params={"c": history}
            )
            await session.exec(
                text(f"DELETE FROM {SCHEMA}.performance_windows WHERE closed AND window_end < :c"),
                params={"c": history},
            )

    async def _window_seconds(self, model: str) -> int:
        try:
            return await self.core.window_seconds_of(model)
        except NotFound:
            return 30


def _parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    # CloudEvents times carry their offset; one without is read as UTC, as PostgreSQL would store it.
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
