"""What a drift alarm asks for: a retraining of what production serves, and the data to train on.

A retraining starts a trace of its own (`request retrain <model>`) whose root links to the drift
window's span: the retrain's trace leads back to the drift that caused it.

The monitor states one intent per retrain and records nothing itself. With `retrain_dataset` other
than "latest", the labelled predictions of the drifted windows are uploaded as a data set snapshot,
and the intent is that data committed to retrain the model (`DataCommitted` carrying a
`RetrainIntent`): the registry records it, and the trainer trains the model on that record. Otherwise
the intent is `RetrainRequested` on the latest version of the model's data set. A model trained
outside the platform (`training.external`) is not retrained: its alarm asks for a new model and the
version's state records it (`services.monitor.external`).
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import math
import time
from typing import TYPE_CHECKING

import numpy as np
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link
from sqlmodel.ext.asyncio.session import AsyncSession

from mlops.db import Database
from mlops.errors import InvalidArgument
from mlops.events.v1 import common_pb2, data_pb2, training_pb2
from mlops.outbox import Outbox
from mlops.store import ArtifactStore
from mlops.tabular import read_table
from services.monitor import storage
from services.monitor.alarms import Closing, policy
from services.monitor.external import new_model_reason
from services.monitor.predictions import TIMES
from services.monitor.settings import MonitorSettings
from services.monitor.times import time_window, timestamp, utc

if TYPE_CHECKING:  # the gRPC clients are handed in by the composition root
    from services.monitor.clients import RegistryClient

log = logging.getLogger(__name__)
tracer = trace.get_tracer("mlops.monitor")

PRODUCTION_ALIAS = "production"
REQUESTED_BY = "mlops-monitor"


class Retraining:
    def __init__(
        self,
        *,
        database: Database,
        outbox: Outbox,
        registry: RegistryClient,
        store: ArtifactStore,
        settings: MonitorSettings,
    ) -> None:
        self.database = database
        self.outbox = outbox
        self.registry = registry
        self.store = store
        self.settings = settings

    async def wanted(self, closing: Closing) -> bool:
        """True when the closing's alarm asks for a retrain by the model's policy, and the drifting
        version is what production serves (see `candidate_only`). For a model trained elsewhere the
        retrain becomes a request for a new model (`services.monitor.external`), nothing assembled."""
        return (
            closing.alarm
            and policy(closing, "on_drift") == "retrain"
            and not await self.candidate_only(closing)
        )

    async def candidate_only(self, closing: Closing) -> bool:
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

    def retrain_span(self, closing: Closing) -> trace.Span:
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
                "mlops.window.start": utc(window.start).isoformat(),
                "mlops.window.end": utc(window.end).isoformat(),
            },
        )

    async def follow_alarm(self, session: AsyncSession, closing: Closing, cause: str, now: float) -> None:
        """Write the RetrainRequested that a recorded alarm (`cause`, the DriftDetected's id) asks for
        by its policy, in the same transaction, within the window's span."""
        assert closing.spec is not None
        window = closing.window
        monitor = closing.spec.spec.spec.monitor
        span = trace.get_current_span()
        if monitor.on_drift != "retrain" or closing.retrain_skipped:
            if closing.retrain_skipped:
                span.set_attribute("mlops.retrain.skipped", closing.retrain_skipped)
            return
        drifted = [f.feature for f in closing.body.features if f.drifted]
        what = f"{monitor.method} drift on {len(drifted)} of {len(closing.body.features)} features"
        if closing.body.prediction_drift_score > self.settings.prediction_drift_threshold:
            what += f" and prediction drift {closing.body.prediction_drift_score:.3g}"
        if closing.new_model:
            reason = new_model_reason(window.model, f"{what} for {closing.consecutive} windows")
            await storage.write_new_model_needed(
                session=session, model=window.model, version=window.version, at=now, reason=reason
            )
            span.set_attribute("mlops.alarm.new_model_needed", True)
            log.warning("%s v%d: a new model is needed: %s", window.model, window.version, reason)
            return
        run_start = window.start - (closing.consecutive - 1) * window.width
        if closing.retrain_span is None:
            closing.retrain_span = self.retrain_span(closing)
        with trace.use_span(closing.retrain_span, end_on_exit=False):
            retrain_id = await self.request_retrain(session, closing, cause, what, run_start, now)
        span.set_attribute("mlops.retrain.event_id", retrain_id)

    async def request_retrain(
        self, session: AsyncSession, closing: Closing, cause: str, what: str, run_start: float, now: float
    ) -> str:
        """Write the one event that states the retrain; returns its id."""
        window = closing.window
        span = trace.get_current_span()
        span.set_attribute("mlops.drift.event_id", cause)
        reason = f"{what} for {closing.consecutive} windows" + closing.dataset_note
        if closing.committed is not None:
            committed = data_pb2.DataCommitted()
            committed.CopyFrom(closing.committed)
            committed.retrain.CopyFrom(
                data_pb2.RetrainIntent(
                    model=window.model,
                    model_version=window.version,
                    trigger=common_pb2.TRAINING_TRIGGER_DRIFT,
                    reason=reason,
                    cause_event_id=cause,
                    window=time_window(run_start, window.end),
                    requested_by=REQUESTED_BY,
                )
            )
            retrain_id = await self.outbox.add(session, committed)
            span.set_attributes(
                {"mlops.retrain.event_id": retrain_id, "mlops.retrain.dataset_sha256": committed.sha256}
            )
            return retrain_id
        retrain = training_pb2.RetrainRequested(
            model=window.model,
            version=window.version,
            trigger=common_pb2.TRAINING_TRIGGER_DRIFT,
            reason=reason,
            cause_event_id=cause,
            window=time_window(run_start, window.end),
            dataset_version=0,  # the latest, when the trainer handles it
            requested_by=REQUESTED_BY,
            requested_at=timestamp(now),
        )
        retrain_id = await self.outbox.add(session, retrain)
        span.set_attribute("mlops.retrain.event_id", retrain_id)
        return retrain_id

    async def choose_dataset(self, closing: Closing) -> None:
        """Pick what the retrain trains on (see `retrain_dataset`), assembling a version if asked."""
        mode = self.settings.retrain_dataset
        if mode == "latest" or closing.spec is None or closing.info is None:
            return
        window = closing.window
        run_start = window.start - (closing.consecutive - 1) * window.width
        try:
            with tracer.start_as_current_span("assemble retraining data") as span:
                committed = await self.assemble(closing, run_start, window.end)
                span.set_attribute("mlops.dataset.sha256", committed.sha256 if committed else "")
        except Exception as error:  # the retrain still goes ahead, on the latest version
            log.warning(
                "could not assemble retraining data for %s v%d: %s", window.model, window.version, error
            )
            closing.dataset_note = f"; assembling a data set failed ({error}), latest version used"
            return
        if committed is not None:
            closing.committed = committed
            closing.dataset_note = (
                f"; on {committed.dataset} {committed.sha256[:12]} assembled from the drifted windows"
            )

    async def assemble(self, closing: Closing, start: float, end: float) -> data_pb2.DataCommitted | None:
        """A snapshot of the labelled predictions of [start, end), uploaded, and the commit that names
        it; None if too few rows are labelled. Nothing is recorded here: the registry records it."""
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
            batches = await storage.read_prediction_batches(
                session=session,
                model=window.model,
                version=window.version,
                # A batch is filed under its earliest row; rows of the run may sit in a batch that
                # began one window earlier.
                earliest=start - window.width,
                end=end,
            )
            stored = {
                batch_id: (
                    np.frombuffer(timestamps, dtype=TIMES),
                    np.frombuffer(features, dtype=np.float64).reshape(-1, width),
                )
                for batch_id, timestamps, width, features in batches
                if width == len(names)
            }
            requests = await storage.read_request_ids(session=session, batch_ids=stored.keys())
            rows: dict[str, list[float]] = {}
            for batch_id, position, request_id in requests:
                timestamps, matrix = stored[batch_id]
                if start <= timestamps[position] < end and request_id not in rows:
                    rows[request_id] = matrix[position].tolist()
            truths = await storage.read_labels(session=session, model=window.model, request_ids=rows)
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
            "window_start": utc(start).isoformat(),
            "window_end": utc(end).isoformat(),
            "labelled_rows": str(len(labelled)),
        }
        return data_pb2.DataCommitted(
            dataset=dataset,
            uri=ref.uri,
            sha256=ref.sha256,
            format="csv",
            committed_by=REQUESTED_BY,
            row_count=data.count(b"\n") - 1,
            parent_sha256=parent.sha256,
            labels=labels,
            committed_at=timestamp(time.time()),
        )


def _read_frame(data: bytes, data_format: str):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"data.{data_format}"
        path.write_bytes(data)
        return read_table(path, data_format)


def _csv_number(value: float) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else repr(float(value))
