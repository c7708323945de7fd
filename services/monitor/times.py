"""Request times (seconds since the epoch, as rows and windows carry them) as protobuf and SQL want them."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from mlops.events.v1 import common_pb2


def timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(round(seconds * 1e9))
    return stamp


def time_window(start: float, end: float) -> common_pb2.TimeWindow:
    return common_pb2.TimeWindow(start=timestamp(start), end=timestamp(end))


def utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
