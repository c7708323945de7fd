"""The monitor's rules, transport-neutral: counted batches in, judged windows, alarms and health out.

State lives in memory while a window is open and in PostgreSQL at every commit:

- `count_batch` (pure, CPU-bound, run off the event loop) turns one decoded batch into per-window
  count deltas, health rows and prediction rows; `merge` adds them to the open windows.
- `commit` writes, in ONE transaction, the open windows' counts, the new predictions, the consumed
  offsets of every partition, and every window that is due: its judgement, the version's alarm
  state and the events it raises (through the outbox). After a crash the consumer resumes at the
  stored offsets with exactly the counts that those offsets produced: nothing is counted twice.
- Each closed window gets a span linked to (some of) the traces of the batches counted in it;
  DriftDetected is written to the outbox inside that span. A retraining starts a trace of its own
  (`request retrain <model>`, where the data set is assembled and RetrainRequested written) whose
  root links to the window's span: the retrain's trace leads back to the drift that caused it.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link
from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession

from mlops.bus import Outbox
from mlops.bus.tracing import parse_traceparent
from mlops.db import Database
from mlops.errors import InvalidArgument, NotFound
from mlops.events.v1 import common_pb2, data_pb2, monitoring_pb2, training_pb2
from mlops.monitor.v1 import monitor_pb2
from mlops.registry.v1 import registry_pb2 as pb
from mlops.store import ArtifactStore
from mlops.tabular import read_table
from services.monitor import prometheus
from services.monitor.batch import BatchRows, InvalidBatch, predicted_classes
from services.monitor.clients import ModelCatalog, RegistryClient, VersionInfo
from services.monitor.health import VersionHealth, prediction_psi_classes, prediction_psi_values
from services.monitor.lru import LRU
from services.monitor.predictions import TIMES, PredictionBatch, StagedPredictions, copy_predictions
from services.monitor.reference import Judgement, Reference, advance_run
from services.monitor.settings import MonitorSettings
from services.monitor.tables import SCHEMA

log = logging.getLogger(__name__)
PRODUCTION_ALIAS = "production"
tracer = trace.get_tracer("mlops.monitor")

REQUESTED_BY = "mlops-monitor"


def _ts(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(round(seconds * 1e9))
    return stamp


def _time_window(start: float, end: float) -> common_pb2.TimeWindow:
    return common_pb2.TimeWindow(start=_ts(start), end=_ts(end))


def _dt(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


# --- counting (pure) -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """What counting a batch needs from the registry, looked up (and cached) beforehand."""

    rows: BatchRows
    window_seconds: int
    task: str
    versions: dict[int, VersionInfo]
    partition: int
    traceparent: str | None


@dataclass
class WindowDelta:
    model: str
    version: int
    start: int
    counts: np.ndarray | None
    samples: int


@dataclass
class HealthDelta:
    model: str
    version: int
    seconds: np.ndarray
    latency_us: np.ndarray
    failed: np.ndarray
    sampling_rate: float
    classes: np.ndarray | None
    n_classes: int
    values: np.ndarray | None


@dataclass
class CountedBatch:
    windows: list[WindowDelta] = field(default_factory=list)
    health: list[HealthDelta] = field(default_factory=list)
    predictions: list[PredictionBatch] = field(default_factory=list)
    rows: int = 0
    partition: int = 0
    traceparent: str | None = None
    model: str = ""
    window_seconds: int = 0
    references: dict[int, Reference | None] = field(default_factory=dict)
    latest: float = 0.0
    """The latest request time in the batch."""


def _column_order(rows: BatchRows, reference: Reference) -> np.ndarray:
    position = {name: i for i, name in enumerate(rows.feature_names)}
    missing = [name for name in reference.feature_names if name not in position]
    if missing:
        raise InvalidBatch(
            f"the batch lacks features of {rows.model}'s training profile: {', '.join(missing)}"
        )
    return np.asarray([position[name] for name in reference.feature_names], dtype=np.int64)


def count_batch(prepared: Prepared, *, store_predictions: bool) -> CountedBatch:
    """Count one batch: per (version, window) deltas on the reference slots, health rows, and the
    prediction rows kept for the ground-truth join. Pure and vectorised; run it in a worker thread."""
    rows = prepared.rows
    out = CountedBatch(
        rows=len(rows),
        partition=prepared.partition,
        traceparent=prepared.traceparent,
        model=rows.model,
        window_seconds=prepared.window_seconds,
    )
    if not len(rows):
        return out
    out.latest = float(rows.timestamps.max())
    classification = prepared.task == "classification"
    width = prepared.window_seconds
    starts = (np.floor(rows.timestamps / width) * width).astype(np.int64)
    seconds = np.floor(rows.timestamps).astype(np.int64)
    for version, info in prepared.versions.items():
        selected = rows.versions == version
        reference = info.reference
        out.references[version] = reference
        class_labels = list(info.version.signature.class_labels) or (
            reference.class_labels if reference else list(rows.class_labels)
        )
        sub_rows = _subset(rows, selected)
        classes = predicted_classes(sub_rows, class_labels) if classification else None
        values = None if classification else np.where(sub_rows.failed, np.nan, sub_rows.outputs[:, 0])
        out.health.append(
            HealthDelta(
                rows.model,
                version,
                seconds[selected],
                sub_rows.latency_us,
                sub_rows.failed,
                rows.sampling_rate,
                classes,
                len(class_labels),
                values,
            )
        )
        ok = ~sub_rows.failed
        matrix = None
        if reference is not None:
            matrix = sub_rows.features[:, _column_order(rows, reference)]
        version_starts = starts[selected]
        for start in np.unique(version_starts[ok]):
            in_window = ok & (version_starts == start)
            counts = None
            if reference is not None and matrix is not None:
                predicted = classes[in_window] if classes is not None else values[in_window]
                counts = reference.count(matrix[in_window], predicted)
            out.windows.append(WindowDelta(rows.model, version, int(start), counts, int(in_window.sum())))
        if store_predictions and ok.any():
            stored = matrix if matrix is not None else sub_rows.features
            times = sub_rows.timestamps[ok]
            request_ids = sub_rows.request_ids
            if not ok.all():
                request_ids = [request_ids[i] for i in np.flatnonzero(ok)]
            out.predictions.append(
                PredictionBatch.of(
                    model=rows.model,
                    version=version,
                    logged_at=_dt(float(times.min())),
                    request_ids=request_ids,
                    timestamps=times,
                    class_labels=class_labels if classification else None,
                    classes=classes[ok] if classes is not None else None,
                    predictions=values[ok] if values is not None else None,
                    features=stored[ok],
                )
            )
    return out


def _subset(rows: BatchRows, selected: np.ndarray) -> BatchRows:
    if selected.all():
        return rows
    index = np.flatnonzero(selected)
    return BatchRows(
        model=rows.model,
        feature_names=rows.feature_names,
        class_labels=rows.class_labels,
        sampling_rate=rows.sampling_rate,
        request_ids=[rows.request_ids[i] for i in index],
        versions=rows.versions[selected],
        timestamps=rows.timestamps[selected],
        latency_us=rows.latency_us[selected],
        failed=rows.failed[selected],
        features=rows.features[selected],
        outputs=rows.outputs[selected],
        labels=[rows.labels[i] for i in index],
        roles=rows.roles[selected],
    )


# --- state -----------------------------------------------------------------------------------------


@dataclass
class OpenWindow:
    model: str
    version: int
    start: int
    width: int
    partition: int
    counts: np.ndarray | None
    profile_sha256: str
    samples: int = 0
    links: list[str] = field(default_factory=list)
    dirty: bool = True

    @property
    def end(self) -> int:
        return self.start + self.width


@dataclass
class CommitPlan:
    now: float
    windows: list[OpenWindow]
    """Copies of the open windows changed since the last snapshot."""
    closing: list[OpenWindow]
    """Due windows, no longer in memory."""
    predictions: list[PredictionBatch]
    offsets: dict[tuple[str, int], int]
    late: dict[tuple[str, int, int], int] = field(default_factory=dict)
    """Rows per closed window that arrived after it closed."""
    staged: StagedPredictions | None = None
    """The transaction the first `staged.copied` predictions are already in."""


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
    dataset_version: int = 0
    dataset_note: str = ""
    committed: data_pb2.DataCommitted | None = None
    """The assembled data set version's commit, published with the retrain request."""
    retrain_span: trace.Span | None = None
    retrain_skipped: str = ""
    """Why no retrain follows the alarm (the version is a candidate, not what production serves)."""

    def end_spans(self) -> None:
        if self.retrain_span is not None:
            self.retrain_span.end()
        self.span.end()


