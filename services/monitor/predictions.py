"""The prediction store: what the ground-truth join and assembled data sets read back.

One `prediction_batches` row per version per logged batch holds that batch's per-row columns as
packed big-endian arrays (bytea, the byte order of PostgreSQL's float8send and int4send): nothing
is built or parsed element by element on either side. The request ids go to `prediction_requests`,
one narrow row per prediction under a hash index, which is what a label is looked up by; the
batch's row number there locates its prediction and features. Both are written with COPY in the
transaction that commits the window state and offsets they came from; `StagedPredictions` opens
that transaction early and copies into it while the next records are counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import numpy as np
from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession

from mlops.db import Database
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


async def copy_predictions(session: AsyncSession, batches: list[PredictionBatch]) -> None:
    """COPY `batches` and their request ids, inside the session's transaction."""
    if not batches:
        return
    connection = await _driver_connection(session)
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


async def _driver_connection(session: AsyncSession) -> asyncpg.Connection:
    """The asyncpg connection under `session`, with the session's transaction begun on it: SQLAlchemy
    begins it with the first statement it runs itself, and a COPY straight on the driver's connection
    would otherwise commit on its own."""
    connection = await session.connection()
    driver = (await connection.get_raw_connection()).driver_connection
    if not driver.is_in_transaction():
        await session.exec(text("SELECT 1"))
    assert driver.is_in_transaction()
    return driver


def _request_rows(ids: list[int], batches: list[PredictionBatch]) -> Iterator[tuple[str, int, int]]:
    return itertools.chain.from_iterable(
        zip(batch.request_ids, itertools.repeat(batch_id), batch.positions)
        for batch_id, batch in zip(ids, batches, strict=True)
    )


class StagedPredictions:
    """The transaction of the next commit, opened by the first predictions counted after the last
    snapshot. Predictions are copied into it in the background, one COPY at a time, while the next
    records are counted, so that the commit has only the window state, the offsets and the last few
    predictions left to write. Nothing in it is visible before the commit; if anything fails, it is
    rolled back and the commit is written again with every prediction."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.copied = 0
        """How many predictions (in the order they were counted) are in the transaction."""
        self._exit = contextlib.AsyncExitStack()
        self._session: AsyncSession | None = None
        self._copying: asyncio.Task | None = None

    @property
    def busy(self) -> bool:
        return self._copying is not None and not self._copying.done()

    def copy(self, batches: list[PredictionBatch]) -> None:
        """Start copying the next `batches` after the last copy ended (see `busy`)."""
        assert not self.busy, "one copy at a time"
        if batches and (self._copying is None or self._copying.exception() is None):
            self._copying = asyncio.create_task(self._copy(batches))

    async def _copy(self, batches: list[PredictionBatch]) -> None:
        await copy_predictions(await self._open(), batches)
        self.copied += len(batches)

    async def _open(self) -> AsyncSession:
        if self._session is None:
            session = await self._exit.enter_async_context(self.database.session())
            await session.begin()
            self._session = session
        return self._session

    async def session(self) -> AsyncSession:
        """The transaction, once the copies started are in it; raises what a copy raised."""
        if self._copying is not None:
            await self._copying
        return await self._open()

    async def commit(self) -> None:
        assert self._session is not None
        session, self._session = self._session, None
        try:
            await session.commit()
        finally:
            await self._exit.aclose()

    async def discard(self) -> None:
        """Roll back whatever is in the transaction (after the copy in flight); a no-op once committed
        or discarded. Errors are not raised: the caller is already handling the one that matters."""
        if self._copying is not None:
            with contextlib.suppress(Exception):
                await self._copying
        session, self._session = self._session, None
        try:
            if session is not None:
                with contextlib.suppress(Exception):
                    await session.rollback()
        finally:
            with contextlib.suppress(Exception):
                await self._exit.aclose()


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
