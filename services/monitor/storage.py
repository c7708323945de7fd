"""Reads and writes of the monitor's own tables (see `tables`), inside the caller's session or transaction.

Times are seconds since the epoch, as windows carry them. The stored predictions are written by
`predictions.copy_predictions`, with COPY.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable

import numpy as np
from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession

from services.monitor.tables import SCHEMA
from services.monitor.times import utc
from services.monitor.windows import OpenWindow

# --- windows and offsets ---------------------------------------------------------------------------


async def read_open_windows(
    *, session: AsyncSession, consumer_group: str, partitions: list[int]
) -> list[OpenWindow]:
    rows = (
        await session.exec(
            text(
                f"SELECT model, version, extract(epoch FROM window_start)::bigint, "
                f"extract(epoch FROM window_end)::bigint, partition, sample_count, counts, links, "
                f"profile_sha256 FROM {SCHEMA}.windows WHERE consumer_group = :g AND NOT closed "
                "AND partition = ANY(:p)"
            ),
            params={"g": consumer_group, "p": partitions},
        )
    ).all()
    windows = []
    for model, version, start, end, partition, samples, counts, links, sha in rows:
        array = np.frombuffer(counts, dtype=np.int64).copy() if counts else None
        windows.append(
            OpenWindow(model, version, start, end - start, partition, array, sha, samples, list(links), False)
        )
    return windows


async def read_newest_closed(
    *, session: AsyncSession, consumer_group: str, partitions: list[int]
) -> dict[tuple[str, int], int]:
    """Per version, the start of its newest closed window on `partitions`."""
    rows = (
        await session.exec(
            text(
                f"SELECT model, version, extract(epoch FROM max(window_start))::bigint "
                f"FROM {SCHEMA}.windows WHERE consumer_group = :g AND closed AND partition = ANY(:p) "
                "GROUP BY model, version"
            ),
            params={"g": consumer_group, "p": partitions},
        )
    ).all()
    return {(model, version): start for model, version, start in rows}


async def read_offsets(
    *, session: AsyncSession, consumer_group: str, topic: str, partitions: list[int]
) -> dict[int, int]:
    """The next offset to read per partition, where one is stored."""
    rows = (
        await session.exec(
            text(
                f"SELECT partition, next_offset FROM {SCHEMA}.offsets "
                "WHERE consumer_group = :g AND topic = :t AND partition = ANY(:p)"
            ),
            params={"g": consumer_group, "t": topic, "p": partitions},
        )
    ).all()
    return {partition: offset for partition, offset in rows}


async def write_open_windows(
    *, session: AsyncSession, consumer_group: str, windows: list[OpenWindow]
) -> None:
    """Insert or update windows still open in the database (a closed one is never written over)."""
    if not windows:
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
                "g": consumer_group,
                "model": w.model,
                "version": w.version,
                "start": utc(w.start),
                "end": utc(w.end),
                "partition": w.partition,
                "samples": w.samples,
                "counts": (w.counts if w.counts is not None else np.zeros(0, np.int64)).tobytes(),
                "links": json.dumps(w.links),
                "sha": w.profile_sha256,
            }
            for w in windows
        ],
    )


async def add_late_rows(
    *, session: AsyncSession, consumer_group: str, late: dict[tuple[str, int, int], int]
) -> None:
    """Add to the late count of closed windows, keyed (model, version, window start)."""
    if not late:
        return
    await session.exec(
        text(
            f"UPDATE {SCHEMA}.windows SET late_count = late_count + :n WHERE consumer_group = :g "
            "AND model = :model AND version = :version AND window_start = :start AND closed"
        ),
        params=[
            {"n": n, "g": consumer_group, "model": m, "version": v, "start": utc(start)}
            for (m, v, start), n in late.items()
        ],
    )


async def write_offsets(
    *, session: AsyncSession, consumer_group: str, offsets: dict[tuple[str, int], int]
) -> None:
    if not offsets:
        return
    await session.exec(
        text(
            f"INSERT INTO {SCHEMA}.offsets (consumer_group, topic, partition, next_offset) "
            "VALUES (:g, :t, :p, :o) ON CONFLICT (consumer_group, topic, partition) "
            "DO UPDATE SET next_offset = excluded.next_offset"
        ),
        params=[
            {"g": consumer_group, "t": topic, "p": partition, "o": offset}
            for (topic, partition), offset in offsets.items()
        ],
    )


async def close_window(
    *, session: AsyncSession, consumer_group: str, window: OpenWindow, drifted: bool, body: bytes
) -> None:
    """Mark a window closed with its judgement (`body`: a serialized DriftWindow)."""
    await session.exec(
        text(
            f"UPDATE {SCHEMA}.windows SET closed = true, drifted = :drifted, body = :body, "
            "sample_count = :samples WHERE consumer_group = :g AND model = :model AND version = :version "
            # a late row of a version no longer tracked reopens its window in memory only
            "AND window_start = :start AND NOT closed"
        ),
        params={
            "drifted": drifted,
            "body": body,
            "samples": window.samples,
            "g": consumer_group,
            "model": window.model,
            "version": window.version,
            "start": utc(window.start),
        },
    )


# --- alarm runs ------------------------------------------------------------------------------------


async def read_alarm_run(
    *, session: AsyncSession, model: str, version: int
) -> tuple[int, float | None] | None:
    """A version's consecutive drifted windows and its last alarm's time; None if nothing is stored."""
    row = (
        await session.exec(
            text(
                f"SELECT consecutive, extract(epoch FROM last_alarm_at) FROM {SCHEMA}.version_state "
                "WHERE model = :m AND version = :v"
            ),
            params={"m": model, "v": version},
        )
    ).first()
    if row is None:
        return None
    return row[0], float(row[1]) if row[1] is not None else None


async def write_alarm_run(
    *, session: AsyncSession, model: str, version: int, consecutive: int, alarm_at: float | None
) -> None:
    """Store a version's run; `alarm_at` None keeps the last alarm's time as it was."""
    await session.exec(
        text(
            f"INSERT INTO {SCHEMA}.version_state (model, version, consecutive, last_alarm_at, degraded_windows, "
            "live_metrics) VALUES (:model, :version, :consecutive, :alarm_at, 0, '{}') "
            "ON CONFLICT (model, version) DO UPDATE SET consecutive = excluded.consecutive, "
            f"last_alarm_at = coalesce(excluded.last_alarm_at, {SCHEMA}.version_state.last_alarm_at)"
        ),
        params={
            "model": model,
            "version": version,
            "consecutive": consecutive,
            "alarm_at": utc(alarm_at) if alarm_at is not None else None,
        },
    )


async def write_new_model_needed(
    *, session: AsyncSession, model: str, version: int, at: float, reason: str
) -> None:
    """Record that an alarm of a version asked for a new model (its model is trained elsewhere)."""
    await session.exec(
        text(
            f"INSERT INTO {SCHEMA}.version_state (model, version, consecutive, degraded_windows, live_metrics, "
            "new_model_needed_at, new_model_reason) VALUES (:model, :version, 0, 0, '{}', :at, :reason) "
            "ON CONFLICT (model, version) DO UPDATE SET new_model_needed_at = excluded.new_model_needed_at, "
            "new_model_reason = excluded.new_model_reason"
        ),
        params={"model": model, "version": version, "at": utc(at), "reason": reason},
    )


# --- stored predictions and labels, for retraining data ----------------------------------------------


async def read_prediction_batches(
    *, session: AsyncSession, model: str, version: int, earliest: float, end: float
) -> list[tuple[int, bytes, int, bytes]]:
    """(id, timestamps, width, features) of a version's batches filed under [earliest, end), by id."""
    rows = await session.exec(
        text(
            f"SELECT id, timestamps, width, features FROM {SCHEMA}.prediction_batches "
            "WHERE model = :model AND version = :version AND logged_at >= :earliest "
            "AND logged_at < :end ORDER BY id"
        ),
        params={"model": model, "version": version, "earliest": utc(earliest), "end": utc(end)},
    )
    return [tuple(row) for row in rows.all()]