class MonitorCore:
    def __init__(
        self,
        *,
        database: Database,
        outbox: Outbox,
        catalog: ModelCatalog,
        registry: RegistryClient,
        store: ArtifactStore,
        settings: MonitorSettings,
        consumer_group: str,
    ) -> None:
        self.database = database
        self.outbox = outbox
        self.catalog = catalog
        self.registry = registry
        self.store = store
        self.settings = settings
        self.consumer_group = consumer_group
        self.windows: dict[tuple[str, int, int], OpenWindow] = {}
        # Per-version state is keyed by the versions events name: each map holds at most
        # `max_tracked_versions`, the least recently used forgotten past that.
        tracked = settings.max_tracked_versions
        self.closed: LRU[tuple[str, int], int] = LRU(tracked)
        """Per version, the start of its newest closed window: older rows are late. A version
        forgotten here has its next rows counted as new; the stored closed window is not reopened."""
        self.states: LRU[tuple[str, int], VersionState] = LRU(tracked)
        """Alarm runs, read from PostgreSQL when a window of a version not held here closes."""
        self.health: LRU[tuple[str, int], VersionHealth] = LRU(tracked, on_evict=self._forget_health)
        self.live_metrics: LRU[tuple[str, int], dict[str, float]] = LRU(tracked)
        prometheus.SERIES.resize(settings.max_metric_series)
        self.pending_predictions: list[PredictionBatch] = []
        self.staging: StagedPredictions | None = None
        """The next commit's transaction, holding a prefix of `pending_predictions`."""
        self.offsets: dict[tuple[str, int], int] = {}
        """Next offset to read per (topic, partition), as far as the in-memory state goes."""
        self.partitions: set[int] = set()
        self.late: dict[tuple[str, int, int], int] = {}
        """Rows per closed window that arrived after it closed, not yet written."""
        self.caught_up: dict[int, bool] = {}
        """Per partition: read up to the broker's high watermark as last fetched."""
        self.watermarks: dict[int, float] = {}
        """Per partition: the latest request time read from it."""

    # --- restart --------------------------------------------------------------------------------

    async def load(self, topic: str, partitions: Iterable[int]) -> dict[int, int]:
        """Take over `partitions`: their open windows and alarm state from PostgreSQL, and the offsets
        to resume at (absent where none is stored)."""
        partitions = list(partitions)
        self.partitions.update(partitions)
        async with self.database.session() as session:
            rows = (
                await session.exec(
                    text(
                        f"SELECT model, version, extract(epoch FROM window_start)::bigint, "
                        f"extract(epoch FROM window_end)::bigint, partition, sample_count, counts, links, "
                        f"profile_sha256 FROM {SCHEMA}.windows WHERE consumer_group = :g AND NOT closed "
                        "AND partition = ANY(:p)"
                    ),
                    params={"g": self.consumer_group, "p": partitions},
                )
            ).all()
            for model, version, start, end, partition, samples, counts, links, sha in rows:
                array = np.frombuffer(counts, dtype=np.int64).copy() if counts else None
                self.windows[(model, version, start)] = OpenWindow(
                    model, version, start, end - start, partition, array, sha, samples, list(links), False
                )
            closed = (
                await session.exec(
                    text(
                        f"SELECT model, version, extract(epoch FROM max(window_start))::bigint "
                        f"FROM {SCHEMA}.windows WHERE consumer_group = :g AND closed AND partition = ANY(:p) "
                        "GROUP BY model, version"
                    ),
                    params={"g": self.consumer_group, "p": partitions},
                )
            ).all()
            self.closed.update({(m, v): s for m, v, s in closed})
            stored = (
                await session.exec(
                    text(
                        f"SELECT partition, next_offset FROM {SCHEMA}.offsets "
                        "WHERE consumer_group = :g AND topic = :t AND partition = ANY(:p)"
                    ),
                    params={"g": self.consumer_group, "t": topic, "p": partitions},
                )
            ).all()
        resume = {partition: offset for partition, offset in stored}
        for partition, offset in resume.items():
            self.offsets[(topic, partition)] = offset
        return resume

    async def _state(self, model: str, version: int) -> VersionState:
        """A version's alarm run: in memory, or else as last committed (nothing stored: none yet)."""
        state = self.states.get((model, version))
        if state is not None:
            return state
        async with self.database.session() as session:
            row = (
                await session.exec(
                    text(
                        f"SELECT consecutive, extract(epoch FROM last_alarm_at) FROM {SCHEMA}.version_state "
                        "WHERE model = :m AND version = :v"
                    ),
                    params={"m": model, "v": version},
                )
            ).first()
        state = VersionState(row[0], float(row[1]) if row[1] is not None else None) if row else VersionState()
        self.states[(model, version)] = state
        return state

    @staticmethod
    def _forget_health(key: tuple[str, int], _: VersionHealth) -> None:
        model, version = key
        prometheus.SERIES.remove(prometheus.ERROR_RATE, model, str(version))
        prometheus.SERIES.remove(prometheus.LATENCY_P99, model, str(version))

    def release(self, topic: str, partitions: Iterable[int]) -> None:
        """Forget partitions given to another replica (after a commit): their windows are theirs now."""
        gone = set(partitions)
        self.partitions -= gone
        for key in [k for k, w in self.windows.items() if w.partition in gone]:
            del self.windows[key]
        for partition in gone:
            self.offsets.pop((topic, partition), None)
            self.caught_up.pop(partition, None)
            self.watermarks.pop(partition, None)

    # --- ingest ---------------------------------------------------------------------------------

    async def prepare(self, rows: BatchRows, *, partition: int, traceparent: str | None) -> Prepared:
        """Registry look-ups for a batch (cached). An unknown model or version is the batch's fault."""
        spec = await self.catalog.spec(rows.model)
        body = spec.spec.spec
        versions: dict[int, VersionInfo] = {}
        for version in np.unique(rows.versions).tolist():
            try:
                versions[version] = await self.catalog.version(rows.model, version)
            except NotFound:
                raise InvalidBatch(f"model {rows.model!r} has no version {version} in the registry") from None
        return Prepared(
            rows=rows,
            window_seconds=max(int(body.monitor.window_seconds), 1),
            task=body.task,
            versions=versions,
            partition=partition,
            traceparent=traceparent,
        )

    def merge(self, counted: CountedBatch, *, now: float | None = None) -> None:
        """Add a counted batch to the open windows and the health state (on the event loop)."""
        now = time.time() if now is None else now
        for delta in counted.health:
            board = self.health.get((delta.model, delta.version))
            if board is None:
                board = self.health[(delta.model, delta.version)] = VersionHealth(
                    self.settings.health_horizon_s
                )
            board.add(
                delta.seconds,
                delta.latency_us,
                delta.failed,
                delta.sampling_rate,
                delta.classes,
                delta.n_classes,
                delta.values,
                now,
            )
        late = 0
        for delta in counted.windows:
            newest_closed = self.closed.get((delta.model, delta.version))
            if newest_closed is not None and delta.start <= newest_closed:
                late += delta.samples
                key = (delta.model, delta.version, delta.start)
                self.late[key] = self.late.get(key, 0) + delta.samples
                continue
            key = (delta.model, delta.version, delta.start)
            window = self.windows.get(key)
            reference = counted.references.get(delta.version)
            if window is None:
                window = self.windows[key] = OpenWindow(
                    delta.model,
                    delta.version,
                    delta.start,
                    counted.window_seconds,
                    counted.partition,
                    reference.empty() if reference is not None else None,
                    reference.sha256 if reference is not None else "",
                )
            if delta.counts is not None and window.counts is not None:
                window.counts += delta.counts
            window.samples += delta.samples
            if counted.traceparent and len(window.links) < self.settings.max_links_per_window:
                if counted.traceparent not in window.links:
                    window.links.append(counted.traceparent)
            window.dirty = True
        if late:
            prometheus.SERIES.labels(prometheus.LATE_ROWS, counted.model).inc(late)
        self.pending_predictions.extend(counted.predictions)
        if counted.latest > self.watermarks.get(counted.partition, 0.0):
            self.watermarks[counted.partition] = counted.latest
        prometheus.SERIES.labels(prometheus.ROWS_INGESTED, counted.model).inc(counted.rows)

    def due(self, now: float) -> list[OpenWindow]:
        """Windows to close: `window_grace_ms` past their end, and their partition read up to its end
        (or a row at least that late seen on it). A monitor catching up after a restart or an
        outage counts the backlog into its windows before judging them."""
        grace = self.settings.window_grace_ms / 1000

        def read_past(window: OpenWindow) -> bool:
            if self.caught_up.get(window.partition, False):
                return True
            return self.watermarks.get(window.partition, float("-inf")) >= window.end + grace

        return sorted(
            (w for w in self.windows.values() if w.end + grace <= now and read_past(w)),
            key=lambda w: (w.model, w.version, w.start),
        )

    # --- commit ---------------------------------------------------------------------------------

    def snapshot(self, now: float | None = None) -> CommitPlan:
        """What the next commit writes, taken at once on the event loop so that the counts, the
        predictions and the offsets agree: the dirty open windows (copied), the due windows (taken
        out of memory), the pending predictions and the offsets. Rows merged afterwards go to the
        next commit."""
        now = time.time() if now is None else now
        due = self.due(now)
        for window in due:
            del self.windows[(window.model, window.version, window.start)]
            key = (window.model, window.version)
            self.closed[key] = max(window.start, self.closed.get(key, window.start))
        dirty = [
            replace(w, counts=w.counts.copy() if w.counts is not None else None, links=list(w.links))
            for w in self.windows.values()
            if w.dirty
        ]
        for window in self.windows.values():
            window.dirty = False
        plan = CommitPlan(
            now, dirty, due, self.pending_predictions, dict(self.offsets), self.late, self.staging
        )
        self.pending_predictions = []
        self.late = {}
        self.staging = None
        return plan

    def stage(self) -> None:
        """Copy the predictions counted since the last snapshot into the next commit's transaction in
        the background (`StagedPredictions`); while a copy is in flight, the next one waits."""
        if not self.pending_predictions:
            return
        if self.staging is None:
            self.staging = StagedPredictions(self.database)
        if not self.staging.busy:
            self.staging.copy(self.pending_predictions[self.staging.copied :])

    async def discard_staged(self) -> None:
        """Roll back the staged transaction of a commit that will not happen (the ingest stopped)."""
        staging, self.staging = self.staging, None
        if staging is not None:
            await staging.discard()

    async def commit(self, *, now: float | None = None) -> int:
        """Snapshot and write at once (see `write`); returns the number of windows closed."""
        return await self.write(self.snapshot(now))

    async def write(self, plan: CommitPlan) -> int:
        """Write a snapshot's open windows, predictions and offsets, and close its due windows, in one
        transaction (the staged one, if predictions were copied ahead). May be retried with the same
        plan after a failure: the retry writes every prediction in a new transaction. Returns the
        windows closed."""
        staged, plan.staged = plan.staged, None
        try:
            return await self._write(plan, staged)
        except BaseException:
            if staged is not None:
                await staged.discard()
            raise

    async def _write(self, plan: CommitPlan, staged: StagedPredictions | None) -> int:
        now = plan.now
        closings = [await self._judge(window, now) for window in plan.closing]
        assembling = [
            c
            for c in closings
            if c.alarm and self._policy(c, "on_drift") == "retrain" and not await self._candidate_only(c)
        ]
        if assembling and self.settings.retrain_dataset != "latest" and plan.predictions:
            # The drifted windows' predictions must be in the table the data set is assembled from;
            # open windows, predictions and offsets make a consistent state on their own.
            async with self._transaction(staged) as (session, copied):
                await self._write_open_windows(session, [*plan.windows, *plan.closing])
                await self._write_predictions(session, plan.predictions[copied:])
                await self._write_offsets(session, plan.offsets)
            staged = None
            plan.predictions = []
        for closing in assembling:
            closing.retrain_span = self._retrain_span(closing)
            with trace.use_span(closing.retrain_span, end_on_exit=False):
                await self._choose_dataset(closing)
        try:
            async with self._transaction(staged) as (session, copied):
                await self._write_open_windows(session, [*plan.windows, *plan.closing])
                await self._write_predictions(session, plan.predictions[copied:])
                await self._write_offsets(session, plan.offsets)
                await self._write_late(session, plan.late)
                for closing in closings:
                    with trace.use_span(closing.span, end_on_exit=False):
                        await self._record_closing(session, closing, now)
        except BaseException:
            for closing in closings:
                closing.end_spans()
            raise
        for closing in closings:
            window = closing.window
            # A state pushed out since it was judged is read back, as committed, when next needed.
            state = self.states.peek((window.model, window.version))
            if state is not None:
                state.consecutive = closing.consecutive
                if closing.alarm:
                    state.last_alarm_at = now
            closing.end_spans()
        return len(closings)

    @contextlib.asynccontextmanager
    async def _transaction(self, staged: StagedPredictions | None) -> AsyncIterator[tuple[AsyncSession, int]]:
        """A commit's transaction and how many of its plan's predictions are in it already: the staged
        transaction, or a new one. On an error the caller discards the staged one."""
        if staged is None:
            async with self.database.transaction() as session:
                yield session, 0
            return
        session = await staged.session()
        yield session, staged.copied
        await staged.commit()

    async def _candidate_only(self, closing: Closing) -> bool:
        """True when the drifting version is a rollout's candidate while another one is in production:
        its drift is reported (and its rollout sees prediction drift), but retraining is asked for
        what production serves, so a candidate retrained on drifted data is not superseded by yet
        another retrain before it can be promoted."""
        model, version = closing.window.model, closing.window.version
        try:
            aliased = await self.registry.aliased_version(model, PRODUCTION_ALIAS)
        except Exception as error:  # the alarm stands; the retrain goes ahead as the policy says
            log.warning("could not read %s's production version: %s", model, error)
            return False
        if aliased is None or aliased.version == version:
            return False
        closing.retrain_skipped = f"v{version} is a candidate; production serves v{aliased.version}"
        return True

    def _retrain_span(self, closing: Closing) -> trace.Span:
        """The root of the retraining's trace, linked to the window that caused it: what follows
        (the data set, the request, the training, its evaluation and rollout) is a trace of its own
        that leads back to the drift window."""
        window = closing.window
        return tracer.start_span(
            f"request retrain {window.model}",
            context=otel_context.Context(),
            links=[Link(closing.span.get_span_context(), {"mlops.link.reason": "drift window"})],
            attributes={
                "mlops.model.name": window.model,
                "mlops.model.version": window.version,
                "mlops.window.start": _dt(window.start).isoformat(),
                "mlops.window.end": _dt(window.end).isoformat(),
            },
        )

    async def _judge(self, window: OpenWindow, now: float) -> Closing:
        spec: pb.ModelSpecVersion | None = None
        info: VersionInfo | None = None
        try:
            spec = await self.catalog.spec(window.model)
            info = await self.catalog.version(window.model, window.version)
        except NotFound as error:
            log.warning(
                "closing a window of %s v%d without its spec: %s", window.model, window.version, error
            )
        state = await self._state(window.model, window.version)
        body = monitor_pb2.DriftWindow(
            window=_time_window(window.start, window.end), sample_count=window.samples
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
                "mlops.window.start": _dt(window.start).isoformat(),
                "mlops.window.end": _dt(window.end).isoformat(),
                "mlops.window.samples": window.samples,
                "mlops.window.judged": body.judged,
                "mlops.window.drifted": drifted,
                "mlops.window.consecutive": consecutive,
                "mlops.drift.prediction_score": body.prediction_drift_score,
                **{f"mlops.drift.{f.method}.{f.feature}": f.score for f in body.features},
            },
        )
        return Closing(window, body, drifted, consecutive, alarm, spec, info, span)

    @staticmethod
    def _policy(closing: Closing, field_name: str) -> str:
        if closing.spec is None:
            return "none"
        return getattr(closing.spec.spec.spec.monitor, field_name)

    async def _write_open_windows(self, session: AsyncSession, rows: list[OpenWindow]) -> None:
        if not rows:
            return
        statement = text(
            f"INSERT INTO {SCHEMA}.windows (consumer_group, model, version, window_start, window_end, partition, sample_count, "
            "late_count, counts, links, profile_sha256, closed, drifted) VALUES (:g, :model, :version, :start, :end, "
            ":partition, :samples, 0, :counts, CAST(:links AS jsonb), :sha, false, false) "
            "ON CONFLICT (consumer_group, model, version, window_start) DO UPDATE SET sample_count = excluded.sample_count, "
            f"counts = excluded.counts, links = excluded.links WHERE NOT {SCHEMA}.windows.closed"
        )
        await session.exec(
            statement,
            params=[
                {
                    "g": self.consumer_group,
                    "model": w.model,
                    "version": w.version,
                    "start": _dt(w.start),
                    "end": _dt(w.end),
                    "partition": w.partition,
                    "samples": w.samples,
                    "counts": (w.counts if w.counts is not None else np.zeros(0, np.int64)).tobytes(),
                    "links": json.dumps(w.links),
                    "sha": w.profile_sha256,
                }
                for w in rows
            ],
        )

    async def _write_predictions(self, session: AsyncSession, predictions: list[PredictionBatch]) -> None:
        await copy_predictions(session, predictions)

    async def _write_late(self, session: AsyncSession, late: dict[tuple[str, int, int], int]) -> None:
        if not late:
            return
        await session.exec(
            text(
                f"UPDATE {SCHEMA}.windows SET late_count = late_count + :n WHERE consumer_group = :g "
                "AND model = :model AND version = :version AND window_start = :start AND closed"
            ),
            params=[
                {"n": n, "g": self.consumer_group, "model": m, "version": v, "start": _dt(start)}
                for (m, v, start), n in late.items()
            ],
        )

    async def _write_offsets(self, session: AsyncSession, offsets: dict[tuple[str, int], int]) -> None:
        if not offsets:
            return
        await session.exec(
            text(
                f"INSERT INTO {SCHEMA}.offsets (consumer_group, topic, partition, next_offset) "
                "VALUES (:g, :t, :p, :o) ON CONFLICT (consumer_group, topic, partition) "
                "DO UPDATE SET next_offset = excluded.next_offset"
            ),
            params=[
                {"g": self.consumer_group, "t": topic, "p": partition, "o": offset}
                for (topic, partition), offset in offsets.items()
            ],
        )

    async def _record_closing(self, session: AsyncSession, closing: Closing, now: float) -> None:
        window = closing.window
        await session.exec(
            text(
                f"UPDATE {SCHEMA}.windows SET closed = true, drifted = :drifted, body = :body, "
                "sample_count = :samples WHERE consumer_group = :g AND model = :model AND version = :version "
                # a late row of a version no longer tracked reopens its window in memory only
                "AND window_start = :start AND NOT closed"
            ),
            params={
                "drifted": closing.drifted,
                "body": closing.body.SerializeToString(),
                "samples": window.samples,
                "g": self.consumer_group,
                "model": window.model,
                "version": window.version,
                "start": _dt(window.start),
            },
        )
        await session.exec(
            text(
                f"INSERT INTO {SCHEMA}.version_state (model, version, consecutive, last_alarm_at, degraded_windows, "
                "live_metrics) VALUES (:model, :version, :consecutive, :alarm_at, 0, '{}') "
                "ON CONFLICT (model, version) DO UPDATE SET consecutive = excluded.consecutive, "
                f"last_alarm_at = coalesce(excluded.last_alarm_at, {SCHEMA}.version_state.last_alarm_at)"
            ),
            params={
                "model": window.model,
                "version": window.version,
                "consecutive": closing.consecutive,
                "alarm_at": _dt(now) if closing.alarm else None,
            },
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
            return
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
            detected_at=_ts(now),
        )
        cause = await self.outbox.add(session, detected)
        prometheus.SERIES.labels(prometheus.DRIFT_ALARMS, *labels).inc()
        span = trace.get_current_span()
        span.set_attribute("mlops.drift.event_id", cause)
        if monitor.on_drift != "retrain" or closing.retrain_skipped:
            if closing.retrain_skipped:
                span.set_attribute("mlops.retrain.skipped", closing.retrain_skipped)
            return
        drifted = [f.feature for f in closing.body.features if f.drifted]
        what = f"{monitor.method} drift on {len(drifted)} of {len(closing.body.features)} features"
        if closing.body.prediction_drift_score > self.settings.prediction_drift_threshold:
            what += f" and prediction drift {closing.body.prediction_drift_score:.3g}"
        run_start = window.start - (closing.consecutive - 1) * window.width
        if closing.retrain_span is None:
            closing.retrain_span = self._retrain_span(closing)
        with trace.use_span(closing.retrain_span, end_on_exit=False):
            retrain_id = await self._request_retrain(session, closing, cause, what, run_start, now)
        span.set_attribute("mlops.retrain.event_id", retrain_id)
        span.set_attribute("mlops.retrain.dataset_version", closing.dataset_version)

    async def _request_retrain(
        self, session: AsyncSession, closing: Closing, cause: str, what: str, run_start: float, now: float
    ) -> str:
        window = closing.window
        span = trace.get_current_span()
        span.set_attribute("mlops.drift.event_id", cause)
        if closing.committed is not None:
            await self.outbox.add(session, closing.committed)
        retrain = training_pb2.RetrainRequested(
            model=window.model,
            version=window.version,
            trigger=common_pb2.TRAINING_TRIGGER_DRIFT,
            reason=f"{what} for {closing.consecutive} windows" + closing.dataset_note,
            cause_event_id=cause,
            window=_time_window(run_start, window.end),
            dataset_version=closing.dataset_version,
            requested_by=REQUESTED_BY,
            requested_at=_ts(now),
        )
        retrain_id = await self.outbox.add(session, retrain)
        span.set_attributes(
            {"mlops.retrain.event_id": retrain_id, "mlops.retrain.dataset_version": closing.dataset_version}
        )
        return retrain_id

    # --- retraining data ------------------------------------------------------------------------

    async def _choose_dataset(self, closing: Closing) -> None:
        """Pick what the retrain trains on (see `retrain_dataset`), assembling a version if asked."""
        mode = self.settings.retrain_dataset
        if mode == "latest" or closing.spec is None or closing.info is None:
            return
        window = closing.window
        run_start = window.start - (closing.consecutive - 1) * window.width
        try:
            with tracer.start_as_current_span("assemble retraining data") as span:
                version = await self._assemble(closing, run_start, window.end)
                span.set_attribute("mlops.dataset.version", version.version if version else 0)
        except Exception as error:  # the retrain still goes ahead, on the latest version
            log.warning(
                "could not assemble retraining data for %s v%d: %s", window.model, window.version, error
            )
            closing.dataset_note = f"; assembling a data set failed ({error}), latest version used"
            return
        if version is not None:
            closing.dataset_version = version.version
            closing.dataset_note = (
                f"; on {version.dataset} v{version.version} assembled from the drifted windows"
            )

    async def _assemble(self, closing: Closing, start: float, end: float) -> pb.DatasetVersion | None:
        """A new data set version from the labelled predictions of [start, end), or None if too few."""
        assert closing.spec is not None and closing.info is not None
        window = closing.window
        body = closing.spec.spec.spec
        model_version = closing.info.version
        reference = closing.info.reference
        names = (
            reference.feature_names if reference is not None else list(model_version.signature.feature_names)
        )
        regression = body.task != "classification"
        async with self.database.session() as session:
            batches = (
                await session.exec(
                    text(
                        f"SELECT id, timestamps, width, features FROM {SCHEMA}.prediction_batches "
                        "WHERE model = :model AND version = :version AND logged_at >= :earliest "
                        "AND logged_at < :end ORDER BY id"
                    ),
                    params={
                        "model": window.model,
                        "version": window.version,
                        # A batch is filed under its earliest row; rows of the run may sit in a
                        # batch that began one window earlier.
                        "earliest": _dt(start - window.width),
                        "end": _dt(end),
                    },
                )
            ).all()
            stored = {
                batch_id: (
                    np.frombuffer(timestamps, dtype=TIMES),
                    np.frombuffer(features, dtype=np.float64).reshape(-1, width),
                )
                for batch_id, timestamps, width, features in batches
                if width == len(names)
            }
            requests = (
                (
                    await session.exec(
                        text(
                            f"SELECT batch_id, position, request_id FROM {SCHEMA}.prediction_requests "
                            # the range lets the BRIN index on batch_id narrow the scan
                            "WHERE batch_id BETWEEN :low AND :high AND batch_id = ANY(:ids) "
                            "ORDER BY batch_id, position"
                        ),
                        params={"low": min(stored), "high": max(stored), "ids": list(stored)},
                    )
                ).all()
                if stored
                else []
            )
            rows: dict[str, list[float]] = {}
            for batch_id, position, request_id in requests:
                timestamps, matrix = stored[batch_id]
                if start <= timestamps[position] < end and request_id not in rows:
                    rows[request_id] = matrix[position].tolist()
            truths = (
                await session.exec(
                    text(
                        f"SELECT request_id, label, value FROM {SCHEMA}.labels "
                        "WHERE model = :model AND request_id = ANY(:ids) ORDER BY id"
                    ),
                    params={"model": window.model, "ids": list(rows)},
                )
            ).all()
        labelled = []
        seen: set[str] = set()
        for request_id, label, value in truths:
            truth = value if regression else label
            if truth is None or request_id in seen:
                continue
            seen.add(request_id)
            labelled.append((rows[request_id], truth))
        span = trace.get_current_span()
        span.set_attribute("mlops.retrain.labelled_rows", len(labelled))
        if len(labelled) < self.settings.retrain_min_labelled_rows:
            if self.settings.retrain_dataset == "assembled":
                log.info(
                    "%s v%d: %d labelled rows in the drifted windows, fewer than %d; latest version used",
                    window.model,
                    window.version,
                    len(labelled),
                    self.settings.retrain_min_labelled_rows,
                )
            closing.dataset_note = (
                f"; {len(labelled)} labelled rows in the drifted windows "
                f"(fewer than {self.settings.retrain_min_labelled_rows}), latest data set version used"
            )
            return None
        parent = await self.registry.dataset_version(model_version.dataset, model_version.dataset_version)
        buffer = io.StringIO()
        label_column = body.label
        if self.settings.assembled_includes_parent:
            data = await self.store.get_bytes(parent.uri, parent.sha256)
            frame = await asyncio.to_thread(_read_frame, data, parent.format)
            columns = [*names, label_column]
            missing = [c for c in columns if c not in frame.columns]
            if missing:
                raise InvalidArgument(f"parent data set lacks columns {', '.join(missing)}")
            frame[columns].to_csv(buffer, index=False)
        else:
            csv.writer(buffer, lineterminator="\n").writerow([*names, label_column])
        writer = csv.writer(buffer, lineterminator="\n")
        for features, truth in labelled:
            writer.writerow([*(_csv_number(x) for x in features), truth])
        data = buffer.getvalue().encode()
        dataset = body.dataset
        ref = await self.store.put_bytes(f"datasets/{dataset}", "data.csv", data)
        labels = {
            "source": "mlops-monitor",
            "model": window.model,
            "model_version": str(window.version),
            "window_start": _dt(start).isoformat(),
            "window_end": _dt(end).isoformat(),
            "labelled_rows": str(len(labelled)),
        }
        row_count = data.count(b"\n") - 1
        recorded = await self.registry.record_dataset_version(
            pb.RecordDatasetVersionRequest(
                dataset=dataset,
                uri=ref.uri,
                sha256=ref.sha256,
                format="csv",
                row_count=row_count,
                parent_sha256=parent.sha256,
                committed_by=REQUESTED_BY,
                labels=labels,
            )
        )
        closing.committed = data_pb2.DataCommitted(
            dataset=dataset,
            uri=ref.uri,
            sha256=ref.sha256,
            format="csv",
            committed_by=REQUESTED_BY,
            row_count=row_count,
            parent_sha256=parent.sha256,
            labels=labels,
            committed_at=_ts(time.time()),
        )
        return recorded

    # --- queries --------------------------------------------------------------------------------

    async def window_seconds_of(self, model: str) -> int:
        spec = self.catalog.cached_spec(model)
        if spec is None:
            spec = await self.catalog.spec(model)
        return max(int(spec.spec.spec.monitor.window_seconds), 1)

    async def known(self, model: str) -> bool:
        if any(key[0] == model for key in self.health):
            return True
        try:
            await self.catalog.spec(model)
        except NotFound:
            return False
        return True

    async def get_health(self, request: monitor_pb2.GetHealthRequest) -> monitor_pb2.GetHealthResponse:
        if not request.model:
            raise InvalidArgument("GetHealthRequest.model is required")
        if request.version < 1:
            raise InvalidArgument(
                f"GetHealthRequest.version must be a version number (1 or more), got {request.version}"
            )
        self._check_window(request.window_seconds)
        if not await self.known(request.model):
            raise NotFound(f"model {request.model!r} is unknown to the monitor and the registry")
        width = request.window_seconds or await self.window_seconds_of(request.model)
        now = time.time()
        snapshot, sampled = self._snapshot(request.model, request.version, now - width, now)
        response = monitor_pb2.GetHealthResponse(health=snapshot, sample_count=sampled)
        if request.baseline_version:
            response.baseline_version = request.baseline_version
            drift = self._prediction_drift(
                request.model, request.version, request.baseline_version, now - width, now
            )
            if drift is not None:
                response.prediction_drift = drift
        return response

    async def get_model_health(
        self, request: monitor_pb2.GetModelHealthRequest
    ) -> monitor_pb2.GetModelHealthResponse:
        if not request.model:
            raise InvalidArgument("GetModelHealthRequest.model is required")
        self._check_window(request.window_seconds)
        if not await self.known(request.model):
            raise NotFound(f"model {request.model!r} is unknown to the monitor and the registry")
        width = request.window_seconds or await self.window_seconds_of(request.model)
        now = time.time()
        response = monitor_pb2.GetModelHealthResponse(model=request.model)
        for model, version in sorted(self.health):
            if model == request.model:
                response.versions.append(self._snapshot(model, version, now - width, now)[0])
        return response

    def _check_window(self, seconds: int) -> None:
        if seconds < 0 or seconds > self.settings.health_horizon_s:
            raise InvalidArgument(
                f"window_seconds must be from 0 (the spec's window) to {self.settings.health_horizon_s} "
                f"(MLOPS_MONITOR_HEALTH_HORIZON_S), got {seconds}"
            )

    def _snapshot(
        self, model: str, version: int, start: float, end: float
    ) -> tuple[common_pb2.HealthSnapshot, int]:
        snapshot = common_pb2.HealthSnapshot(version=version, window=_time_window(start, end))
        board = self.health.get((model, version))
        sampled = 0
        if board is not None:
            figures = board.figures(start, end)
            sampled = figures.sampled
            snapshot.request_count = figures.requests
            snapshot.error_count = figures.errors
            snapshot.error_rate = figures.error_rate
            snapshot.latency_p50_ms = figures.latency_p50_ms
            snapshot.latency_p99_ms = figures.latency_p99_ms
        snapshot.metrics.update(self.live_metrics.get((model, version), {}))
        return snapshot, sampled

    def _prediction_drift(
        self, model: str, version: int, baseline: int, start: float, end: float
    ) -> float | None:
        candidate_board = self.health.get((model, version))
        baseline_board = self.health.get((model, baseline))
        if candidate_board is None or baseline_board is None:
            return None
        minimum = self.settings.min_prediction_drift_samples
        candidate_classes = candidate_board.class_counts(start, end)
        baseline_classes = baseline_board.class_counts(start, end)
        if candidate_classes is not None and baseline_classes is not None:
            if candidate_classes.sum() < minimum or baseline_classes.sum() < minimum:
                return None
            size = max(candidate_classes.size, baseline_classes.size)
            return prediction_psi_classes(
                np.resize(candidate_classes, size), np.resize(baseline_classes, size)
            )
        candidate_values = candidate_board.values(start, end)
        baseline_values = baseline_board.values(start, end)
        if candidate_values.size < minimum or baseline_values.size < minimum:
            return None
        info = self.catalog.cached_version(model, baseline)
        if info is not None and info.reference is not None and info.reference.prediction_edges.size >= 2:
            edges = info.reference.prediction_edges
        else:
            edges = np.unique(np.quantile(baseline_values, np.linspace(0, 1, 11)))
        return prediction_psi_values(candidate_values, baseline_values, edges)

    def publish_gauges(self) -> None:
        """Error rate and p99 of every version over its model's window, for the dashboards."""
        now = time.time()
        for (model, version), board in list(self.health.items()):
            spec = self.catalog.cached_spec(model)
            width = max(int(spec.spec.spec.monitor.window_seconds), 1) if spec else 30
            figures = board.figures(now - width, now)
            prometheus.SERIES.labels(prometheus.ERROR_RATE, model, str(version)).set(figures.error_rate)
            prometheus.SERIES.labels(prometheus.LATENCY_P99, model, str(version)).set(
                figures.latency_p99_ms / 1000
            )
            board.expire(now)

    async def get_drift_status(
        self, request: monitor_pb2.GetDriftStatusRequest
    ) -> monitor_pb2.GetDriftStatusResponse:
        if not request.model:
            raise InvalidArgument("GetDriftStatusRequest.model is required")
        if request.version < 0 or request.window_limit < 0:
            raise InvalidArgument("version and window_limit must not be negative")
        limit = request.window_limit or 10
        async with self.database.session() as session:
            versions = (
                await session.exec(
                    text(
                        f"SELECT version, consecutive, extract(epoch FROM last_alarm_at), degraded_windows, "
                        f"extract(epoch FROM last_degradation_at), live_metrics FROM {SCHEMA}.version_state "
                        "WHERE model = :m AND (:v = 0 OR version = :v) ORDER BY version"
                    ),
                    params={"m": request.model, "v": request.version},
                )
            ).all()
            windows = (
                await session.exec(
                    text(
                        "SELECT version, body, profile_sha256, late_count FROM ("
                        "SELECT version, body, profile_sha256, late_count, row_number() OVER "
                        "(PARTITION BY version ORDER BY window_start DESC) AS n "
                        f"FROM {SCHEMA}.windows WHERE model = :m AND closed AND (:v = 0 OR version = :v)) w "
                        "WHERE n <= :limit ORDER BY version, n"
                    ),
                    params={"m": request.model, "v": request.version, "limit": limit},
                )
            ).all()
        if not versions and not windows and not await self.known(request.model):
            raise NotFound(f"model {request.model!r} is unknown to the monitor and the registry")
        spec = self.catalog.cached_spec(request.model)
        if spec is None:
            try:
                spec = await self.catalog.spec(request.model)
            except NotFound:
                spec = None
        monitor = spec.spec.spec.monitor if spec is not None else None
        response = monitor_pb2.GetDriftStatusResponse(model=request.model)
        by_version: dict[int, monitor_pb2.VersionDrift] = {}

        def entry(version: int) -> monitor_pb2.VersionDrift:
            if version not in by_version:
                by_version[version] = monitor_pb2.VersionDrift(
                    version=version,
                    method=monitor.method if monitor else "",
                    threshold=monitor.threshold if monitor else 0.0,
                )
            return by_version[version]

        for version, consecutive, last_alarm, degraded, last_degradation, live in versions:
            item = entry(version)
            item.consecutive_windows = consecutive
            item.degraded_windows = degraded
            if last_alarm is not None:
                item.last_alarm_at.CopyFrom(_ts(float(last_alarm)))
            if last_degradation is not None:
                item.last_degradation_at.CopyFrom(_ts(float(last_degradation)))
            item.live_metrics.update({k: float(v) for k, v in (live or {}).items()})
        for version, body, sha, late in windows:
            item = entry(version)
            window = monitor_pb2.DriftWindow.FromString(body)
            window.late_count = late
            item.windows.append(window)
            item.profile_sha256 = item.profile_sha256 or sha
        response.versions.extend(by_version[v] for v in sorted(by_version))
        return response


def _read_frame(data: bytes, data_format: str):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"data.{data_format}"
        path.write_bytes(data)
        return read_table(path, data_format)


def _csv_number(value: float) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else repr(float(value))
