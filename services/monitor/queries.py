"""What the monitor answers: live health per version (in memory, within the deployer's tick), the
drift status as committed, and the gauges the dashboards read.

Health comes from every logged row, failed ones included, kept per second over
`health_horizon_s` for each tracked version (an LRU over the versions events name); the live
metrics from ground truth are put here by the performance tracker.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from mlops.db import Database
from mlops.errors import InvalidArgument, NotFound
from mlops.events.v1 import common_pb2
from mlops.monitor.v1 import monitor_pb2
from services.monitor import prometheus, storage
from services.monitor.counting import HealthDelta
from services.monitor.external import show_new_model
from services.monitor.health import VersionHealth, prediction_psi_classes, prediction_psi_values
from services.monitor.lru import LRU
from services.monitor.settings import MonitorSettings
from services.monitor.times import time_window, timestamp

if TYPE_CHECKING:  # the gRPC clients are handed in by the composition root
    from services.monitor.clients import ModelCatalog


class Queries:
    def __init__(self, *, database: Database, catalog: ModelCatalog, settings: MonitorSettings) -> None:
        self.database = database
        self.catalog = catalog
        self.settings = settings
        tracked = settings.max_tracked_versions
        self.health: LRU[tuple[str, int], VersionHealth] = LRU(tracked, on_evict=_forget_health)
        self.live_metrics: LRU[tuple[str, int], dict[str, float]] = LRU(tracked)

    def add_health(self, deltas: list[HealthDelta], now: float) -> None:
        """Add a counted batch's health rows (on the event loop)."""
        for delta in deltas:
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
        snapshot = common_pb2.HealthSnapshot(version=version, window=time_window(start, end))
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
            versions = await storage.read_version_states(
                session=session, model=request.model, version=request.version
            )
            windows = await storage.read_closed_windows(
                session=session, model=request.model, version=request.version, limit=limit
            )
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

        for version, consecutive, last_alarm, degraded, last_degradation, live, new_at, why in versions:
            item = entry(version)
            if new_at is not None:
                show_new_model(item, timestamp(float(new_at)), why or "")
            item.consecutive_windows = consecutive
            item.degraded_windows = degraded
            if last_alarm is not None:
                item.last_alarm_at.CopyFrom(timestamp(float(last_alarm)))
            if last_degradation is not None:
                item.last_degradation_at.CopyFrom(timestamp(float(last_degradation)))
            item.live_metrics.update({k: float(v) for k, v in (live or {}).items()})
        for version, body, sha, late in windows:
            item = entry(version)
            window = monitor_pb2.DriftWindow.FromString(body)
            window.late_count = late
            item.windows.append(window)
            item.profile_sha256 = item.profile_sha256 or sha
        response.versions.extend(by_version[v] for v in sorted(by_version))
        return response


def _forget_health(key: tuple[str, int], _: VersionHealth) -> None:
    model, version = key
    prometheus.SERIES.remove(prometheus.ERROR_RATE, model, str(version))
    prometheus.SERIES.remove(prometheus.LATENCY_P99, model, str(version))