async def read_request_ids(
    *, session: AsyncSession, batch_ids: Collection[int]
) -> list[tuple[int, int, str]]:
    """(batch id, position, request id) of the batches' rows, in batch and row order."""
    if not batch_ids:
        return []
    rows = await session.exec(
        text(
            f"SELECT batch_id, position, request_id FROM {SCHEMA}.prediction_requests "
            # the range lets the BRIN index on batch_id narrow the scan
            "WHERE batch_id BETWEEN :low AND :high AND batch_id = ANY(:ids) "
            "ORDER BY batch_id, position"
        ),
        params={"low": min(batch_ids), "high": max(batch_ids), "ids": list(batch_ids)},
    )
    return [tuple(row) for row in rows.all()]


async def read_labels(
    *, session: AsyncSession, model: str, request_ids: Iterable[str]
) -> list[tuple[str, str | None, float | None]]:
    """(request id, label, value) of the stored ground truth for `request_ids`, oldest first."""
    rows = await session.exec(
        text(
            f"SELECT request_id, label, value FROM {SCHEMA}.labels "
            "WHERE model = :model AND request_id = ANY(:ids) ORDER BY id"
        ),
        params={"model": model, "ids": list(request_ids)},
    )
    return [tuple(row) for row in rows.all()]


# --- drift status ------------------------------------------------------------------------------------


async def read_version_states(
    *, session: AsyncSession, model: str, version: int
) -> list[tuple[int, int, float | None, int, float | None, dict | None, float | None, str | None]]:
    """(version, consecutive, last alarm, degraded windows, last degradation, live metrics, when a new
    model was asked for, why) of the model's versions (`version` 0: all), by version."""
    rows = await session.exec(
        text(
            f"SELECT version, consecutive, extract(epoch FROM last_alarm_at), degraded_windows, "
            f"extract(epoch FROM last_degradation_at), live_metrics, extract(epoch FROM new_model_needed_at), "
            f"new_model_reason FROM {SCHEMA}.version_state "
            "WHERE model = :m AND (:v = 0 OR version = :v) ORDER BY version"
        ),
        params={"m": model, "v": version},
    )
    return [tuple(row) for row in rows.all()]


async def read_closed_windows(
    *, session: AsyncSession, model: str, version: int, limit: int
) -> list[tuple[int, bytes, str, int]]:
    """(version, body, profile sha256, late count) of the newest `limit` closed windows of each of the
    model's versions (`version` 0: all), by version, newest first."""
    rows = await session.exec(
        text(
            "SELECT version, body, profile_sha256, late_count FROM ("
            "SELECT version, body, profile_sha256, late_count, row_number() OVER "
            "(PARTITION BY version ORDER BY window_start DESC) AS n "
            f"FROM {SCHEMA}.windows WHERE model = :m AND closed AND (:v = 0 OR version = :v)) w "
            "WHERE n <= :limit ORDER BY version, n"
        ),
        params={"m": model, "v": version, "limit": limit},
    )
    return [tuple(row) for row in rows.all()]
