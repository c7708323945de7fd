"""The shape of a dead letter, the same whether a consumer or the outbox relay gave up on a record.

A dead letter keeps the original key, value and headers (minus any earlier `mlops_dlq_*` ones) and
adds `mlops_dlq_*` headers that say why, where from and when.
"""

from __future__ import annotations

from collections.abc import Iterable

from mlops.envelope import rfc3339
from mlops.errors import MlopsError


def reason_of(error: BaseException) -> str:
    return error.message if isinstance(error, MlopsError) else f"{type(error).__name__}: {error}"


def dead_letter_headers(
    original: Iterable[tuple[str, bytes | None]],
    *,
    reason: str,
    error_type: str,
    attempts: int,
    topic: str,
    where: Iterable[tuple[str, str]] = (),
) -> list[tuple[str, bytes]]:
    """The original headers plus the reason; `where` names the record's origin (partition and offset,
    or outbox and row id), each as an `mlops_dlq_<name>` header."""
    headers = [(name, value or b"") for name, value in original if not name.startswith("mlops_dlq_")]
    headers += [
        ("mlops_dlq_reason", reason.encode()),
        ("mlops_dlq_error_type", error_type.encode()),
        ("mlops_dlq_attempts", str(attempts).encode()),
        ("mlops_dlq_topic", topic.encode()),
    ]
    headers += [(f"mlops_dlq_{name}", value.encode()) for name, value in where]
    headers.append(("mlops_dlq_time", rfc3339().encode()))
    return headers
