"""The prediction store: what the ground-truth join and assembled data sets read back.

One `prediction_batches` row per version per logged batch holds that batch's per-row columns as
packed big-endian arrays (bytea, the byte order of PostgreSQL's float8send and int4send): nothing
is built or parsed element by element on either side. The request ids go to `prediction_requests`,
one narrow row per prediction under a hash index, which is what a label is looked up by; the
batch's row number there locates its prediction and features. Both are written with COPY in the
transaction that commits the window state and offsets they came from.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import numpy as np

from services.monitor.tables import SCHEMA

TIMES = np.dtype(">f8")
"""`timestamps`: request times, seconds since the epoch."""
CLASSES = np.dtype(">i4")
"""`classes`: index of each row's predicted class in `class_labels`, -1 where none."""
VALUES = np.dtype(">f8")
"""`predictions`: each row's predicted value (regression)."""

BATCH_COLUMNS = (
    "id",
    "model",
    "version",
    "logged_at",
    "timestamps",
    "class_labels",
    "classes",
    "predictions",
    "width",
    "features",
)


@dataclass(frozen=True)
class PredictionBatch:
    """The stored predictions of one version from one logged batch, encoded for COPY."""

    model: str
    version: int
    logged_at: datetime
    """The earliest request time in the batch."""
    request_ids: list[str]
    positions: range | list[int]
    """Row of each request id in the batch: its first row where an id repeats."""
    timestamps: bytes
    class_labels: list[str] | None
    classes: bytes | None
    predictions: bytes | None
    width: int
    features: bytes
    """The input rows in the profile's feature order, float64 in machine order, row-major."""

    @classmethod
    def of(
        cls,
        *,
        model: str,
        version: int,
        logged_at: datetime,
        request_ids: list[str],
        timestamps: np.ndarray,
        class_labels: list[str] | None,
        classes: np.ndarray | None,
        predictions: np.ndarray | None,
        features: np.ndarray,
    ) -> PredictionBatch:
        positions: range | list[int] = range(len(request_ids))
        if len(set(request_ids)) < len(request_ids):
            first: dict[str, int] = {}
            for position, request_id in enumerate(request_ids):
                first.setdefault(request_id, position)
            request_ids, positions = list(first), list(first.values())
        return cls(
            model=model,
            version=version,
            logged_at=logged_at,
            request_ids=request_ids,
            positions=positions,
            timestamps=timestamps.astype(TIMES).tobytes(),
            class_labels=class_labels,
            classes=classes.astype(CLASSES).tobytes() if classes is not None else None,
            predictions=predictions.astype(VALUES).tobytes() if predictions is not None else None,
            width=features.shape[1],
            features=np.ascontiguousarray(features, dtype=np.float64).tobytes(),
        )


async def copy_predictions(connection: asyncpg.Connection, batches: list[PredictionBatch]) -> None:
    """COPY `batches` and their request ids, inside the caller's transaction."""
    if not batches:
        return
    ids = [
        row[0]
        for row in await connection.fetch(
            "SELECT nextval($1::regclass) FROM generate_series(1, $2)",
            f"{SCHEMA}.prediction_batches_id_seq",
            len(batches),
        )
    ]
    await connection.copy_records_to_table(
        "prediction_batches",
        schema_name=SCHEMA,
        columns=BATCH_COLUMNS,
        records=[
            (
                batch_id,
                b.model,
                b.version,
                b.logged_at,
                b.timestamps,
                b.class_labels,
                b.classes,
                b.predictions,
                b.width,
                b.features,
            )
            for batch_id, b in zip(ids, batches, strict=True)
        ],
    )
    await connection.copy_records_to_table(
        "prediction_requests",
        schema_name=SCHEMA,
        columns=("request_id", "batch_id", "position"),
        records=_request_rows(ids, batches),
    )


def _request_rows(ids: list[int], batches: list[PredictionBatch]) -> Iterator[tuple[str, int, int]]:
    return itertools.chain.from_iterable(
        zip(batch.request_ids, itertools.repeat(batch_id), batch.positions)
        for batch_id, batch in zip(ids, batches, strict=True)
    )


def class_at(class_labels: list[str] | None, code: bytes | None) -> str | None:
    """The predicted class of one row, from its `classes` element (`substring` of 4 bytes)."""
    if not class_labels or not code:
        return None
    index = int.from_bytes(code, "big", signed=True)
    return class_labels[index] if 0 <= index < len(class_labels) else None


def value_at(code: bytes | None) -> float | None:
    """The predicted value of one row, from its `predictions` element (`substring` of 8 bytes)."""
    if not code:
        return None
    return float(np.frombuffer(code, dtype=VALUES)[0])
