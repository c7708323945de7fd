"""The open windows of the partitions this replica reads, in memory between commits.

Counted batches are merged into them on the event loop; rows of a window already closed are late
(counted for health and as late, never for drift). A window is due `window_grace_ms` after its end
once its partition has been read that far. `snapshot` takes, at one moment, everything the next
commit writes: the changed windows (copied), the due ones (taken out), the predictions counted
since the last snapshot and the offset to resume each partition at, so that what is committed
is exactly what those offsets produced. Reading and writing them is the core's (see `storage`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np

from mlops.db import Database
from services.monitor import prometheus
from services.monitor.counting import CountedBatch
from services.monitor.lru import LRU
from services.monitor.predictions import PredictionBatch, StagedPredictions
from services.monitor.settings import MonitorSettings


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


class OpenWindows:
    def __init__(self, *, database: Database, settings: MonitorSettings) -> None:
        self.database = database
        self.settings = settings
        self.windows: dict[tuple[str, int, int], OpenWindow] = {}
        self.closed: LRU[tuple[str, int], int] = LRU(settings.max_tracked_versions)
        """Per version, the start of its newest closed window: older rows are late. A version
        forgotten here has its next rows counted as new; the stored closed window is not reopened."""
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

    def restore(
        self,
        topic: str,
        *,
        windows: Iterable[OpenWindow],
        closed: dict[tuple[str, int], int],
        offsets: dict[int, int],
    ) -> None:
        """Adopt partitions' state as last committed: their open windows, the newest closed window of
        each version, and the offsets to resume at."""
        for window in windows:
            self.windows[(window.model, window.version, window.start)] = window
        self.closed.update(closed)
        for partition, offset in offsets.items():
            self.offsets[(topic, partition)] = offset

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

    def merge(self, counted: CountedBatch) -> None:
        """Add a counted batch's window deltas and predictions (on the event loop)."""
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
